"""Item imports: store an upload, stream it through the parsers, write items in one transaction.

An import runs in two streaming passes, so memory stays flat however big the file is:

1. *Check*: every row is parsed and validated; good rows go to a temporary spool file, bad rows
   are counted, the first ``MAX_REPORTED`` errors kept on the batch and every bad row written to a
   rejected-rows file. Progress (``bytes_read``, ``rows_seen``) is committed at chunk boundaries,
   at most twice a second (each commit is an fsync on SQLite).
2. *Write* (only when the mode allows it): the spool is read back in chunks inside one
   transaction. Duplicates, within the file or against earlier imports, are reported by line and
   never inserted twice: on SQLite each chunk's content hashes are looked up first (one indexed
   query) and the rest go in by ``executemany``; on PostgreSQL each chunk is COPied into a
   temporary table and moved with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, so the unique
   index (item_unique_content_per_project) finds the duplicates while inserting, and only those
   are looked up for the report.

Split scheme: an item goes to eval when
``int(sha256(f"{split_seed}:{stratum}:{content_hash}")[:16], 16) / 2**64 < project.eval_share``,
where the stratum is the item's kind. The draw is seeded (``project.split_seed``), independent per
stratum (so each kind gets the eval share on its own, within sampling error), and depends on
nothing else: the same content always lands in the same split, and an item once written is never
updated, so a re-import never moves it. LLM-judged rows always go to train: eval data is human-made.
"""

import csv
import hashlib
import io
import json
import logging
import math
import pickle
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from annotate import importers
from annotate.models import ImportBatch, Item, Project, Provenance

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2000
PROGRESS_EVERY_S = 0.5
MAX_REPORTED = 200
DEFAULT_INLINE_MAX_BYTES = 1024 * 1024


def inline_max_bytes() -> int:
    """Uploads up to this size are imported during the request; bigger ones go to the worker."""
    return int(getattr(settings, "GOLDSET_IMPORT_INLINE_MAX_BYTES", DEFAULT_INLINE_MAX_BYTES))


def imports_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "imports"


def split_for(*, split_seed: int, stratum: str, content_hash: str, eval_share: Decimal | float) -> str:
    """The item's split: a seeded draw from its content hash and stratum only (see the module docstring)."""
    digest = hashlib.sha256(f"{split_seed}:{stratum}:{content_hash}".encode()).hexdigest()
    return "eval" if int(digest[:16], 16) / 2**64 < float(eval_share) else "train"


def split_tolerance(*, n: int, share: float) -> float:
    """How far a stratum's eval share may stray from the target: three standard errors, at least 2 points."""
    if n == 0:
        return 1.0
    return max(0.02, 3 * math.sqrt(share * (1 - share) / n))


# --- creating a batch --------------------------------------------------------------------------


