"""The annotation queue: which item a reviewer gets next, and the leases that hold items.

The overlap cap is enforced by the database, not by this module: a trigger on ``annotate_lease``
keeps ``Item.review_count`` (active + submitted leases) and rejects any lease write that would take
it above ``project.overlap_k``; a unique constraint allows one lease row per (item, reviewer).
This module only chooses well and locks so that those checks almost never fire:

- PostgreSQL: the candidate item row is taken with ``SELECT ... FOR NO KEY UPDATE SKIP LOCKED``, so
  concurrent reviewers walk past each other's picks instead of queueing behind them. A pick never
  waits on an item lock: when every candidate is held by someone mid-assignment it sleeps briefly
  and looks again (see ``_candidates_held``). Waiting on the lock instead let two refills, each
  holding the item it had just picked, wait on each other's item: a deadlock.
- SQLite: every transaction is ``BEGIN IMMEDIATE`` (settings), so assignments run one at a time.

Lock order everywhere is lease row, then item row (the trigger's counter update); a transaction
that writes leases of several items (the reaper, a rubric send-back) is alone in doing so (see
``lease_bulk_write_turn``), which keeps expiry, submission and assignment free of deadlocks.
"""

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from annotate import queue_sql, selectors
from annotate.models import Item, Lease, Project, TaskKind
from config import rawsql
from config.sqlite_turns import write_turn

LIVE = (Lease.Status.ACTIVE, Lease.Status.SUBMITTED)
# Items a reviewer holds at once: the one on screen and the prefetched one behind it.
PREFETCH_DEPTH = 2
# Stale leases reaped per call; the rest go on the next call (keeps "next" fast after an outage).
REAP_BATCH = 200
# Partly reviewed items considered per pick before falling back to fresh ones (see _pick).
PARTIAL_WINDOW = 500
# Stale leases only delay their items' second reviews, so looking for them once per few seconds is enough.
REAP_EVERY_S = 5.0
# Picks lost to a race (the cap trigger, the reviewer's other tab, a broken lock cycle) before giving up.
PICK_ATTEMPTS = 5
# How long a pick keeps looking while every candidate is locked by other reviewers' assignments
# (each holds its lock for one short transaction), and the pause between looks.
HELD_WAIT_S = 3.0
_HELD_PAUSES_S = (0.002, 0.005, 0.01, 0.02, 0.04)
# Checked by the database (foreign keys) or set by this module: full_clean would only add queries.
LEASE_DB_CHECKED = ["project", "item", "reviewer", "display_order"]
_DEADLOCK = "40P01"


def _blocked_kinds(project: Project) -> list[str]:
    if TaskKind.RUBRIC in (project.task_kinds or []) and selectors.rubric_version_active(project=project) is None:
        return [TaskKind.RUBRIC]
    return []


def _display_order(item: Item) -> list[int]:
    order = list(range(len(item.responses or [])))
    random.shuffle(order)
    return order


def _commit_without_waiting_for_disk() -> None:
    """Let this transaction commit without waiting for the WAL flush (PostgreSQL).

    Only for lease bookkeeping: a lease lost in a database crash just puts its item back in the queue,
    and the next synchronous commit (every submission is one) flushes it anyway. Annotations always
    wait for the disk. Saves an fsync per assignment, the largest cost of a lease on a busy disk."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


# Any fixed key: transactions that write leases of many items take turns on it (PostgreSQL
# advisory locks are per database).
_BULK_LEASE_LOCK_KEY = 0x601D5E7


def lease_bulk_write_turn(*, wait: bool) -> bool:
    """Take this transaction's turn to write leases of many items (PostgreSQL); False if busy and not waiting.

    Such a write (reaping stale leases, sending items back) updates the leases of many items, so
    the lease trigger locks those item rows in whatever order the update visits them; two of them
    sharing items could each hold one and want the other's. One at a time removes that cycle. Call
    it first in the transaction, before any lease or item lock is held."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_BULK_LEASE_LOCK_KEY])
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_BULK_LEASE_LOCK_KEY])
        return cursor.fetchone()[0]


