"""Submitting, revising and undoing annotations, and flagging items.

Annotations are never overwritten: each submission appends an ``AnnotationRevision`` and the
``Annotation`` row mirrors the latest one. Form values name display positions (1, 2, ... as the
reviewer saw them); payloads store indices into ``Item.responses`` (see annotate/models.py).
"""

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

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
from annotate.services.consensus import (
    item_result_load,
    item_result_lock_statement,
    item_result_refresh,
    item_result_refresh_in_transaction,
)
from config import rawsql

MAX_ANSWER_CHARS = 50_000
MAX_NOTE_CHARS = 2_000
GOLD_ACTIONS = ("accept", "edit", "write", "unusable")
STRENGTHS = ("slight", "clear")


def _position(value, *, display_order: list[int], field: str, errors: dict) -> int | None:
    """A 1-based display position from the form, as an index into Item.responses."""
    try:
        position = int(value)
    except (TypeError, ValueError):
        position = 0
    if not 1 <= position <= len(display_order):
        errors[field] = f"Choose a response between 1 and {len(display_order)} (got {value!r})."
        return None
    return display_order[position - 1]


def _text(data: Mapping, field: str, *, limit: int, errors: dict) -> str:
    value = data.get(field) or ""
    if len(value) > limit:
        errors[field] = f"Keep {field} under {limit} characters (it has {len(value)})."
    return value


def annotation_payload_parse(
    *, item: Item, display_order: list[int], data: Mapping, rubric_version: RubricVersion | None
) -> dict:
    """Turn submitted form values into the payload for the item's kind, or raise ValidationError per field."""
    errors: dict[str, str] = {}
    responses = item.responses or []
    if len(display_order) != len(responses):
        display_order = list(range(len(responses)))
    if item.kind == TaskKind.GOLD:
        action = data.get("action") or ""
        payload = {"action": action, "answer": "", "source_index": None, "reason": ""}
        if action not in GOLD_ACTIONS:
            errors["action"] = (
                "Choose what to do: accept a candidate (its number), edit one (e), write your own (w) "
                "or mark the item unusable (x)."
            )
        elif action in ("accept", "edit"):
            payload["source_index"] = _position(
                data.get("source"), display_order=display_order, field="source", errors=errors
            )
            if action == "accept" and payload["source_index"] is not None:
                payload["answer"] = responses[payload["source_index"]].get("text", "")
        if action in ("edit", "write"):
            payload["answer"] = _text(data, "answer", limit=MAX_ANSWER_CHARS, errors=errors)
            if not payload["answer"].strip():
                errors["answer"] = "Write the reference answer: it is empty."
        if action == "unusable":
            payload["reason"] = _text(data, "reason", limit=MAX_NOTE_CHARS, errors=errors)
            if not payload["reason"].strip():
                errors["reason"] = "Say why the item is unusable (for example: the prompt is cut off)."
    elif item.kind == TaskKind.PREFERENCE:
        choice = data.get("choice") or ""
        payload = {"choice": "", "chosen": None, "rejected": None, "strength": None, "rationale": ""}
        if choice in ("tie", "both_bad"):
            payload["choice"] = choice
        elif choice:
            payload["choice"] = "response"
            payload["chosen"] = _position(choice, display_order=display_order, field="choice", errors=errors)
            if len(responses) == 2 and payload["chosen"] is not None:
                payload["rejected"] = 1 - payload["chosen"]
            elif data.get("worst"):
                payload["rejected"] = _position(
                    data.get("worst"), display_order=display_order, field="worst", errors=errors
                )
                if payload["rejected"] is not None and payload["rejected"] == payload["chosen"]:
                    errors["worst"] = "The worst response cannot also be the best one: pick another."
            strength = data.get("strength") or None
            if strength not in (None, *STRENGTHS):
                errors["strength"] = f"Strength is slight or clear, or left empty (got {strength!r})."
            payload["strength"] = strength
        else:
            errors["choice"] = "Pick the better response (its number), t for a tie, or b if both are bad."
        payload["rationale"] = _text(data, "rationale", limit=MAX_NOTE_CHARS, errors=errors)
    elif item.kind == TaskKind.RUBRIC:
        if rubric_version is None:
            raise ValidationError("This project has no active rubric version: an admin has to activate one first.")
        scores = {}
        for criterion in rubric_version.criteria:
            key = criterion["key"]
            raw = data.get(f"score-{key}")
            levels = {str(level["value"]): level["value"] for level in criterion.get("levels", [])}
            if raw in (None, ""):
                errors[f"score-{key}"] = f"Score {criterion.get('name', key)}: pick one of its levels."
            elif raw not in levels:
                errors[f"score-{key}"] = (
                    f"{raw!r} is not a level of {criterion.get('name', key)}: pick one of {', '.join(levels)}."
                )
            else:
                scores[key] = levels[raw]
        payload = {"response_index": display_order[0] if display_order else None, "scores": scores}
    else:
        raise ValidationError(f"Item {item.pk} has an unknown kind {item.kind!r}.")
    if errors:
        raise ValidationError(errors)
    return payload


