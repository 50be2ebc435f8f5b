"""Snapshot audits: what a snapshot would teach, its gates, and the acknowledgements that let a blocked one train.

The detectors are ``annotate/audit.py`` (pure); this module streams a snapshot's records into them on a
worker (the default queue: the web side's role), adds the findings that need the records' text (prompts
answered differently), judges every finding by the projects' gates, and stores the report. A blocking
finding stops jobs on the snapshot until an admin acknowledges it with a reason or makes a new snapshot
without it; acknowledgements go into each job's record and its adapter's manifest.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone

from annotate.audit import Auditor, AuditRecord, apply_gates, gates_merge, same_prompt_finding
from annotate.models import AdminAction, Project
from annotate.services.adminlog import admin_action_record
from config.background import send_on_commit
from training.curation import audit_record
from training.models import AuditAcknowledgement, SnapshotAudit, SnapshotRecord, TrainingSnapshot

log = logging.getLogger(__name__)

READ_CHUNK = 5000
# Progress: reading and detecting up to this share, then the findings that need text, then the gates.
READ_SHARE = 0.9


def snapshot_gates(snapshot: TrainingSnapshot) -> dict[str, dict]:
    """The gates of the snapshot's projects, merged (the strictest wins), over the defaults."""
    ids = [source["project_id"] for source in snapshot.sources]
    return gates_merge(*Project.objects.filter(pk__in=ids).values_list("audit_gates", flat=True))


def inline_limit() -> int:
    """Snapshots of up to this many records are audited during the request; bigger ones by a worker."""
    return int(getattr(settings, "GOLDSET_AUDIT_INLINE_MAX", 5000))


@transaction.atomic
def snapshot_audit_request(*, snapshot: TrainingSnapshot, created_by=None) -> SnapshotAudit:
    """Audit the snapshot: on the spot when it is small, else on a worker (a new audit each time: the gates or
    the detectors may have changed since the last one)."""
    audit = SnapshotAudit(snapshot=snapshot, created_by=created_by)
    audit.full_clean()
    audit.save()
    if snapshot.sft_count + snapshot.dpo_count <= inline_limit():
        return snapshot_audit_run(audit_id=audit.pk)
    from training.tasks import snapshot_audit_run_task

    send_on_commit(snapshot_audit_run_task, audit.pk)
    return audit


def snapshot_audit_run(*, audit_id: int) -> SnapshotAudit | None:
    """Run a queued audit (the worker's side); a second delivery of the same message does nothing."""
    if not SnapshotAudit.claim(audit_id, message="Reading the snapshot"):
        return None
    audit = SnapshotAudit.objects.select_related("snapshot").get(pk=audit_id)
    try:
        report, gates = _audit(audit)
    except Exception as exc:
        log.exception("audit %s failed", audit_id)
        SnapshotAudit.finish(audit_id, SnapshotAudit.Status.FAILED, f"The audit could not run: {exc}")
    else:
        blocking = sum(f["gate"] == "block" for f in report["findings"])
        warnings = sum(f["gate"] == "warn" for f in report["findings"])
        summary = f"{blocking} blocking finding(s), {warnings} warning(s)" if blocking or warnings else "Nothing found"
        SnapshotAudit.finish(audit_id, SnapshotAudit.Status.SUCCEEDED, summary, report=report, gates=gates)
    audit.refresh_from_db()
    return audit


def _audit(audit: SnapshotAudit) -> tuple[dict, dict]:
    started = time.perf_counter()
    snapshot = audit.snapshot
    total = snapshot.sft_count + snapshot.dpo_count
    text = _TextDetectors.start(snapshot, total)
    try:
        auditor = Auditor(expected=total, parts="stream" if text else "all")
        done, detect = 0, 0.0
        for page in _read_ahead(snapshot):
            fed = time.perf_counter()
            auditor.feed_many(page)
            detect += time.perf_counter() - fed
            done += len(page)
            SnapshotAudit.report_progress(
                audit.pk, READ_SHARE * done / max(total, 1), f"Read {done:,} of {total:,}"
            )
        if text:
            waited = time.perf_counter()
            auditor.adopt_text(text.result())
            detect += time.perf_counter() - waited  # the second process still detecting
    finally:
        if text:
            text.stop()
    SnapshotAudit.report_progress(audit.pk, READ_SHARE, "Comparing answers to the same prompt")
    streamed = time.perf_counter()
    try:
        report = auditor.report()
    finally:
        auditor.close()
    groups = report.pop("same_prompt_candidates")
    if groups:
        fields = ("id", "kind", "messages", "completion", "chosen", "rejected", "lineage")
        wanted = [rid for g in groups for rid in g]
        texts = {r["id"]: r for r in SnapshotRecord.objects.filter(pk__in=wanted).values(*fields)}
        finding = same_prompt_finding(
            [[(rid, audit_record(texts[rid]).prompt, texts[rid]["completion"]) for rid in g] for g in groups],
            auditor.n_sft,
        )
        if finding:
            report["findings"].append(finding)
    gates = snapshot_gates(snapshot)
    report["findings"] = apply_gates(report["findings"], gates)
    report["audited_at"] = timezone.now().isoformat()
    done = time.perf_counter()
    log.info(
        "audit %s: %d records; read and detect %.2f s (read %.2f s, detect %.2f s), findings %.2f s",
        audit.pk,
        auditor.n,
        streamed - started,
        streamed - started - detect,
        detect,
        done - streamed,
    )
    return report, gates