def lease_expire_stale(*, project: Project | None = None, now: datetime | None = None) -> int:
    """Mark active leases past their expiry as expired, so their items go back into the queue."""
    now = now or timezone.now()
    stale = Lease.objects.filter(status=Lease.Status.ACTIVE, expires_at__lte=now)
    if project is not None:
        stale = stale.filter(project=project)
    # A plain read first: nearly always nothing is stale, and then no write transaction is opened.
    if not stale.exists():
        return 0
    outermost = not connection.in_atomic_block
    with write_turn(), transaction.atomic():
        if outermost:
            _commit_without_waiting_for_disk()
        if not lease_bulk_write_turn(wait=False):
            return 0  # another bulk write is under way; the next call reaps
        # SKIP LOCKED: a lease being submitted right now is left to its submitter.
        ids = list(stale.select_for_update(skip_locked=True).values_list("id", flat=True)[:REAP_BATCH])
        return Lease.objects.filter(id__in=ids, status=Lease.Status.ACTIVE).update(
            status=Lease.Status.EXPIRED, updated_at=now
        )


def _pick_fresh_or_partial(*, project: Project, reviewer, blocked: list[str], partial: bool) -> Item | None:
    sql, params = queue_sql.pick(
        project=project, reviewer_id=reviewer.pk, blocked=blocked, partial=partial, window=PARTIAL_WINDOW
    )
    rows = rawsql.fetch(sql, params)
    if not rows:
        return None
    item = rawsql.load(Item, rows[0])
    item.own_lease = rows[0][-1]
    return item


def _eligible(*, project: Project, reviewer, blocked: list[str]):
    """Items this reviewer could be given if no other transaction held them (skipped ones included)."""
    items = Item.objects.filter(project=project, is_calibration=False, review_count__lt=project.overlap_k)
    if blocked:
        items = items.exclude(kind__in=blocked)
    return items.exclude(
        pk__in=Lease.objects.filter(reviewer=reviewer, status__in=LIVE, project=project).values("item_id")
    )


def _pick(*, project: Project, reviewer, blocked: list[str]) -> Item | None:
    """Lock and return the best item for this reviewer that nobody else holds locked right now."""
    # Items closest to completion first, so items get finished before new ones are started. The
    # partly reviewed ones are looked for in a bounded window: a reviewer working alone piles up
    # their own half-done items at the head of the index, and scanning all of them on every pick
    # would grow without bound. Past the window, fresh items (no live lease) come by id.
    for partial in (True, False):
        item = _pick_fresh_or_partial(project=project, reviewer=reviewer, blocked=blocked, partial=partial)
        if item is not None:
            return item
    # Last pass: items this reviewer skipped, oldest skip first.
    own = Lease.objects.filter(item=OuterRef("pk"), reviewer=reviewer)
    queryset = (
        _eligible(project=project, reviewer=reviewer, blocked=blocked)
        .annotate(own_lease=Subquery(own.values("id")[:1]))
        .filter(leases__reviewer=reviewer, leases__status=Lease.Status.SKIPPED)
        .order_by("leases__updated_at", "id")
    )
    return queryset.select_for_update(skip_locked=True, of=("self",), no_key=True).first()


def _candidates_held(*, project: Project, reviewer, blocked: list[str]) -> bool:
    """Whether the pick came back empty only because other transactions hold the candidates.

    A locked item may still have room when its holder is done (k > 1, or a skip gives a slot back),
    so "nothing left" would be wrong then. A plain read, without locks, tells the two apart."""
    if not connection.features.has_select_for_update_skip_locked:
        return False  # SQLite: assignments run one at a time, nothing is ever held
    return _eligible(project=project, reviewer=reviewer, blocked=blocked).exists()


_last_reap: dict[int, float] = {}


def _reap_due(project_id: int, now: float) -> bool:
    if now - _last_reap.get(project_id, 0.0) < REAP_EVERY_S:
        return False
    _last_reap[project_id] = now
    return True


def _take(*, item: Item, reviewer, now: datetime) -> Lease | None:
    """Lease a picked (locked) item to the reviewer; None when their other tab leased it a moment ago."""
    expires_at = now + timedelta(minutes=item.project.lease_minutes)
    own = getattr(item, "own_lease", None)
    lease = Lease.objects.get(pk=own) if own else None
    if lease is None:
        lease = Lease(project_id=item.project_id, item=item, reviewer=reviewer, display_order=_display_order(item))
    elif len(lease.display_order) != len(item.responses or []):
        lease.display_order = _display_order(item)
    lease.status = Lease.Status.ACTIVE
    lease.expires_at = expires_at
    lease.submitted_at = None
    # Uniqueness and the overlap cap are the database's job (constraint + trigger) under concurrency;
    # an item with no candidate responses has an empty display order, which is valid.
    lease.full_clean(exclude=LEASE_DB_CHECKED, validate_unique=False, validate_constraints=False)
    if lease.pk is None:
        # The one lease per (item, reviewer) is the unique constraint's to keep: a conflict inserts nothing.
        return rawsql.insert(lease, skip_conflict=True)
    lease.save()
    return lease


