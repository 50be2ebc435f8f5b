"""manage.py import_items <project-slug> <file> [--skip-bad] [--format jsonl|csv] [--provenance X]
[--rejected-out PATH]: the import service from the command line.

Exit status: 0 when rows were imported and none was rejected (rows already in the project are
skipped, not errors); 1 when nothing was imported (a bad row without --skip-bad, no rows, or every
row already in the project); 2 when --skip-bad imported some rows and left bad ones out.
"""

import shutil
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotate import importers
from annotate.importers import rejected_errors_path
from annotate.models import IMPORTABLE_PROVENANCES, ImportBatch, Project, Provenance
from annotate.services.imports import import_batch_create, import_batch_run


class Command(BaseCommand):
    help = "Import items from a JSONL or CSV file into a project (streamed; any size)."

    def add_arguments(self, parser):
        parser.add_argument("project", help="The project's slug.")
        parser.add_argument("file", type=Path)
        parser.add_argument("--skip-bad", action="store_true", help="Import the good rows even if some are bad.")
        parser.add_argument("--format", choices=importers.FORMATS, default="", help="Default: from the file name.")
        parser.add_argument(
            "--provenance", choices=[value for value, _ in IMPORTABLE_PROVENANCES], default=Provenance.HUMAN
        )
        parser.add_argument(
            "--rejected-out",
            type=Path,
            help="Write the rejected rows here, byte for byte as in the file, and their errors beside it "
            "(<name>-errors.csv).",
        )

    def handle(self, *args, project: str, file: Path, skip_bad: bool, format: str, provenance: str, **options):
        try:
            target = Project.objects.get(slug=project)
        except Project.DoesNotExist:
            known = ", ".join(Project.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"No project with slug {project!r} (projects: {known}).") from None
        if not file.is_file():
            raise CommandError(f"{file} is not a file.")
        try:
            batch = import_batch_create(
                project=target,
                uploaded_by=None,
                filename=file.name,
                path=file.resolve(),
                file_format=format,
                mode=ImportBatch.Mode.SKIP_BAD if skip_bad else ImportBatch.Mode.ALL_OR_NOTHING,
                provenance=provenance,
            )
        except (ValueError, ValidationError) as exc:
            raise CommandError(str(exc)) from None
        batch = import_batch_run(batch_id=batch.id)
        batch.refresh_from_db()

        out = self.stdout
        exact = batch.duplicates - batch.near_duplicates
        kinds = f" ({exact} exact, {batch.near_duplicates} near)" if batch.duplicates else ""
        out.write(
            f"{file.name} → {target.slug}: {batch.rows_seen} rows read, {batch.rows_imported} imported, "
            f"{batch.rows_rejected} rejected, {batch.duplicates} duplicates{kinds}."
        )
        out.write(batch.message)
        for error in batch.errors:
            prefix = "duplicate" if error.get("kind") == "duplicate" else "error"
            field = f" [{error['field']}]" if error.get("field") else ""
            out.write(f"  {prefix} line {error['line']}{field}: {error['message']}")
        if batch.rows_rejected > len([e for e in batch.errors if e.get("kind") != "duplicate"]):
            out.write("  (only the first errors are listed; --rejected-out writes every rejected row)")
        target_path = options.get("rejected_out")
        if target_path and batch.rejected_path:
            shutil.copyfile(batch.rejected_path, target_path)
            errors_path = target_path.with_name(f"{target_path.stem}-errors.csv")
            shutil.copyfile(rejected_errors_path(batch.rejected_path), errors_path)
            out.write(f"Rejected rows written to {target_path}, their errors to {errors_path}.")
        if batch.status == ImportBatch.Status.FAILED:
            raise CommandError("Nothing imported.", returncode=1)
        if batch.rows_imported == 0:
            if batch.duplicates == batch.rows_seen:
                raise CommandError("Nothing imported: every row is already in the project.", returncode=1)
            raise CommandError(
                f"Nothing imported: {batch.rows_rejected} rows rejected, {batch.duplicates} already in the project.",
                returncode=1,
            )
        if batch.rows_rejected:
            raise CommandError(f"Partly imported: {batch.rows_rejected} rows rejected.", returncode=2)