class _TextDetectors:
    """The text detectors run by a second process (``training.audit_text``) over the same snapshot, on another
    core: for a committed snapshot of at least ``GOLDSET_AUDIT_PROCESS_MIN`` records on PostgreSQL, on a machine
    with more than one core."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    @classmethod
    def start(cls, snapshot: TrainingSnapshot, total: int) -> _TextDetectors | None:
        least = int(getattr(settings, "GOLDSET_AUDIT_PROCESS_MIN", 50_000))
        if (
            total < least
            or (os.cpu_count() or 1) < 2
            or connection.vendor != "postgresql"
            or connection.in_atomic_block  # its own connection would not see this transaction's rows
        ):
            return None
        command = [sys.executable, "-m", "training.audit_text", str(snapshot.pk), str(total)]
        # The database this connection is on (under test, the test database), whatever the settings name.
        env = {**os.environ, "GOLDSET_DB_NAME": connection.settings_dict["NAME"]}
        return cls(subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE))

    def result(self) -> dict:
        """The detectors' state once the process has read the whole snapshot."""
        out, _ = self.proc.communicate()
        if self.proc.returncode:
            raise RuntimeError(
                f"the process running the text detectors failed (exit code {self.proc.returncode}); "
                "its error is in the worker's log. Run the audit again from the snapshot's page."
            )
        return pickle.loads(out)  # written by this worker's own child

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _read_ahead(snapshot: TrainingSnapshot):
    """``_pages``, read one page ahead on a thread with its own connection where that connection can see the
    snapshot (it was committed): PostgreSQL makes the next page on one core while this one is audited on the
    other. Inside a transaction (the snapshot may be this connection's own uncommitted rows), in line."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield from _pages(snapshot)
        return
    pages: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item) -> bool:
        """Hand an item over, unless the auditing side has stopped taking them."""
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for page in _pages(snapshot):
                if not offer(page):
                    return
            offer(None)
        except Exception as exc:  # handed to the auditing side, which raises it
            offer(exc)
        finally:
            connections.close_all()  # this thread's own connection

    reader = threading.Thread(target=read, name=f"audit-read-{snapshot.pk}", daemon=True)
    reader.start()
    try:
        while (page := pages.get()) is not None:
            if isinstance(page, Exception):
                raise page
            yield page
    finally:
        stop.set()
        reader.join()


def _records(snapshot: TrainingSnapshot):
    """The snapshot's records as ``AuditRecord`` values, in order, streamed."""
    for page in _pages(snapshot):
        yield from page


def _pages(snapshot: TrainingSnapshot, *, text_only: bool = False):
    """The snapshot's records as lists of ``AuditRecord`` values (READ_CHUNK at a time), in order.

    On PostgreSQL the prompt text and the lineage fields are made in SQL: decoding each row's JSON in Python
    cost more than the audit of it. Elsewhere, the ORM. ``text_only`` (PostgreSQL): the id, kind and answer
    only, all that the text detectors read."""
    if connection.vendor != "postgresql":
        rows = SnapshotRecord.objects.filter(snapshot=snapshot).order_by("position")
        fields = ("id", "kind", "messages", "completion", "chosen", "rejected", "source_item_id", "lineage")
        page = []
        for row in rows.values(*fields).iterator(chunk_size=READ_CHUNK):
            page.append(audit_record(row, record_id=row["id"]))
            if len(page) == READ_CHUNK:
                yield page
                page = []
        if page:
            yield page
        return
    table = connection.ops.quote_name(SnapshotRecord._meta.db_table)
    # The prompt exactly as audit_record writes it: "role: content" per turn, one per line. Read in pages by a
    # range of positions (not one cursor in one transaction: the progress written between pages must be seen
    # meanwhile). A range, not "after the last one, LIMIT n": without fresh statistics on a just-written
    # snapshot the planner answered that by reading every later row and sorting them, for each page.
    sql = (
        "SELECT r.id, r.kind, (SELECT string_agg((t.m->>'role') || ': ' || coalesce(t.m->>'content', ''),"
        " E'\\n' ORDER BY t.n) FROM jsonb_array_elements(r.messages) WITH ORDINALITY AS t(m, n)),"
        " CASE WHEN r.kind = 'dpo' THEN r.chosen ELSE r.completion END, CASE WHEN r.kind = 'dpo' THEN r.rejected"
        " ELSE '' END, coalesce(r.lineage->>'provenance', ''), coalesce(r.lineage->>'source', ''),"
        " coalesce(r.lineage->>'rejected_source', ''), coalesce(r.lineage->>'decided_by', ''),"
        " (r.lineage->>'agreement')::float8, coalesce((r.lineage->>'left_picks')::int, 0),"
        " coalesce((r.lineage->>'picks')::int, 0)"
        f" FROM {table} r WHERE r.snapshot_id = %(snapshot)s AND r.position >= %(start)s AND r.position < %(end)s"
        " ORDER BY r.position"
    )
    if text_only:
        sql = (
            "SELECT r.id, r.kind, '', CASE WHEN r.kind = 'dpo' THEN r.chosen ELSE r.completion END"
            f" FROM {table} r WHERE r.snapshot_id = %(snapshot)s AND r.position >= %(start)s"
            " AND r.position < %(end)s ORDER BY r.position"
        )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(position) FROM {table} WHERE snapshot_id = %(snapshot)s", {"snapshot": snapshot.pk})
        last = cursor.fetchone()[0]
    if last is None:
        return
    for start in range(0, last + 1, READ_CHUNK):
        with connection.cursor() as cursor:
            cursor.execute(sql, {"snapshot": snapshot.pk, "start": start, "end": start + READ_CHUNK})
            rows = cursor.fetchall()
        if rows:
            yield [AuditRecord(row[0], row[1], row[2] or "", *row[3:]) for row in rows]