class Pick(Enum):
    LEASED = "leased"  # the reviewer has a new lease
    RACED = "raced"  # lost a race (cap trigger, the reviewer's other tab, a broken lock cycle): pick again
    EMPTY = "empty"  # nothing this reviewer may take right now


@dataclass(frozen=True)
class _Attempt:
    outcome: Pick
    lease: Lease | None = None


def _attempt(*, project: Project, reviewer, now: datetime, blocked: list[str]) -> _Attempt:
    """One pick and lease, in one transaction (or in the caller's, without a savepoint).

    Inside a caller's transaction (a submission's refill) there is no savepoint: the pick locks the
    item and re-checks its count under that lock, so the cap trigger has nothing to refuse, and a
    lease the reviewer took in another tab meanwhile is a conflict the insert skips (see ``_take``).
    Anything else fails the caller's transaction as a whole, which is then retried, never half-kept."""
    outermost = not connection.in_atomic_block
    try:
        with write_turn(), transaction.atomic(savepoint=False):
            if outermost:
                _commit_without_waiting_for_disk()
            item = _pick(project=project, reviewer=reviewer, blocked=blocked)
            if item is None:
                return _Attempt(Pick.EMPTY)
            item.project = project
            lease = _take(item=item, reviewer=reviewer, now=now)
            return _Attempt(Pick.LEASED, lease) if lease is not None else _Attempt(Pick.RACED)
    except IntegrityError:
        if not outermost:
            raise
        return _Attempt(Pick.RACED)  # the cap trigger fired, or another tab's lease
    except OperationalError as exc:
        if not outermost or getattr(exc.__cause__, "sqlstate", None) != _DEADLOCK:
            raise
        return _Attempt(Pick.RACED)  # PostgreSQL broke a lock cycle by failing this pick


def _attempt_while_held(*, project: Project, reviewer, now: datetime, blocked: list[str], until: float) -> _Attempt:
    """``_attempt``, repeated with short pauses while every candidate is locked by another assignment."""
    pauses = iter(_HELD_PAUSES_S)
    while True:
        attempt = _attempt(project=project, reviewer=reviewer, now=now, blocked=blocked)
        if (
            attempt.outcome is not Pick.EMPTY
            or time.monotonic() >= until
            or not _candidates_held(project=project, reviewer=reviewer, blocked=blocked)
        ):
            return attempt
        time.sleep(next(pauses, _HELD_PAUSES_S[-1]) * random.uniform(0.5, 1.5))


def lease_next_for_reviewer(
    *, project: Project, reviewer, now: datetime | None = None, wait_for_held: bool = True
) -> Lease | None:
    """Lease the best item for this reviewer (closest to completion, skipped ones last); None when none is left.

    With ``wait_for_held`` it keeps looking for a few seconds while every candidate is locked by
    another reviewer's assignment; a caller whose transaction already holds a picked item passes
    False (it only wants a prefetch, and two such callers would wait on each other)."""
    now = now or timezone.now()
    # Stale leases are reaped in their own transaction, at most every few seconds per process, so the
    # item rows their trigger touched are unlocked before the pick runs; an empty pick reaps at once.
    reaped = _reap_due(project.pk, now.timestamp())
    if reaped:
        lease_expire_stale(project=project, now=now)
    blocked = _blocked_kinds(project)
    until = time.monotonic() + (HELD_WAIT_S if wait_for_held else 0.0)
    for _ in range(PICK_ATTEMPTS):
        attempt = _attempt_while_held(project=project, reviewer=reviewer, now=now, blocked=blocked, until=until)
        if attempt.outcome is Pick.LEASED:
            return attempt.lease
        if attempt.outcome is Pick.EMPTY:
            # Stale leases may be holding the last slots: reap them (committed) and pick once more.
            if reaped or not lease_expire_stale(project=project, now=now):
                return None
            reaped = True
    return None


def lease_and_queue_locked(
    *, lease_id: int, reviewer, project: Project, now: datetime
) -> tuple[Lease | None, list[Lease]]:
    """A lease of the reviewer's in the project with its item, and their other unexpired active leases there,
    locked in one read (None when the lease is not theirs in this project).

    The refill after a submission needs those leases anyway; reading them with the submitted one saves
    a round trip. Locking a reviewer's own leases in one stable order keeps two of their tabs from
    deadlocking each other."""
    target, others = None, []
    for lease in selectors.leases_load(
        *queue_sql.lease_and_queue_locked(lease_id=lease_id, reviewer_id=reviewer.pk, project_id=project.pk, now=now)
    ):
        lease.project = lease.item.project = project
        if lease.pk == lease_id:
            target = lease
        else:
            others.append(lease)
    return target, others


