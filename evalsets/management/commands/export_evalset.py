"""Export a frozen eval set version to files: the JSONL of one layout and its manifest.json.

Only the layouts the version can fill are written: --all-formats leaves the others out and says so,
and asking for one by name fails with the reason (a gold-only version has no preference pairs).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from evalsets.export import FORMATS, layout_unavailable, layouts_for, write_export
from evalsets.models import EvalSetVersion
from evalsets.selectors import evalset_records_iter, evalset_version_info


class Command(BaseCommand):
    help = "Write <evalset>.<format>.jsonl and <evalset>.<format>.manifest.json for an eval set version."

    def add_arguments(self, parser):
        parser.add_argument("version", help="The version's id, or its name (e.g. support-eval-v3).")
        parser.add_argument(
            "--format",
            dest="formats",
            action="append",
            choices=sorted(FORMATS),
            help="A layout to write (repeatable; default: goldset).",
        )
        parser.add_argument("--all-formats", action="store_true", help="Write every layout the version can fill.")
        parser.add_argument("--out", default=".", help="Directory to write into (created if missing).")

    def handle(self, *args, version, formats, all_formats, out, **options):
        found = self._find(version)
        if all_formats:
            formats = layouts_for(found.counts)
            for fmt in FORMATS:
                if fmt not in formats:
                    self.stdout.write(
                        f"{fmt}: left out. {layout_unavailable(fmt, name=found.name, counts=found.counts)}"
                    )
        else:
            formats = formats or ["goldset"]
            for fmt in formats:
                if reason := layout_unavailable(fmt, name=found.name, counts=found.counts):
                    raise CommandError(reason)
        info = evalset_version_info(version=found)
        for fmt in formats:
            data_path, manifest_path = write_export(
                evalset_records_iter(version=found), version_info=info, fmt=fmt, directory=Path(out)
            )
            self.stdout.write(f"{fmt}: {data_path} and {manifest_path}")

    @staticmethod
    def _find(ref: str) -> EvalSetVersion:
        qs = EvalSetVersion.objects.select_related("project", "frozen_by")
        if ref.isdigit():
            found = qs.filter(pk=int(ref)).first()
        else:
            slug, sep, number = ref.rpartition("-eval-v")
            found = qs.filter(project__slug=slug, number=int(number)).first() if sep and number.isdigit() else None
        if found is None:
            raise CommandError(
                f"No eval set version {ref!r}: give its id or its name like support-eval-v3 "
                "(the eval sets page lists them)."
            )
        return found