def _duration_ms(*, lease: Lease, now: datetime, reported) -> int:
    longest = lease.item.project.lease_minutes * 60_000
    try:
        value = int(reported)
    except (TypeError, ValueError):
        started = lease.expires_at - timedelta(minutes=lease.item.project.lease_minutes)
        value = int((now - started).total_seconds() * 1000)
    return max(0, min(value, longest))


@cache
def _upsert_sql(vendor: str) -> tuple[str, tuple]:
    """One statement that creates the reviewer's annotation or moves it to its next revision, returning the row."""
    fields = tuple(f for f in Annotation._meta.concrete_fields if not f.primary_key)
    quote = connection.ops.quote_name
    table = rawsql.table(Annotation)
    kept = {"item", "reviewer", "created_at"}
    updates = ", ".join(
        f"{quote(f.column)} = {table}.{quote(f.column)} + 1"
        if f.name == "revision"
        else f"{quote(f.column)} = EXCLUDED.{quote(f.column)}"
        for f in fields
        if f.name not in kept
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({quote('item_id')}, {quote('reviewer_id')}) DO UPDATE SET {updates} "
        f"RETURNING {rawsql.columns(Annotation, table)}"
    )
    return sql, fields


@cache
def _revision_from_upsert_sql(vendor: str) -> tuple[str, tuple]:
    """The revision INSERT fed by the annotation upsert's RETURNING row (``a``), for PostgreSQL's WITH,
    and the revision fields it takes as parameters."""
    quote = connection.ops.quote_name
    fields = [f for f in AnnotationRevision._meta.concrete_fields if not f.primary_key]
    fed = {"annotation": "a.id", "number": "a.revision"}
    # Cast: a parameter in a SELECT list has no type of its own for PostgreSQL to infer.
    values = [fed.get(f.name) or f"CAST(%s AS {f.db_type(connection)})" for f in fields]
    sql = (
        f"INSERT INTO {rawsql.table(AnnotationRevision)} ({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT {', '.join(values)} FROM a"
    )
    return sql, tuple(f for f in fields if f.name not in fed)


def _append_revision(
    *, item: Item, reviewer, payload: dict, rubric_version, display_order, duration_ms, submitting: Lease | None = None
) -> tuple[Annotation, ItemResult | None]:
    """Store the reviewer's judgement as their annotation's next revision (the first creates the annotation).

    The annotation row is written and returned by one upsert, which also locks it: two submissions
    of one reviewer for one item take turns, and each gets its own revision number. ``submitting``:
    the lease to mark submitted with it. On PostgreSQL the lease update, the upsert, the revision and
    the lock of the item's result row go to the server as one statement (WITH ... INSERT ...
    RETURNING): one round trip, not four. Returns the annotation and that locked result row (None
    where it was not taken here). The result's refresh reads the item's annotations in a later
    statement, so it sees every submission committed before the lock was granted."""
    annotation = Annotation(
        item=item,
        reviewer=reviewer,
        kind=item.kind,
        revision=1,
        payload=payload,
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
    revision = AnnotationRevision(number=0, payload=payload, rubric_version=rubric_version)
    upsert, fields = _upsert_sql(connection.vendor)
    params = rawsql.prepared(annotation, fields, add=True)
    result = None
    if connection.vendor == "postgresql":
        revision_sql, revision_fields = _revision_from_upsert_sql(connection.vendor)
        sql = f"WITH a AS ({upsert}), r AS ({revision_sql})"
        params += rawsql.prepared(revision, revision_fields, add=True)
        if submitting is not None:
            lease_sql, lease_params = rawsql.update_statement(submitting, ["status", "submitted_at", "updated_at"])
            sql, params = f"{sql}, l AS ({lease_sql})", [*params, *lease_params]
        result_sql, result_params = item_result_lock_statement(item)
        sql, params = f"{sql}, ir AS ({result_sql}) SELECT a.*, ir.* FROM a, ir", [*params, *result_params]
        (row,) = rawsql.fetch(sql, params)
        result = item_result_load(item, row, rawsql.width(Annotation))
        stored = rawsql.load(Annotation, row)
    else:
        if submitting is not None:
            rawsql.update(submitting, ["status", "submitted_at", "updated_at"])
        (row,) = rawsql.fetch(upsert, params)
        stored = rawsql.load(Annotation, row)
        revision.annotation, revision.number = stored, stored.revision
        rawsql.insert(revision)
    stored.item, stored.reviewer, stored.rubric_version = item, reviewer, rubric_version
    return stored, result


@transaction.atomic
def annotation_submit(
    *, lease_id: int, reviewer, data: Mapping, duration_ms=None, project: Project | None = None
) -> Annotation:
    """Record the reviewer's judgement for a leased item (a new revision if they reviewed it before).

    With ``project`` (already loaded by the view) the lease must belong to it and the project is not
    read again; a lease that is not the reviewer's in that project raises ``Lease.DoesNotExist``."""
    return _submit_in_transaction(
        lease_id=lease_id, reviewer=reviewer, data=data, duration_ms=duration_ms, project=project
    )


def _submit_in_transaction(*, lease_id: int, reviewer, data: Mapping, duration_ms, project: Project | None):
    # No savepoint of its own (two round trips each): its caller's transaction rolls back as a whole.
    from annotate.services.queue import lease_for_submit

    lease = lease_for_submit(lease_id=lease_id, reviewer=reviewer, project=project)
    return _submit_locked(
        lease=lease, lease_id=lease_id, reviewer=reviewer, data=data, duration_ms=duration_ms, project=project
    )


def _submit_locked(*, lease: Lease | None, lease_id: int, reviewer, data: Mapping, duration_ms, project):
    """The submission of a lease already read and locked (None: not the reviewer's)."""
    from annotate.selectors import rubric_version_active

    now = timezone.now()
    if lease is None and project is not None:
        raise Lease.DoesNotExist(f"No lease {lease_id} of {reviewer} in {project}.")
    if lease is None:
        raise ValidationError("This item is not leased to you: reload the queue to get your current item.")
    if lease.status == Lease.Status.SUBMITTED:
        raise ValidationError(
            "You already submitted this item. To change your answer, open it from your recent annotations."
        )
    if lease.status == Lease.Status.SKIPPED:
        raise ValidationError("You skipped this item; it comes back at the end of your queue.")
    if lease.status == Lease.Status.RELEASED:
        raise ValidationError("This item was sent back for another review: press Next to get it again.")
    item = lease.item
    rubric_version = rubric_version_active(project=item.project) if item.kind == TaskKind.RUBRIC else None
    payload = annotation_payload_parse(
        item=item, display_order=lease.display_order, data=data, rubric_version=rubric_version
    )
    # An expired lease is taken back if the item still has room; the cap trigger decides atomically.
    was_active = lease.status == Lease.Status.ACTIVE
    lease.status = Lease.Status.SUBMITTED
    lease.submitted_at = now
    try:
        if not was_active:  # taking an expired lease back: the cap trigger may refuse it
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
        rubric_version=rubric_version,
        display_order=lease.display_order,
        duration_ms=_duration_ms(lease=lease, now=now, reported=duration_ms),
        # active -> submitted keeps the item's count: the trigger cannot refuse it, so it goes with the upsert.
        submitting=lease if was_active else None,
    )
    item_result_refresh_in_transaction(item=item, locked=result)
    return annotation


