"""Submitting, revising and undoing annotations, and flagging items.

Annotations are never overwritten: each submission appends an ``AnnotationRevision`` and the
``Annotation`` row mirrors the latest one. Services take payloads already validated into
``annotate.payloads`` values (responses named by their index into ``Item.responses``); the task
forms (``annotate/forms.py``) make them from what a reviewer submitted.
"""

from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotate import queue_sql
from annotate.models import (
    Annotation,
    AnnotationRevision,
    Flag,
    Item,
    ItemResult,
    Lease,
    Project,
    RubricVersion,
    TaskKind,
)
from annotate.payloads import Payload
from annotate.services.queue import lease_and_queue_locked, lease_fill_for_reviewer
from annotate.services.results import item_result_load, item_result_refresh, item_result_refresh_in_transaction
from config import rawsql
from config.sqlite_turns import write_turn

MAX_NOTE_CHARS = 2_000


class AnswerUnchanged(ValidationError):
    """A revision that would repeat the latest one: nothing is stored."""


def _duration_ms(*, lease: Lease, now: datetime, reported: int | None) -> int:
    longest = lease.item.project.lease_minutes * 60_000
    if reported is None:
        started = lease.expires_at - timedelta(minutes=lease.item.project.lease_minutes)
        reported = int((now - started).total_seconds() * 1000)
    return max(0, min(reported, longest))


def _check_payload(*, item: Item, payload: Payload, rubric_version: RubricVersion | None) -> None:
    if payload.kind != item.kind:
        raise ValidationError(f"Item {item.pk} is a {item.kind} item: a {payload.kind} answer does not fit it.")
    if item.kind == TaskKind.RUBRIC and (
        rubric_version is None or rubric_version.status != RubricVersion.Status.ACTIVE
    ):
        raise ValidationError("This project has no active rubric version: an admin has to activate one first.")


def _append_revision(
    *,
    item: Item,
    reviewer,
    payload: Payload,
    rubric_version,
    display_order,
    duration_ms,
    submitting: Lease | None = None,
) -> tuple[Annotation, ItemResult | None]:
    """Store the reviewer's judgement as their annotation's next revision (the first creates the annotation).

    The annotation row is written and returned by one upsert, which also locks it: two submissions
    of one reviewer for one item take turns, and each gets its own revision number. ``submitting``:
    the lease to mark submitted with it. On PostgreSQL the lease update, the upsert, the revision and
    the lock of the item's result row go to the server as one statement (``queue_sql.submission``).
    Returns the annotation and that locked result row (None where it was not taken here). The result's
    refresh reads the item's annotations in a later statement, so it sees every submission committed
    before the lock was granted."""
    data = payload.to_json()
    annotation = Annotation(
        item=item,
        reviewer=reviewer,
        kind=item.kind,
        revision=1,
        payload=data,
        rubric_version=rubric_version,
        display_order=display_order,
        duration_ms=duration_ms,
    )
    # Foreign keys are checked by the database; full_clean on them would only add queries.
    annotation.full_clean(
        exclude=["item", "reviewer", "rubric_version", "display_order"],
        validate_unique=False,
        validate_constraints=False,
    )
    revision = AnnotationRevision(number=0, payload=data, rubric_version=rubric_version)
    result = None
    if connection.vendor == "postgresql":
        sql, params = queue_sql.submission(
            lease=submitting, annotation=annotation, revision=revision, item=item, now=timezone.now()
        )
        (row,) = rawsql.fetch(sql, params)
        result = item_result_load(item, row, rawsql.width(Annotation))
        stored = rawsql.load(Annotation, row)
    else:
        if submitting is not None:
            rawsql.update(submitting, ["status", "submitted_at", "updated_at"])
        (row,) = rawsql.fetch(*queue_sql.annotation_upsert(annotation))
        stored = rawsql.load(Annotation, row)
        revision.annotation, revision.number = stored, stored.revision
        rawsql.insert(revision)
    stored.item, stored.reviewer, stored.rubric_version = item, reviewer, rubric_version
    return stored, result