@transaction.atomic
def import_batch_create(
    *,
    project: Project,
    uploaded_by,
    filename: str,
    upload: IO[bytes] | None = None,
    path: Path | None = None,
    file_format: str = "",
    mode: str = ImportBatch.Mode.ALL_OR_NOTHING,
    provenance: str = Provenance.HUMAN,
) -> ImportBatch:
    """Record an import; an upload is copied under MEDIA_ROOT, a local path is read in place."""
    file_format = file_format or importers.guess_format(filename)
    if file_format not in importers.FORMATS:
        raise ValidationError({"file_format": f"Unknown format {file_format!r}: use jsonl or csv."})
    batch = ImportBatch(
        project=project,
        uploaded_by=uploaded_by,
        filename=Path(filename).name[:255],
        file_format=file_format,
        mode=mode,
        provenance=provenance,
    )
    # uploaded_by is empty for the command line; errors starts empty and fills while running.
    batch.full_clean(exclude=["uploaded_by", "errors", "stored_path"])
    if upload is not None:
        target = (
            imports_dir() / "uploads" / f"{uuid.uuid4().hex}-{get_valid_filename(batch.filename)[-100:] or 'upload'}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            if hasattr(upload, "chunks"):
                for piece in upload.chunks():
                    out.write(piece)
            else:
                shutil.copyfileobj(upload, out, 1024 * 1024)
        path = target
    if path is None:
        raise ValueError("Give the upload or a path to read.")
    batch.stored_path = str(path)
    batch.bytes_total = Path(path).stat().st_size
    batch.save()
    return batch


def import_batch_submit(
    *,
    project: Project,
    uploaded_by,
    upload: IO[bytes],
    filename: str,
    file_format: str = "",
    mode: str = ImportBatch.Mode.ALL_OR_NOTHING,
    provenance: str = Provenance.HUMAN,
) -> ImportBatch:
    """Store an upload and import it: inline when small, through the worker when big."""
    from annotate.tasks import import_run

    batch = import_batch_create(
        project=project,
        uploaded_by=uploaded_by,
        filename=filename,
        upload=upload,
        file_format=file_format,
        mode=mode,
        provenance=provenance,
    )
    if batch.bytes_total > inline_max_bytes():
        import_run.delay_on_commit(batch.id)
        return batch
    return import_batch_run(batch_id=batch.id)


def import_batch_run(*, batch_id: int) -> ImportBatch:
    """Claim a queued batch and import its file; a batch already claimed is left alone."""
    claimed = ImportBatch.objects.filter(id=batch_id, status=ImportBatch.Status.QUEUED).update(
        status=ImportBatch.Status.RUNNING
    )
    batch = ImportBatch.objects.select_related("project").get(id=batch_id)
    if not claimed:
        return batch
    uploaded = Path(batch.stored_path)
    try:
        with open(uploaded, "rb") as fileobj:
            import_file_run(batch=batch, fileobj=fileobj)
    except OSError as exc:
        _finish(batch, status=ImportBatch.Status.FAILED, message=f"The uploaded file could not be read: {exc}.")
    except Exception as exc:
        # Never leave a batch RUNNING: the page would poll forever. The write pass is atomic, so
        # nothing was imported.
        logger.exception("Import batch %s failed", batch_id)
        _finish(batch, status=ImportBatch.Status.FAILED, message=f"The import failed ({exc}); nothing imported.")
    finally:
        # Uploads are copies made for this batch; a path given to the command is the user's own file.
        if uploaded.is_relative_to(imports_dir() / "uploads"):
            uploaded.unlink(missing_ok=True)
    return batch


# --- running -----------------------------------------------------------------------------------


class _Rejected:
    """The rejected-rows file: each bad row's original text with its line and errors."""

    def __init__(self, batch: ImportBatch, header: list[str] | None):
        self.batch = batch
        self.header = header
        self.path = imports_dir() / "rejected" / f"batch-{batch.id}-rejected.{batch.file_format}"
        self.handle: IO[str] | None = None
        self.writer: Any = None

    def write(self, parsed: importers.ParsedRow) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            if self.batch.file_format == "csv":
                self.writer = csv.writer(self.handle)
                self.writer.writerow(["line", "error", *(self.header or ["original"])])
        errors = "; ".join(str(e) for e in parsed.errors)
        if self.writer is not None:
            self.writer.writerow([parsed.line, errors, *(parsed.raw_fields or [parsed.raw])])
        else:
            self.handle.write(json.dumps({"line": parsed.line, "error": errors, "original": parsed.raw}) + "\n")

    def close(self) -> str:
        if self.handle is None:
            return ""
        self.handle.close()
        return str(self.path)


def _progress(batch: ImportBatch, **fields) -> None:
    for name, value in fields.items():
        setattr(batch, name, value)
    # A plain UPDATE outside the write transaction, so the progress page sees it at once.
    ImportBatch.objects.filter(pk=batch.pk).update(**fields)


def _finish(batch: ImportBatch, *, status: str, message: str, **fields) -> None:
    fields.update(status=status, message=message, finished_at=timezone.now())
    _progress(batch, **fields)


def import_file_run(*, batch: ImportBatch, fileobj: IO[bytes], chunk_rows: int = CHUNK_ROWS) -> ImportBatch:
    """Check every row of the file, then write the good ones in one transaction (see the module docstring)."""
    project = batch.project
    header = None
    if batch.file_format == "csv" and fileobj.seekable():
        header = importers.csv_header(fileobj)
        fileobj.seek(0)
    rejected = _Rejected(batch, header)
    errors: list[dict] = []
    rows_seen = bad = good = 0
    end = 0
    last_progress = time.monotonic()
    pending: list[tuple] = []
    all_or_nothing = batch.mode == ImportBatch.Mode.ALL_OR_NOTHING
    with tempfile.TemporaryFile() as spool:
        try:
            rows = importers.parse(
                fileobj,
                file_format=batch.file_format,
                task_kinds=project.task_kinds,
                default_provenance=batch.provenance,
            )
            for parsed in rows:
                rows_seen += 1
                end = parsed.end_offset
                if parsed.ok:
                    good += 1
                    if bad and all_or_nothing:
                        continue  # nothing will be written: only count and report from here on
                    pending.append(_record(parsed.line, parsed.row))
                    if len(pending) == chunk_rows:
                        pickle.dump(pending, spool, protocol=pickle.HIGHEST_PROTOCOL)
                        pending = []
                else:
                    bad += 1
                    if len(errors) < MAX_REPORTED:
                        errors.extend(e.as_dict() for e in parsed.errors)
                    rejected.write(parsed)
                if rows_seen % chunk_rows == 0 and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    # Each progress write is a commit (an fsync on SQLite): once per chunk, at most twice a second.
                    _progress(batch, bytes_read=end, rows_seen=rows_seen)
                    last_progress = time.monotonic()
            if pending:
                pickle.dump(pending, spool, protocol=pickle.HIGHEST_PROTOCOL)
        except importers.FileInvalid as exc:
            rejected.close()
            _finish(
                batch,
                status=ImportBatch.Status.FAILED,
                message=f"Nothing imported: {exc.error}",
                errors=[exc.error.as_dict()],
            )
            return batch
        rejected_path = rejected.close()
        _progress(
            batch,
            bytes_read=batch.bytes_total or end,
            rows_seen=rows_seen,
            rows_rejected=bad,
            errors=errors[:MAX_REPORTED],
            rejected_path=rejected_path,
        )
        if rows_seen == 0:
            _finish(batch, status=ImportBatch.Status.FAILED, message="The file has no rows: nothing imported.")
            return batch
        if bad and batch.mode == ImportBatch.Mode.ALL_OR_NOTHING:
            _finish(
                batch,
                status=ImportBatch.Status.FAILED,
                message=(
                    f"{bad} of {rows_seen} rows are bad, so nothing was imported. Fix them and import again, or "
                    "import only the good rows ('Import the good rows' on the upload page, --skip-bad in the "
                    "import_items command)."
                ),
            )
            return batch
        spool.seek(0)
        _progress(batch, message=f"Writing {good} rows…")
        try:
            imported, duplicates, dup_report, strata = _write(batch, spool)
        except IntegrityError as exc:
            if "content_hash" in str(exc) or "item_unique_content_per_project" in str(exc):
                # item_unique_content_per_project caught what the per-chunk lookup could not see: a
                # concurrent import of the same content committed in between.
                message = (
                    "Another import added some of the same items while this one ran, so nothing was imported. "
                    "Import the file again: items already in the project will be listed as duplicates."
                )
            else:
                message = (
                    f"The import stopped while writing ({exc}); the transaction was rolled back: nothing imported."
                )
            _finish(batch, status=ImportBatch.Status.FAILED, message=message)
            return batch
        except Exception as exc:  # any failure rolls back and is reported in words
            _finish(
                batch,
                status=ImportBatch.Status.FAILED,
                message=f"The import stopped while writing ({exc}); the transaction was rolled back: nothing imported.",
            )
            return batch
    summary = [f"Imported {imported} of {rows_seen} rows."]
    if duplicates:
        summary.append(f"{duplicates} duplicates not imported again.")
    if bad:
        summary.append(f"{bad} bad rows skipped (see the rejected-rows file).")
    summary.append(_split_summary(strata, float(project.eval_share)))
    _finish(
        batch,
        status=ImportBatch.Status.SUCCEEDED,
        message=" ".join(summary),
        rows_imported=imported,
        duplicates=duplicates,
        errors=errors[:MAX_REPORTED] + dup_report,
    )
    return batch


def _split_summary(strata: dict[str, list[int]], share: float) -> str:
    parts, warnings = [], []
    for kind, (train, evals) in sorted(strata.items()):
        n = train + evals
        actual = evals / n if n else 0.0
        parts.append(f"{kind} {train} train / {evals} eval ({actual:.1%})")
        if abs(actual - share) > split_tolerance(n=n, share=share):
            warnings.append(f"{kind}'s eval share {actual:.1%} is off the target {share:.0%}")
    text = "Split: " + ", ".join(parts) + "." if parts else ""
    if warnings:
        text += " Warning: " + "; ".join(warnings) + " (a small or LLM-judged stratum can do this)."
    return text


def _record(line: int, row: dict) -> tuple:
    """A spooled row: JSON columns already encoded, so the write pass only inserts."""
    dumps = json.dumps
    messages = row["messages"]
    return (
        line,
        row["kind"],
        row["prompt"],
        None if messages is None else dumps(messages, ensure_ascii=False),
        dumps(row["responses"], ensure_ascii=False),
        dumps(row["metadata"], ensure_ascii=False),
        row["provenance"],
        row["content_hash"],
    )


# Positions in a spooled record.
LINE, KIND, PROMPT, MESSAGES, RESPONSES, METADATA, PROVENANCE, HASH = range(8)


def _read_spool(spool: IO[bytes]) -> Iterator[list[tuple]]:
    while True:
        try:
            yield pickle.load(spool)
        except EOFError:
            return


SQLITE_WRITE_CACHE_KIB = 64 * 1024


@contextmanager
def _sqlite_page_cache():
    """A bounded 64 MiB page cache for the write pass on SQLite: the content-hash index takes inserts
    in random order, and with SQLite's default 2 MB cache most of them wait on the disk."""
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA cache_size")
        (previous,) = cursor.fetchone()
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_WRITE_CACHE_KIB}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA cache_size = {int(previous)}")