def snapshot_audit_latest(snapshot: TrainingSnapshot) -> SnapshotAudit | None:
    return SnapshotAudit.objects.filter(snapshot=snapshot).order_by("-created_at", "-id").first()


@transaction.atomic
def audit_finding_acknowledge(*, audit: SnapshotAudit, finding_key: str, reason: str, acknowledged_by):
    """Record an admin's reason for training despite one blocking finding (kept, never edited)."""
    reason = (reason or "").strip()
    finding = next((f for f in audit.findings if f.get("key") == finding_key), None)
    if finding is None:
        raise ValidationError(f"Audit {audit.pk} has no finding {finding_key!r}.")
    if finding.get("gate") != "block":
        raise ValidationError("Only a blocking finding needs an acknowledgement; this one does not stop a job.")
    if not reason:
        raise ValidationError({"reason": "Say why training on this data is right despite the finding: it is kept."})
    if AuditAcknowledgement.objects.filter(audit=audit, finding_key=finding_key).exists():
        raise ValidationError("This finding is acknowledged already.")
    ack = AuditAcknowledgement(audit=audit, finding_key=finding_key, reason=reason, acknowledged_by=acknowledged_by)
    ack.full_clean()
    ack.save()
    admin_action_record(
        actor=acknowledged_by,
        action=AdminAction.Action.AUDIT_ACKNOWLEDGE,
        target=ack,
        summary=f"Acknowledged finding {finding.get('title') or finding_key!r} of audit {audit.pk} "
        f"(snapshot {audit.snapshot_id})",
        details={"audit": audit.pk, "snapshot": audit.snapshot_id, "finding": finding_key, "reason": reason},
    )
    return ack


def snapshot_audit_clearance(snapshot: TrainingSnapshot) -> dict:
    """The audit a job on this snapshot is started under, as the job and its manifest record it.

    Raises ValidationError (saying what to do, with the page to do it on) while the snapshot's latest audit
    has not succeeded or has a blocking finding nobody acknowledged."""
    audit = snapshot_audit_latest(snapshot)
    if audit is None:
        raise ValidationError(
            f"Snapshot {snapshot.name} has not been audited: open its page and run the audit "
            f"({reverse('training:snapshot-detail', kwargs={'snapshot_id': snapshot.pk})})."
        )
    url = audit.get_absolute_url()
    if audit.status != SnapshotAudit.Status.SUCCEEDED:
        state = {"queued": "is waiting for a worker", "running": "is still running", "failed": "failed"}
        raise ValidationError(
            f"Snapshot {snapshot.name}'s audit {state.get(audit.status, audit.status)}: a job starts once it has "
            f"succeeded ({url})."
        )
    acks = {a.finding_key: a for a in audit.acknowledgements.select_related("acknowledged_by")}
    open_blocks = [f for f in audit.blocking if f["key"] not in acks]
    if open_blocks:
        titles = "; ".join(f["title"] for f in open_blocks[:3]) + ("…" if len(open_blocks) > 3 else "")
        raise ValidationError(
            f"Snapshot {snapshot.name} has {len(open_blocks)} blocking audit finding(s): {titles}. Make a new "
            f"snapshot that excludes them, or acknowledge each with a reason on the audit page ({url})."
        )
    return {
        "id": audit.pk,
        "audited_at": audit.report.get("audited_at"),
        "findings": [
            {k: f.get(k) for k in ("key", "type", "title", "share", "lift", "gate")}
            for f in audit.findings
            if f.get("gate") in ("block", "warn")
        ],
        "acknowledgements": [
            {
                "finding": a.finding_key,
                "reason": a.reason,
                "by": a.acknowledged_by.get_username(),
                "at": a.acknowledged_at.isoformat(),
            }
            for a in acks.values()
        ],
    }
