"""Item imports: store an upload, stream it through the parsers, write items in one transaction.

An import runs in two streaming passes, so memory stays flat however big the file is:

1. *Check* (``_check_pass``): every row is parsed and validated; good rows go to a temporary spool
   file, bad rows are counted, the first ``MAX_REPORTED`` errors kept on the batch, and every bad
   row's original bytes copied to a rejected-rows file (its errors to a CSV report beside it).
   Progress (``bytes_read``, ``rows_seen``) is committed at chunk boundaries, at most twice a
   second (each commit is an fsync on SQLite).
2. *Write* (``_write_pass``, only when the mode allows it): the spool is read back in chunks inside
   one transaction. Duplicates, within the file or against earlier imports, are reported by line,
   as exact (the same texts) or near (the same only after normalization), and never inserted
   twice: on SQLite each chunk's content hashes are looked up first (one indexed query) and the
   rest go in by ``executemany``; on PostgreSQL each chunk is COPied into a temporary table and
   moved with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, so the unique index
   (item_unique_content_per_project) finds the duplicates while inserting, and only those are
   looked up for the report.

Split scheme: an item goes to eval when
``int(sha256(f"{split_seed}:{stratum}:{content_hash}")[:16], 16) / 2**64 < project.eval_share``,
where the stratum is the item's kind. The draw is seeded (``project.split_seed``), independent per
stratum (so each kind gets the eval share on its own, within sampling error), and depends on
nothing else: the same content always lands in the same split, and an item once written is never
updated, so a re-import never moves it. LLM-judged rows always go to train: eval data is human-made.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import pickle
import re
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
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
from config import csvwriter, liveness, uploads

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
        filename=upload_name(filename),
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
        limit = uploads.max_bytes()
        written = 0
        pieces = upload.chunks() if hasattr(upload, "chunks") else iter(lambda: upload.read(1024 * 1024), b"")
        with open(target, "wb") as out:
            for piece in pieces:
                written += len(piece)
                if written > limit:
                    # Counted as it arrives (a streamed body has no size up front): stop before the disk fills.
                    out.close()
                    target.unlink(missing_ok=True)
                    raise ValidationError({"file": uploads.too_big_message(limit)})
                out.write(piece)
        path = target
    if path is None:
        raise ValueError("Give the upload or a path to read.")
    batch.stored_path = str(path)
    batch.bytes_total = Path(path).stat().st_size
    batch.save()
    return batch


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def upload_name(filename: str) -> str:
    """The file name as shown and stored: its last part after any / or \\ (a client may send a whole path),
    without control characters (a NUL cannot be stored), at most 255 characters."""
    name = _CONTROL.sub("", re.split(r"[/\\]", filename or "")[-1]).strip()
    return name[:255] or "upload"


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
        # Robust: with the broker down the upload still stands, QUEUED, and import_batches_requeue sends it later.
        transaction.on_commit(lambda: _send(import_run, batch.id), robust=True)
        return batch
    return import_batch_run(batch_id=batch.id)


LIVENESS = "import"
ABANDONED = (
    "The worker running this import stopped before it finished (it was killed or crashed); nothing was "
    "imported. Retry the import: the uploaded file is kept."
)


def _send(task, batch_id: int) -> None:
    try:
        task.delay(batch_id)
    except Exception:
        logger.warning(
            "Import batch %s: the task queue is unreachable; it stays queued and is sent again later.",
            batch_id,
            exc_info=True,
        )


def import_batch_run(*, batch_id: int) -> ImportBatch:
    """Claim a queued batch and import its file; a batch already claimed (or being run) is left alone."""
    # The lock is taken before the claim and held to the end, so a RUNNING batch whose lock is free was left
    # by a worker that died (config/liveness.py).
    with liveness.held(LIVENESS, batch_id) as mine:
        if not mine:
            return ImportBatch.objects.select_related("project").get(id=batch_id)
        claimed = ImportBatch.claim(batch_id, message="Checking the rows")
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


def import_batches_fail_abandoned(*, batch_ids=None) -> list[int]:
    """Fail the RUNNING batches whose worker is gone (their liveness lock is free), saying so; returns their ids.

    The write pass is one transaction, which died with the worker's connection: nothing of theirs was imported."""
    running = ImportBatch.objects.filter(status=ImportBatch.Status.RUNNING)
    if batch_ids is not None:
        running = running.filter(id__in=batch_ids)
    failed = []
    for batch_id in running.values_list("id", flat=True):
        with liveness.held(LIVENESS, batch_id) as free:
            if free and ImportBatch.objects.filter(id=batch_id, status=ImportBatch.Status.RUNNING).update(
                status=ImportBatch.Status.FAILED, message=ABANDONED, finished_at=timezone.now()
            ):
                failed.append(batch_id)
    return failed


