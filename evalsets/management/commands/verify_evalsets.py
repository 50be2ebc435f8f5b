"""Recompute every eval set version's and training snapshot's sha256 from the stored rows."""

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Recompute the sha256 of every frozen eval set version and training snapshot from its stored records, "
        "and each record's content hash; name every version, snapshot and record that does not match. Exit status 1 "
        "on any mismatch. Each verdict is stored (the version page shows when it was last verified)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Check, but store no verdict.")

    def handle(self, *args, dry_run=False, **options):
        from evalsets.services import evalsets_verify

        outcomes = evalsets_verify(record=not dry_run)
        failed = [o for o in outcomes if not o.ok]
        for o in outcomes:
            if o.ok:
                self.stdout.write(f"OK        {o.subject}: {o.record_count} records, sha256 {o.stored_sha256}")
                continue
            self.stderr.write(f"MISMATCH  {o.subject}: {o.record_count} records")
            for problem in o.problems:
                self.stderr.write(f"          {o.subject}: {problem}")
            if o.more_problems:
                self.stderr.write(f"          {o.subject}: … and {o.more_problems} more")
        if not outcomes:
            self.stdout.write("Nothing to verify: no eval set version or training snapshot is frozen yet.")
            return
        if failed:
            names = ", ".join(o.subject for o in failed)
            raise CommandError(
                f"{len(failed)} of {len(outcomes)} failed verification ({names}): their stored rows were changed "
                "after they were frozen. Freeze a new version from the source data; do not trust these.",
                returncode=1,
            )
        self.stdout.write(self.style.SUCCESS(f"All {len(outcomes)} verified."))