def _write(batch: ImportBatch, spool: IO[bytes]):
    with _sqlite_page_cache(), transaction.atomic():
        return _write_chunks(batch, spool)


def _duplicate_message(batch: ImportBatch, found: tuple | None) -> str:
    item_id, batch_id, first_line = found or (None, None, None)
    if batch_id == batch.id:
        return f"Duplicate of line {first_line} in this file (same normalized content); imported once."
    if item_id is None:
        return "Already in the project (same normalized content); not imported again."
    return f"Already in the project as item #{item_id} (same normalized content); not imported again."


def _write_chunks(batch: ImportBatch, spool: IO[bytes]):
    project = batch.project
    seed, share = project.split_seed, project.eval_share
    strata: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    imported = duplicates = 0
    dup_report: list[dict] = []
    insert = _Inserter(batch.id, project.id, timezone.now())

    def report(line: int, found: tuple | None) -> None:
        nonlocal duplicates
        duplicates += 1
        if len(dup_report) < MAX_REPORTED:
            message = _duplicate_message(batch, found)
            dup_report.append({"line": line, "field": "", "message": message, "kind": "duplicate"})

    for chunk in _read_spool(spool):
        # SQLite: look the chunk's hashes up first (cheap there). PostgreSQL: the insert itself
        # skips what the unique index already holds (ON CONFLICT DO NOTHING), and only those rows
        # are looked up for the report; probing the index twice per row would double the cost.
        known = {} if insert.on_conflict else _known_hashes(project.id, [record[HASH] for record in chunk])
        fresh = []
        for record in chunk:
            h, kind, line = record[HASH], record[KIND], record[LINE]
            if h in known:
                report(line, known[h])
                continue
            if record[PROVENANCE] == Provenance.LLM_JUDGED:
                split = "train"
            else:
                split = split_for(split_seed=seed, stratum=kind, content_hash=h, eval_share=share)
            strata[kind][split == "eval"] += 1
            known[h] = (None, batch.id, line)
            fresh.append((record, split))
        inserted = insert(fresh)
        if inserted is not None and len(inserted) < len(fresh):
            skipped = [(record, split) for record, split in fresh if record[HASH] not in inserted]
            found = _known_hashes(project.id, [record[HASH] for record, _ in skipped])
            for record, split in skipped:
                strata[record[KIND]][split == "eval"] -= 1
                report(record[LINE], found.get(record[HASH]))
            imported += len(inserted)
        else:
            imported += len(fresh)
    dup_report.sort(key=lambda d: d["line"])
    return imported, duplicates, dup_report, {k: v for k, v in strata.items() if sum(v)}