def import_batch_retry(*, batch: ImportBatch) -> ImportBatch:
    """Queue a failed import again from its kept upload (a batch whose worker died keeps its file)."""
    from annotate.tasks import import_run

    if batch.status != ImportBatch.Status.FAILED:
        raise ValidationError(f"Only a failed import can be retried; this one is {batch.status}.")
    if not batch.stored_path or not Path(batch.stored_path).exists():
        raise ValidationError("The uploaded file of this import is gone: upload it again.")
    with transaction.atomic():
        if not ImportBatch.objects.filter(pk=batch.pk, status=ImportBatch.Status.FAILED).update(
            status=ImportBatch.Status.QUEUED,
            message="Queued again.",
            progress=0.0,
            started_at=None,
            finished_at=None,
            bytes_read=0,
            rows_seen=0,
            rows_imported=0,
            rows_rejected=0,
            duplicates=0,
            near_duplicates=0,
            errors=[],
        ):
            raise ValidationError("This import changed meanwhile: reload the page.")
        import_run.delay_on_commit(batch.pk)
    batch.refresh_from_db()
    return batch


def import_batches_requeue(*, older_than_s: float = 60) -> list[int]:
    """Send the task again for batches still QUEUED after ``older_than_s``: the broker may have lost the message
    (a Redis restart without persistence) or been down when it was sent. A duplicate is harmless (the claim)."""
    from annotate.tasks import import_run

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(
        ImportBatch.objects.filter(status=ImportBatch.Status.QUEUED, created_at__lt=cutoff).values_list("id", flat=True)
    )
    for batch_id in ids:
        import_run.delay(batch_id)
    return ids


# --- the rejected rows -------------------------------------------------------------------------