def lease_fill_for_reviewer(
    *, project: Project, reviewer, depth: int = PREFETCH_DEPTH, active: list[Lease] | None = None
) -> list[Lease]:
    """Top the reviewer's active leases up to ``depth`` (current + prefetched) and return them, oldest first.

    ``active``: those leases when the caller has just read them (otherwise they are read here).
    Called outside a transaction, each new lease commits on its own, so no lock is held across picks."""
    now = timezone.now()
    if active is None:
        active = selectors.leases_active_for_reviewer(project=project, reviewer=reviewer, now=now)
    leases = list(active)
    in_transaction = connection.in_atomic_block
    while len(leases) < depth:
        # Inside a caller's transaction each new lease keeps its item locked until the end: only the
        # first pick may wait for held candidates, so two such fills never wait on each other.
        wait_for_held = not (in_transaction and len(leases) > len(active))
        lease = lease_next_for_reviewer(project=project, reviewer=reviewer, now=now, wait_for_held=wait_for_held)
        if lease is None:
            break
        leases.append(lease)
    return leases


@transaction.atomic
def _lease_change(*, lease_id: int, to: str, allowed: tuple, refusal: str, **lookup) -> Lease:
    """Move one lease (locked) to state ``to`` if its state is one of ``allowed``; else ``refusal``, formatted."""
    lease = Lease.objects.select_for_update(of=("self",)).select_related("item").get(pk=lease_id, **lookup)
    if lease.status not in allowed:
        raise ValidationError(refusal.format(lease=lease))
    lease.status = to
    lease.save(update_fields=["status", "updated_at"])
    return lease


def lease_skip(*, lease_id: int, reviewer) -> Lease:
    """Put an item back for this reviewer only: it returns to them after everything else."""
    try:
        return _lease_change(
            lease_id=lease_id,
            reviewer=reviewer,
            to=Lease.Status.SKIPPED,
            allowed=(Lease.Status.ACTIVE,),
            refusal="This item is {lease.status}, not on your screen: there is nothing to skip.",
        )
    except Lease.DoesNotExist:
        raise ValidationError("This item is not leased to you: reload the queue to get your current item.") from None


def lease_release(*, lease: Lease) -> Lease:
    """Give a lease's slot back so its reviewer can review the item again (their annotation gets a new revision)."""
    return _lease_change(
        lease_id=lease.pk,
        to=Lease.Status.RELEASED,
        allowed=LIVE,
        refusal="Only an active or submitted lease can be released; this one is {lease.status}.",
    )


def lease_expire(*, lease_id: int, project: Project) -> Lease:
    """End an active lease now (admin), so the item goes back into the queue; ``Lease.DoesNotExist`` if not in it."""
    return _lease_change(
        lease_id=lease_id,
        project=project,
        to=Lease.Status.EXPIRED,
        allowed=(Lease.Status.ACTIVE,),
        refusal="Lease {lease.pk} is {lease.status}, not active: there is nothing to expire.",
    )


@transaction.atomic
def lease_reassign(*, lease_id: int, project: Project, to_reviewer) -> Lease:
    """Move an active lease to another member (admin); the old holder loses it, the item keeps its slot count."""
    lease = (
        Lease.objects.select_for_update(of=("self",)).select_related("item__project").get(pk=lease_id, project=project)
    )
    if lease.status != Lease.Status.ACTIVE:
        raise ValidationError(f"Lease {lease.pk} is {lease.status}: only an active lease can be reassigned.")
    if to_reviewer.pk == lease.reviewer_id:
        raise ValidationError(f"{to_reviewer.get_username()} already holds this lease: choose someone else.")
    if not project.members.filter(pk=to_reviewer.pk).exists():
        raise ValidationError(f"{to_reviewer.get_username()} is not a member of {project.name}: add them first.")
    if Lease.objects.filter(item=lease.item, reviewer=to_reviewer, status__in=LIVE).exists():
        raise ValidationError(
            f"{to_reviewer.get_username()} already has item {lease.item_id} (active or submitted): "
            "a reviewer reviews an item once."
        )
    lease.status = Lease.Status.EXPIRED
    lease.save(update_fields=["status", "updated_at"])
    item = lease.item
    # Their earlier lease on the item (expired, released or skipped), if any, is the row to reuse.
    item.own_lease = Lease.objects.filter(item=item, reviewer=to_reviewer).values_list("id", flat=True).first()
    return _take(item=item, reviewer=to_reviewer, now=timezone.now())