def _submit_locked(
    *, lease: Lease | None, reviewer, payload: Payload, rubric_version: RubricVersion | None, duration_ms: int | None
) -> Annotation:
    """The submission of a lease already read and locked."""
    if lease is None:
        raise Lease.DoesNotExist("No such lease of this reviewer in this project.")
    if lease.status == Lease.Status.SUBMITTED:
        raise ValidationError(
            "You already submitted this item. To change your answer, open it from your recent annotations."
        )
    if lease.status == Lease.Status.SKIPPED:
        raise ValidationError("You skipped this item; it comes back at the end of your queue.")
    if lease.status == Lease.Status.RELEASED:
        raise ValidationError("This item was sent back for another review: press Next to get it again.")
    item = lease.item
    _check_payload(item=item, payload=payload, rubric_version=rubric_version)
    now = timezone.now()
    # An expired lease is taken back if the item still has room; the cap trigger decides atomically.
    was_active = lease.status == Lease.Status.ACTIVE
    lease.status = Lease.Status.SUBMITTED
    lease.submitted_at = now
    if not was_active:
        try:
            with transaction.atomic():
                rawsql.update(lease, ["status", "submitted_at", "updated_at"])
        except IntegrityError:
            raise ValidationError(
                "Your lease on this item expired and other reviewers have since completed it: "
                "your answer was not stored. Press Next for a new item."
            ) from None
    annotation, result = _append_revision(
        item=item,
        reviewer=reviewer,
        payload=payload,
        rubric_version=rubric_version if item.kind == TaskKind.RUBRIC else None,
        display_order=lease.display_order,
        duration_ms=_duration_ms(lease=lease, now=now, reported=duration_ms),
        # active -> submitted keeps the item's count: the trigger cannot refuse it, so it goes with the upsert.
        submitting=lease if was_active else None,
    )
    item_result_refresh_in_transaction(item=item, locked=result)
    return annotation


def annotation_submit(
    *,
    project: Project,
    lease_id: int,
    reviewer,
    payload: Payload,
    rubric_version: RubricVersion | None = None,
    duration_ms: int | None = None,
    refill: bool = False,
) -> tuple[Annotation, list[Lease]]:
    """Record the reviewer's judgement of a leased item (a new revision if they reviewed it before).

    With ``refill`` the reviewer's leases are topped up (current + prefetched) in the same transaction,
    one commit per item. Returns the annotation and the reviewer's active leases, oldest first (only
    when refilled). ``rubric_version``: the active version the answer was scored under (rubric items).
    Raises ``Lease.DoesNotExist`` when the lease is not the reviewer's in this project. If the refill
    failed, the whole submission fails and nothing of it is kept, so the lease is still active and the
    reviewer can submit again."""
    with write_turn(), transaction.atomic():
        lease, active = lease_and_queue_locked(
            lease_id=lease_id, reviewer=reviewer, project=project, now=timezone.now()
        )
        annotation = _submit_locked(
            lease=lease, reviewer=reviewer, payload=payload, rubric_version=rubric_version, duration_ms=duration_ms
        )
        if not refill:
            return annotation, []
        # No savepoint around the refill: catching an error of it here would let this transaction commit
        # without the writes the error undid. It fails as a whole instead.
        return annotation, lease_fill_for_reviewer(project=project, reviewer=reviewer, active=active)