class _Rejected:
    """The rejected rows, handed back in two files.

    - ``batch-<id>-rejected.<jsonl|csv>``: each rejected row's original bytes, copied verbatim from the
      upload (invalid UTF-8 and over-long rows included; a CSV keeps its header line), so the file can
      be fixed and imported again. It is the uploader's own data: no byte of it is rewritten.
    - ``batch-<id>-errors.csv``: line in the upload, line in the rejected file, field and message per
      error, written through the one CSV writer (config.csvwriter).

    While the check pass runs only the rows' byte ranges and errors are kept, spooled to a temporary
    file; the files are written when it ends, so memory stays flat however many rows are bad.
    """

    FLUSH = 1000

    def __init__(self, batch: ImportBatch):
        self.batch = batch
        self.count = 0
        self.header_end: int | None = None
        self._pending: list[tuple] = []
        self._spool: IO[bytes] | None = None

    def __enter__(self) -> _Rejected:
        return self

    def __exit__(self, *exc) -> None:
        if self._spool is not None:
            self._spool.close()

    def seen(self, parsed: importers.ParsedRow) -> None:
        """Note where the first row starts: in a CSV file the header (and any blank lines) come before it."""
        if self.header_end is None:
            self.header_end = parsed.start_offset

    def add(self, parsed: importers.ParsedRow) -> None:
        self.count += 1
        errors = [(e.field, e.message) for e in parsed.errors]
        self._pending.append((parsed.start_offset, parsed.end_offset, parsed.line, errors))
        if len(self._pending) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        pickle.dump(self._pending, self._spool, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending = []

    def write(self, source: IO[bytes]) -> str:
        """Copy the rejected rows out of ``source`` (the upload, seekable) and write the error report;
        return the rejected-rows file's path ("" when no row was rejected)."""
        if not self.count:
            return ""
        self._flush()
        directory = imports_dir() / "rejected"
        directory.mkdir(parents=True, exist_ok=True)
        data_path = directory / f"batch-{self.batch.id}-rejected.{self.batch.file_format}"
        with (
            open(data_path, "wb") as data,
            open(importers.rejected_errors_path(str(data_path)), "w", encoding="utf-8", newline="") as report,
        ):
            errors = csvwriter.writer(report)
            errors.writerow(["line", "rejected_file_line", "field", "error"])
            lines = 0
            if self.batch.file_format == "csv" and self.header_end:
                lines += _copy_range(source, data, 0, self.header_end)
            self._spool.seek(0)
            for chunk in _read_spool(self._spool):
                for start, end, line, row_errors in chunk:
                    for field_name, message in row_errors:
                        errors.writerow([line, lines + 1, field_name, message])
                    lines += _copy_range(source, data, start, end)
        return str(data_path)


def _copy_range(source: IO[bytes], out: IO[bytes], start: int, end: int) -> int:
    """Copy bytes [start, end) of ``source`` to ``out`` in 1 MiB pieces; return the line breaks copied."""
    source.seek(start)
    breaks = 0
    left = end - start
    while left > 0:
        piece = source.read(min(left, 1024 * 1024))
        if not piece:
            break
        out.write(piece)
        breaks += piece.count(b"\n")
        left -= len(piece)
    return breaks


def rejected_file_open(*, batch: ImportBatch) -> IO[bytes]:
    """The rejected-rows file of a batch, opened for reading."""
    if not batch.rejected_path:
        raise FileNotFoundError("This import has no rejected rows.")
    return open(batch.rejected_path, "rb")


# --- running -----------------------------------------------------------------------------------


# The check pass reads the file (most of the time); the write pass is one transaction nobody sees until it
# commits, so the bar stops at CHECK_SHARE while it runs.
CHECK_SHARE = 0.8


def _progress(batch: ImportBatch, **fields) -> None:
    if "bytes_read" in fields and batch.bytes_total:
        fields["progress"] = round(CHECK_SHARE * min(fields["bytes_read"] / batch.bytes_total, 1.0), 4)
    for name, value in fields.items():
        setattr(batch, name, value)
    # A plain UPDATE outside the write transaction, so the progress page sees it at once.
    ImportBatch.objects.filter(pk=batch.pk).update(**fields)


def _finish(batch: ImportBatch, *, status: str, message: str, **fields) -> None:
    ImportBatch.finish(batch.pk, status, message, **fields)
    batch.refresh_from_db()


@dataclass
class _Checked:
    """What the check pass found."""

    rows_seen: int = 0
    good: int = 0
    bad: int = 0
    errors: list[dict] = field(default_factory=list)


@dataclass
class _Written:
    """What the write pass did."""

    imported: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    report: list[dict] = field(default_factory=list)
    strata: dict[str, list[int]] = field(default_factory=dict)


class _WriteFailed(Exception):
    """The write pass stopped; its transaction rolled back, so nothing was imported."""


def import_file_run(*, batch: ImportBatch, fileobj: IO[bytes], chunk_rows: int = CHUNK_ROWS) -> ImportBatch:
    """Check every row of the file, then write the good ones in one transaction (see the module docstring)."""
    with tempfile.TemporaryFile() as spool:
        try:
            checked = _check_pass(batch, fileobj, spool, chunk_rows=chunk_rows)
        except importers.FileInvalid as exc:
            _finish(
                batch,
                status=ImportBatch.Status.FAILED,
                message=f"Nothing imported: {exc.error}",
                errors=[exc.error.as_dict()],
            )
            return batch
        refusal = _refusal(batch, checked)
        if refusal:
            _finish(batch, status=ImportBatch.Status.FAILED, message=refusal)
            return batch
        _progress(batch, message=f"Writing {checked.good} rows…")
        spool.seek(0)
        try:
            written = _write_pass(batch, spool)
        except _WriteFailed as exc:
            _finish(batch, status=ImportBatch.Status.FAILED, message=str(exc))
            return batch
    _finish(
        batch,
        status=ImportBatch.Status.SUCCEEDED,
        message=_summary(checked, written, float(batch.project.eval_share)),
        rows_imported=written.imported,
        duplicates=written.duplicates,
        near_duplicates=written.near_duplicates,
        errors=checked.errors + written.report,
    )
    return batch


def _check_pass(batch: ImportBatch, fileobj: IO[bytes], spool: IO[bytes], *, chunk_rows: int) -> _Checked:
    """Pass 1: parse and check every row; spool the good ones in chunks, hand the bad ones back."""
    checked = _Checked()
    pending: list[tuple] = []
    # After a bad row in all-or-nothing mode nothing will be written: rows are only counted and reported.
    keep_after_bad = batch.mode != ImportBatch.Mode.ALL_OR_NOTHING
    end = 0
    last_progress = time.monotonic()
    with _Rejected(batch) as rejected:
        rows = importers.parse(
            fileobj,
            file_format=batch.file_format,
            task_kinds=batch.project.task_kinds,
            default_provenance=batch.provenance,
        )
        for parsed in rows:
            checked.rows_seen += 1
            end = parsed.end_offset
            rejected.seen(parsed)
            if parsed.ok:
                checked.good += 1
                if keep_after_bad or not checked.bad:
                    pending.append(_record(parsed.line, parsed.row))
                    if len(pending) == chunk_rows:
                        pickle.dump(pending, spool, protocol=pickle.HIGHEST_PROTOCOL)
                        pending = []
            else:
                checked.bad += 1
                if len(checked.errors) < MAX_REPORTED:
                    checked.errors.extend(e.as_dict() for e in parsed.errors)
                rejected.add(parsed)
            if checked.rows_seen % chunk_rows == 0 and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                # Each progress write is a commit (an fsync on SQLite): once per chunk, at most twice a second.
                _progress(batch, bytes_read=end, rows_seen=checked.rows_seen)
                last_progress = time.monotonic()
        if pending:
            pickle.dump(pending, spool, protocol=pickle.HIGHEST_PROTOCOL)
        checked.errors = checked.errors[:MAX_REPORTED]
        rejected_path = rejected.write(fileobj)
    _progress(
        batch,
        bytes_read=batch.bytes_total or end,
        rows_seen=checked.rows_seen,
        rows_rejected=checked.bad,
        errors=checked.errors,
        rejected_path=rejected_path,
    )
    return checked


def _refusal(batch: ImportBatch, checked: _Checked) -> str:
    """Why nothing may be written after the check pass ("" when the write pass may run)."""
    if checked.rows_seen == 0:
        return "The file has no rows: nothing imported."
    if checked.bad and batch.mode == ImportBatch.Mode.ALL_OR_NOTHING:
        return (
            f"{checked.bad} of {checked.rows_seen} rows are bad, so nothing was imported. Fix them and import again, "
            "or import only the good rows ('Import the good rows' on the upload page, --skip-bad in the "
            "import_items command)."
        )
    return ""


def _write_pass(batch: ImportBatch, spool: IO[bytes]) -> _Written:
    """Pass 2: insert the spooled rows in chunks inside one transaction; any failure rolls all of it back."""
    try:
        with _sqlite_page_cache(), transaction.atomic():
            return _write_chunks(batch, spool)
    except IntegrityError as exc:
        if "content_hash" in str(exc) or "item_unique_content_per_project" in str(exc):
            # item_unique_content_per_project caught what the per-chunk lookup could not see: a
            # concurrent import of the same content committed in between.
            raise _WriteFailed(
                "Another import added some of the same items while this one ran, so nothing was imported. "
                "Import the file again: items already in the project will be listed as duplicates."
            ) from exc
        raise _WriteFailed(
            f"The import stopped while writing ({exc}); the transaction was rolled back: nothing imported."
        ) from exc
    except Exception as exc:  # any failure rolls back and is reported in words
        raise _WriteFailed(
            f"The import stopped while writing ({exc}); the transaction was rolled back: nothing imported."
        ) from exc


def _summary(checked: _Checked, written: _Written, share: float) -> str:
    parts = [f"Imported {written.imported} of {checked.rows_seen} rows."]
    if written.duplicates:
        exact = written.duplicates - written.near_duplicates
        parts.append(
            f"{written.duplicates} duplicates not imported again ({exact} exact, "
            f"{written.near_duplicates} near: {NEAR})."
        )
    if checked.bad:
        parts.append(f"{checked.bad} bad rows skipped (see the rejected-rows file).")
    parts.append(_split_summary(written.strata, share))
    return " ".join(p for p in parts if p)


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


NEAR = "the same after normalizing case, spacing and Unicode"


def _exact_content(prompt: str, messages: Any, responses: Any) -> tuple:
    """The texts the content hash is made of, unnormalized: equal means an exact duplicate."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    if isinstance(responses, str):
        responses = json.loads(responses)
    head = tuple((m.get("role"), m.get("content")) for m in messages) if messages else prompt
    return head, tuple(r.get("text") if isinstance(r, dict) else r for r in responses or ())


@dataclass(frozen=True)
class _Original:
    """What a duplicate row duplicates: an item already stored (``item_id``), or a row of this file."""

    item_id: int | None
    batch_id: int | None
    line: int | None
    content: tuple | None


def _original_of(record: tuple, batch_id: int) -> _Original:
    return _Original(None, batch_id, record[LINE], _exact_content(record[PROMPT], record[MESSAGES], record[RESPONSES]))


class _Duplicates:
    """Counts duplicate rows, exact and near, and keeps the first MAX_REPORTED, each saying what it duplicates."""

    def __init__(self, batch: ImportBatch, written: _Written):
        self.batch_id = batch.id
        self.written = written

    def add(self, record: tuple, original: _Original | None) -> None:
        written = self.written
        written.duplicates += 1
        exact = original is not None and original.content == _exact_content(
            record[PROMPT], record[MESSAGES], record[RESPONSES]
        )
        if not exact and original is not None:
            written.near_duplicates += 1
        if len(written.report) < MAX_REPORTED:
            written.report.append(
                {
                    "line": record[LINE],
                    "field": "",
                    "message": self.message(original, exact),
                    "kind": "duplicate",
                    "match": "exact" if exact else "near" if original is not None else "",
                }
            )

    def message(self, original: _Original | None, exact: bool) -> str:
        if original is None:
            return "Already in the project (same normalized content); not imported again."
        if original.batch_id == self.batch_id:
            if exact:
                return f"Exact duplicate of line {original.line} in this file; imported once."
            return f"Near duplicate of line {original.line} in this file ({NEAR}); imported once."
        how = "exact duplicate" if exact else f"near duplicate: {NEAR}"
        return f"Already in the project as item {original.item_id} ({how}); not imported again."


def _write_chunks(batch: ImportBatch, spool: IO[bytes]) -> _Written:
    project = batch.project
    seed, share = project.split_seed, project.eval_share
    written = _Written()
    strata: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    duplicates = _Duplicates(batch, written)
    insert = _Inserter(batch.id, project.id, timezone.now())

    for chunk in _read_spool(spool):
        # SQLite: look the chunk's hashes up first (cheap there). PostgreSQL: the insert itself
        # skips what the unique index already holds (ON CONFLICT DO NOTHING), and only those rows
        # are looked up for the report; probing the index twice per row would double the cost.
        known = {} if insert.on_conflict else _known_items(project.id, [record[HASH] for record in chunk])
        first: dict[str, tuple] = {}  # content hash -> its first row in this chunk
        fresh, repeats = [], []
        for record in chunk:
            h, kind = record[HASH], record[KIND]
            if h in known:
                duplicates.add(record, known[h])
                continue
            if h in first:
                repeats.append(record)
                continue
            first[h] = record
            if record[PROVENANCE] == Provenance.LLM_JUDGED:
                split = "train"
            else:
                split = split_for(split_seed=seed, stratum=kind, content_hash=h, eval_share=share)
            strata[kind][split == "eval"] += 1
            fresh.append((record, split))
        inserted = insert(fresh)
        skipped: dict[str, _Original | None] = {}
        if inserted is not None and len(inserted) < len(fresh):
            missed = [(record, split) for record, split in fresh if record[HASH] not in inserted]
            found = _known_items(project.id, [record[HASH] for record, _ in missed])
            for record, split in missed:
                strata[record[KIND]][split == "eval"] -= 1
                skipped[record[HASH]] = found.get(record[HASH])
                duplicates.add(record, skipped[record[HASH]])
            written.imported += len(inserted)
        else:
            written.imported += len(fresh)
        # A repeat duplicates the first row of its content in this chunk, unless that row was itself
        # skipped as already in the project: then it duplicates the project's item.
        for record in repeats:
            h = record[HASH]
            duplicates.add(record, skipped[h] if h in skipped else _original_of(first[h], batch.id))
    written.report.sort(key=lambda d: d["line"])
    written.strata = {k: v for k, v in strata.items() if sum(v)}
    return written


def _known_items(project_id: int, hashes: list[str]) -> dict[str, _Original]:
    """Which of these content hashes the project already has, and the item's texts: {hash: _Original}.
    One indexed query per chunk (item_unique_content_per_project); on PostgreSQL the hashes go as
    one array parameter, since a 2,000-placeholder IN list costs more to plan than to run."""
    table = connection.ops.quote_name(Item._meta.db_table)
    if connection.vendor == "postgresql":
        match, params = "= ANY(%s)", [project_id, hashes]
    else:
        match, params = f"IN ({', '.join(['%s'] * len(hashes))})", [project_id, *hashes]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT content_hash, id, import_batch_id, source_line, prompt, messages, responses FROM {table} "
            f"WHERE project_id = %s AND content_hash {match}",
            params,
        )
        rows = cursor.fetchall()
    return {
        h: _Original(item_id, batch_id, line, _exact_content(prompt, messages, responses))
        for h, item_id, batch_id, line, prompt, messages, responses in rows
    }


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


def sample_bytes(rows: list[dict]) -> bytes:
    """JSONL bytes for rows (used by the demo and tests)."""
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    return buffer.getvalue().encode()