def _known_hashes(project_id: int, hashes: list[str]) -> dict[str, tuple]:
    """Which of these content hashes the project already has: {hash: (item id, batch id, line)}.
    One indexed query per chunk (item_unique_content_per_project); on PostgreSQL the hashes go as
    one array parameter, since a 2,000-placeholder IN list costs more to plan than to run."""
    table = connection.ops.quote_name(Item._meta.db_table)
    if connection.vendor == "postgresql":
        match, params = "= ANY(%s)", [project_id, hashes]
    else:
        match, params = f"IN ({', '.join(['%s'] * len(hashes))})", [project_id, *hashes]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT content_hash, id, import_batch_id, source_line FROM {table} "
            f"WHERE project_id = %s AND content_hash {match}",
            params,
        )
        rows = cursor.fetchall()
    return {h: (item_id, batch_id, line) for h, item_id, batch_id, line in rows}


class _Inserter:
    """Writes item rows straight to the table: COPY on PostgreSQL, executemany elsewhere.
    The parsers have validated every field, so the ORM's per-object work is skipped."""

    COLUMNS = (
        "project_id",
        "kind",
        "prompt",
        "messages",
        "responses",
        "metadata",
        "provenance",
        "content_hash",
        "split",
        "import_batch_id",
        "source_line",
        "is_check",
        "is_calibration",
        "review_count",
        "created_at",
    )

    STAGE = "goldset_import_stage"

    def __init__(self, batch_id: int, project_id: int, now):
        self.batch_id, self.project_id, self.now = batch_id, project_id, now
        self.table = connection.ops.quote_name(Item._meta.db_table)
        self.columns = ", ".join(connection.ops.quote_name(c) for c in self.COLUMNS)
        self.on_conflict = connection.vendor == "postgresql"

    def values(self, fresh) -> Iterator[tuple]:
        project_id, batch_id, now = self.project_id, self.batch_id, self.now
        for r, split in fresh:
            yield (
                project_id,
                r[KIND],
                r[PROMPT],
                r[MESSAGES],
                r[RESPONSES],
                r[METADATA],
                r[PROVENANCE],
                r[HASH],
                split,
                batch_id,
                r[LINE],
                False,
                False,
                0,
                now,
            )

    def __call__(self, fresh) -> set[str] | None:
        """Insert the rows; on PostgreSQL return the content hashes actually inserted."""
        if not fresh:
            return None
        with connection.cursor() as cursor:
            if self.on_conflict:
                return self._copy_insert(cursor, fresh)
            marks = ", ".join(["%s"] * len(self.COLUMNS))
            if connection.vendor == "sqlite":
                now = connection.ops.adapt_datetimefield_value(self.now)
                rows = [(*v[:-1], now) for v in self.values(fresh)]
            else:
                rows = list(self.values(fresh))
            cursor.executemany(f"INSERT INTO {self.table} ({self.columns}) VALUES ({marks})", rows)
        return None

    def _copy_insert(self, cursor, fresh) -> set[str]:
        # COPY into an index-free temporary table, then one INSERT ... SELECT that lets the unique
        # index skip duplicates (COPY itself cannot). The stage lives until the transaction ends.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.STAGE} ON COMMIT DROP AS "
            f"SELECT {self.columns} FROM {self.table} WITH NO DATA"
        )
        cursor.execute(f"TRUNCATE {self.STAGE}")
        # The raw psycopg cursor: wrap its errors as Django's.
        with (
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY {self.STAGE} ({self.columns}) FROM STDIN") as copy,
        ):
            for values in self.values(fresh):
                copy.write_row(values)
        cursor.execute(
            f"INSERT INTO {self.table} ({self.columns}) SELECT {self.columns} FROM {self.STAGE} "
            "ON CONFLICT (project_id, content_hash) DO NOTHING RETURNING content_hash"
        )
        return {row[0] for row in cursor.fetchall()}


def rejected_file_open(*, batch: ImportBatch) -> IO[bytes]:
    """The rejected-rows file of a batch, opened for reading."""
    if not batch.rejected_path:
        raise FileNotFoundError("This import has no rejected rows.")
    return open(batch.rejected_path, "rb")


def sample_bytes(rows: list[dict]) -> bytes:
    """JSONL bytes for rows (used by the demo and tests)."""
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    return buffer.getvalue().encode()