@transaction.atomic
def annotation_revise(
    *, annotation_id: int, reviewer, payload: Payload, rubric_version: RubricVersion | None = None
) -> Annotation:
    """Change a submitted annotation: a new revision is appended and becomes the one that counts.

    Saving the same answer again adds nothing: ``AnswerUnchanged`` says so."""
    annotation = (
        Annotation.objects.select_for_update(of=("self",))
        .select_related("item__project")
        .filter(pk=annotation_id, reviewer=reviewer)
        .first()
    )
    if annotation is None:
        raise ValidationError("You have not annotated this item yet: answer it from the queue first.")
    item = annotation.item
    _check_payload(item=item, payload=payload, rubric_version=rubric_version)
    version = rubric_version if item.kind == TaskKind.RUBRIC else None
    if payload.to_json() == annotation.payload and version == annotation.rubric_version:
        raise AnswerUnchanged("Nothing changed: this is already your latest revision, so no new one was saved.")
    annotation, result = _append_revision(
        item=item,
        reviewer=reviewer,
        payload=payload,
        rubric_version=version,
        display_order=annotation.display_order,
        duration_ms=annotation.duration_ms,
    )
    item_result_refresh_in_transaction(item=item, locked=result)
    return annotation


@transaction.atomic
def annotation_undo_last(*, project: Project, reviewer) -> tuple[Lease, dict]:
    """Take back the reviewer's last submission while its lease lasts; the item returns to their screen."""
    now = timezone.now()
    lease = (
        Lease.objects.select_for_update(of=("self",))
        .select_related("item__project")
        .filter(project=project, reviewer=reviewer, status=Lease.Status.SUBMITTED)
        .order_by("-submitted_at", "-id")
        .first()
    )
    if lease is None:
        raise ValidationError("Nothing to undo: you have not submitted anything in this project.")
    if lease.expires_at <= now:
        raise ValidationError(
            f"Too late to undo item {lease.item_id}: its {project.lease_minutes}-minute lease is over. "
            "Open it from your recent annotations to change your answer instead."
        )
    annotation = Annotation.objects.select_for_update().get(item=lease.item, reviewer=reviewer)
    undone = annotation.payload
    AnnotationRevision.objects.filter(annotation=annotation, number=annotation.revision).delete()
    previous = AnnotationRevision.objects.filter(annotation=annotation).order_by("-number").first()
    if previous is None:
        annotation.delete()
    else:
        annotation.revision = previous.number
        annotation.payload = previous.payload
        annotation.rubric_version = previous.rubric_version
        annotation.save()
    lease.status = Lease.Status.ACTIVE
    lease.submitted_at = None
    lease.save(update_fields=["status", "submitted_at", "updated_at"])
    item_result_refresh(item=lease.item)
    return lease, undone


@transaction.atomic
def flag_resolve(*, project: Project, flag_id: int, resolved_by, resolution: str = "") -> Flag:
    """Close an open flag of the project, saying what was done (kept with the flag)."""
    flag = Flag.objects.select_for_update().filter(pk=flag_id, item__project=project).first()
    if flag is None:
        raise ValidationError(f"No flag {flag_id} in this project: reload the page.")
    if flag.resolved:
        raise ValidationError(f"Flag {flag_id} is resolved already.")
    if len(resolution) > MAX_NOTE_CHARS:
        raise ValidationError({"resolution": f"Keep the note under {MAX_NOTE_CHARS} characters."})
    flag.resolved, flag.resolved_by, flag.resolved_at = True, resolved_by, timezone.now()
    flag.resolution = resolution.strip()
    flag.save(update_fields=["resolved", "resolved_by", "resolved_at", "resolution"])
    return flag


@transaction.atomic
def item_flag(*, lease_id: int, reviewer, reason: str) -> Flag:
    """Flag a leased item for an admin, with the reviewer's reason."""
    lease = Lease.objects.select_related("item").filter(pk=lease_id, reviewer=reviewer).first()
    if lease is None:
        raise ValidationError("This item is not leased to you: reload the queue.")
    if not (reason or "").strip():
        raise ValidationError({"reason": "Say what is wrong with the item so an admin can fix it."})
    if len(reason) > MAX_NOTE_CHARS:
        raise ValidationError({"reason": f"Keep the reason under {MAX_NOTE_CHARS} characters."})
    flag = Flag(item=lease.item, reviewer=reviewer, reason=reason)
    flag.full_clean()
    flag.save()
    return flag