def annotation_submit_and_refill(*, lease_id: int, reviewer, project: Project, data: Mapping, duration_ms=None):
    """Submit, then top up the reviewer's leases (current + prefetched), in one transaction: one commit per item.

    Returns (annotation, active leases oldest first). The refill's writes are built not to fail (see
    ``lease_next_for_reviewer``); if one did, the whole submission fails and nothing of it is kept,
    so the reviewer's lease is still active and they can submit again. Raises ``Lease.DoesNotExist``
    when the lease is not the reviewer's in this project."""
    from annotate.services.queue import write_turn

    with write_turn(), transaction.atomic():
        return _submit_and_refill(
            lease_id=lease_id, reviewer=reviewer, project=project, data=data, duration_ms=duration_ms
        )


def _submit_and_refill(*, lease_id: int, reviewer, project: Project, data: Mapping, duration_ms):
    from annotate.services.queue import lease_fill_for_reviewer, lease_for_submit_with_queue

    lease, active = lease_for_submit_with_queue(
        lease_id=lease_id, reviewer=reviewer, project=project, now=timezone.now()
    )
    annotation = _submit_locked(
        lease=lease, lease_id=lease_id, reviewer=reviewer, data=data, duration_ms=duration_ms, project=project
    )
    # No savepoint around the refill: catching an error of it here would let this transaction commit
    # without the writes the error undid. It fails as a whole instead.
    leases = lease_fill_for_reviewer(project=project, reviewer=reviewer, active=active)
    return annotation, leases


@transaction.atomic
def annotation_revise(*, item_id: int, reviewer, data: Mapping) -> Annotation:
    """Change a submitted annotation: a new revision is appended and becomes the one that counts."""
    from annotate.selectors import rubric_version_active

    annotation = (
        Annotation.objects.select_for_update(of=("self",))
        .select_related("item__project")
        .filter(item_id=item_id, reviewer=reviewer)
        .first()
    )
    if annotation is None:
        raise ValidationError("You have not annotated this item yet: answer it from the queue first.")
    item = annotation.item
    rubric_version = rubric_version_active(project=item.project) if item.kind == TaskKind.RUBRIC else None
    payload = annotation_payload_parse(
        item=item, display_order=annotation.display_order, data=data, rubric_version=rubric_version
    )
    annotation, result = _append_revision(
        item=item,
        reviewer=reviewer,
        payload=payload,
        rubric_version=rubric_version,
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
