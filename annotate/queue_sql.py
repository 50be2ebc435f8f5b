"""The review queue's hand-written SQL, all of it, in one place.

Only statements that run on every queue request are written out: compiling the equivalent querysets
cost more CPU than running them. Parameters are named (``%(reviewer)s``) next to their placeholders,
table and column names come from the models' ``_meta`` (a renamed field cannot drift), rows load
through ``config.rawsql`` into instances exactly as the ORM would (``tests/test_rawsql.py`` compares
every field), and writes prepare values with the model fields as ``save()`` does. The models written
here have no ``save()`` override and no signal receiver that such a write would skip:
``tests/test_rawsql.py`` fails if one gains either.

Each function returns ``(sql, params)``; the services run them. A statement's text depends only on the
database vendor and its shape (``@statement``), so it is assembled once and reused: building it from
``_meta`` on every request was a measurable share of the queue's CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache, wraps

from django.db import connection
from django.db.models import Model

from annotate.models import Annotation, AnnotationRevision, Item, ItemResult, Lease, Project
from config import rawsql

# Models the queue writes with these statements (see the module docstring).
RAW_WRITTEN_MODELS = (Lease, Annotation, AnnotationRevision, ItemResult)
# The order of a reviewer's active leases: the first is on screen, the next is prefetched behind it.
ACTIVE_LEASES_ORDER = " ORDER BY l.expires_at, l.id"
# Lease states in which a reviewer has seen an item (they are not given it again by a normal pick).
SEEN = ("active", "submitted", "skipped")


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def col(model: type[Model], field: str) -> str:
    """The quoted column of a model field, by field name."""
    return _col(model, field, connection.vendor)


@cache
def _col(model: type[Model], field: str, vendor: str) -> str:
    return _q(model._meta.get_field(field).column)


T = rawsql.table
cols = rawsql.columns


def statement(build: Callable[..., str]) -> Callable[..., str]:
    """Cache a statement's text by the connection's vendor and the (hashable) shape arguments."""
    by_vendor = cache(lambda vendor, *shape: build(*shape))

    @wraps(build)
    def text(*shape) -> str:
        return by_vendor(connection.vendor, *shape)

    return text


def _members() -> tuple[str, str, str]:
    """The project-members table and its project and user columns."""
    field = Project._meta.get_field("members")
    return T(field.remote_field.through), _q(field.m2m_column_name()), _q(field.m2m_reverse_name())


def _members_join(kind: str = "JOIN", *, on_user: bool = False) -> tuple[str, str]:
    """Projects ``p`` joined to their members ``m`` (only the user's row with ``on_user``), and the member column."""
    table, project_col, user_col = _members()
    join = f"{kind} {table} m ON m.{project_col} = p.id"
    if on_user:
        join += f" AND m.{user_col} = %(user)s"
    return join, f"m.{user_col}"


# --- Projects ---------------------------------------------------------------------------------------------


def project_of_member(*, user_id: int, slug: str) -> tuple[str, dict]:
    return _project_of_member(), {"slug": slug, "user": user_id}


@statement
def _project_of_member() -> str:
    join, member = _members_join()
    sql = f"SELECT {cols(Project, 'p')} FROM {T(Project)} p {join} WHERE p.{col(Project, 'slug')} = %(slug)s"
    return sql + f" AND {member} = %(user)s"


def project_and_queue(*, user_id: int, slug: str, now: datetime) -> tuple[str, dict]:
    """The project (for a member) with the member's unexpired active leases in it and their items, oldest first."""
    params = {"user": user_id, "active": Lease.Status.ACTIVE.value, "now": rawsql.param(now), "slug": slug}
    return _project_and_queue(), params


@statement
def _project_and_queue() -> str:
    join, member = _members_join()
    lease, item = col(Lease, "project"), col(Lease, "item")
    sql = (
        f"SELECT {cols(Project, 'p')}, {cols(Lease, 'l')}, {cols(Item, 'i')} FROM {T(Project)} p {join} "
        f"LEFT JOIN {T(Lease)} l ON l.{lease} = p.id AND l.{col(Lease, 'reviewer')} = %(user)s "
        f"AND l.{col(Lease, 'status')} = %(active)s AND l.{col(Lease, 'expires_at')} > %(now)s "
        f"LEFT JOIN {T(Item)} i ON i.id = l.{item} "
        f"WHERE p.{col(Project, 'slug')} = %(slug)s AND {member} = %(user)s{ACTIVE_LEASES_ORDER}"
    )
    return sql


def project_and_lease(*, user_id: int, slug: str, lease_id: int) -> tuple[str, dict]:
    """The project with one of the user's leases in it and its item, and whether the user is a member."""
    return _project_and_lease(), {"user": user_id, "slug": slug, "lease": lease_id}


@statement
def _project_and_lease() -> str:
    join, member = _members_join("LEFT JOIN", on_user=True)
    sql = (
        f"SELECT {cols(Project, 'p')}, {cols(Lease, 'l')}, {cols(Item, 'i')}, {member} IS NOT NULL "
        f"FROM {T(Project)} p JOIN {T(Lease)} l ON l.{col(Lease, 'project')} = p.id "
        f"JOIN {T(Item)} i ON i.id = l.{col(Lease, 'item')} {join} "
        f"WHERE p.{col(Project, 'slug')} = %(slug)s AND l.id = %(lease)s AND l.{col(Lease, 'reviewer')} = %(user)s"
    )
    return sql


# --- Leases -----------------------------------------------------------------------------------------------


def leases_with_items(where: str, *, order: str = "", lock: bool = False) -> str:
    """Leases matching ``where`` (over ``l``) with their items, in one statement; ``lock`` locks the leases."""
    sql = (
        f"SELECT {cols(Lease, 'l')}, {cols(Item, 'i')} FROM {T(Lease)} l "
        f"JOIN {T(Item)} i ON i.id = l.{col(Lease, 'item')} WHERE {where}{order}"
    )
    if lock:
        sql += rawsql.lock_clause("l")
    return sql


def leases_active(*, project_id: int, reviewer_id: int, now: datetime) -> tuple[str, dict]:
    """The reviewer's unexpired active leases in the project, oldest first."""
    params = {
        "project": project_id,
        "reviewer": reviewer_id,
        "active": Lease.Status.ACTIVE.value,
        "now": rawsql.param(now),
    }
    return _leases_active(), params


@statement
def _leases_active() -> str:
    where = (
        f"l.{col(Lease, 'project')} = %(project)s AND l.{col(Lease, 'reviewer')} = %(reviewer)s "
        f"AND l.{col(Lease, 'status')} = %(active)s AND l.{col(Lease, 'expires_at')} > %(now)s"
    )
    return leases_with_items(where, order=ACTIVE_LEASES_ORDER)


def lease_and_queue_locked(*, lease_id: int, reviewer_id: int, project_id: int, now: datetime) -> tuple[str, dict]:
    """A lease of the reviewer's and their other unexpired active leases in the project, locked, oldest first."""
    params = {
        "reviewer": reviewer_id,
        "project": project_id,
        "lease": lease_id,
        "active": Lease.Status.ACTIVE.value,
        "now": rawsql.param(now),
    }
    return _lease_and_queue_locked(), params


@statement
def _lease_and_queue_locked() -> str:
    where = (
        f"l.{col(Lease, 'reviewer')} = %(reviewer)s AND l.{col(Lease, 'project')} = %(project)s AND (l.id = %(lease)s "
        f"OR (l.{col(Lease, 'status')} = %(active)s AND l.{col(Lease, 'expires_at')} > %(now)s))"
    )
    return leases_with_items(where, order=ACTIVE_LEASES_ORDER, lock=True)


def pick(*, project: Project, reviewer_id: int, blocked: Sequence[str], partial: bool, window: int) -> tuple[str, dict]:
    """The next item for the reviewer among fresh (nobody's) or partly reviewed ones, locked when the database can.

    The shape is the one the indexes serve: ``review_count = 0 ORDER BY id`` reads the
    (project, review_count, id) index in order, with no sort. The reviewer's own lease on each
    candidate is a per-row lookup on the (item, reviewer) unique index: as ``NOT EXISTS`` the planner
    may choose an anti-join that reads all of the reviewer's leases for every candidate."""
    kinds = {f"blocked{i}": kind for i, kind in enumerate(blocked)}
    params = {"project": project.pk, "reviewer": reviewer_id, **kinds, **{f"seen{i}": s for i, s in enumerate(SEEN)}}
    if partial:
        params.update(k=project.overlap_k, window=window)
    return _pick(len(kinds), partial), params


@statement
def _pick(blocked: int, partial: bool) -> str:
    kinds = [f"blocked{i}" for i in range(blocked)]
    kind_filter = f" AND {{t}}.{col(Item, 'kind')} NOT IN ({', '.join(f'%({k})s' for k in kinds)})" if kinds else ""
    base = f"{{t}}.{col(Item, 'project')} = %(project)s AND NOT {{t}}.{col(Item, 'is_calibration')}" + kind_filter
    count = col(Item, "review_count")
    own = f"FROM {T(Lease)} ol WHERE ol.{col(Lease, 'item')} = i.id AND ol.{col(Lease, 'reviewer')} = %(reviewer)s"
    sql = (
        f"SELECT {cols(Item, 'i')}, (SELECT ol.id {own} LIMIT 1) AS own_lease FROM {T(Item)} i WHERE "
        + base.format(t="i")
        + f" AND COALESCE((SELECT ol.{col(Lease, 'status')} {own}), '') NOT IN (%(seen0)s, %(seen1)s, %(seen2)s)"
    )
    if partial:
        candidates = (
            f"SELECT w.id FROM {T(Item)} w WHERE "
            + base.format(t="w")
            + f" AND w.{count} >= 1 AND w.{count} < %(k)s ORDER BY w.{count} DESC, w.id LIMIT %(window)s"
        )
        sql += f" AND i.{count} >= 1 AND i.{count} < %(k)s AND i.id IN ({candidates}) ORDER BY i.{count} DESC, i.id"
    else:
        sql += f" AND i.{count} = 0 ORDER BY i.id"
    sql += " LIMIT 1"
    if connection.features.has_select_for_update_skip_locked:
        # NO KEY UPDATE: the pick must not conflict with the KEY SHARE locks that inserts referencing
        # the item (annotations, revisions, leases) hold until their transaction ends.
        sql += " FOR NO KEY UPDATE OF i SKIP LOCKED"
    return sql


# --- Writes of a submission ---------------------------------------------------------------------------------


def _named_values(obj: Model, fields, prefix: str, *, add: bool) -> dict:
    return {
        f"{prefix}{f.attname}": value for f, value in zip(fields, rawsql.prepared(obj, fields, add=add), strict=True)
    }


def _placeholders(fields, prefix: str) -> str:
    return ", ".join(f"%({prefix}{f.attname})s" for f in fields)


@cache
def _annotation_fields() -> tuple:
    return tuple(f for f in Annotation._meta.concrete_fields if not f.primary_key)


@cache
def _revision_fields() -> tuple:
    return tuple(f for f in AnnotationRevision._meta.concrete_fields if not f.primary_key)


def annotation_upsert(annotation: Annotation) -> tuple[str, dict]:
    """Create the reviewer's annotation of the item, or move it to its next revision; the row comes back."""
    return _annotation_upsert(), _named_values(annotation, _annotation_fields(), "a_", add=True)


@statement
def _annotation_upsert() -> str:
    fields = _annotation_fields()
    table = T(Annotation)
    kept = {"item", "reviewer", "created_at"}
    updates = ", ".join(
        f"{_q(f.column)} = {table}.{_q(f.column)} + 1"
        if f.name == "revision"
        else f"{_q(f.column)} = EXCLUDED.{_q(f.column)}"
        for f in fields
        if f.name not in kept
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(_q(f.column) for f in fields)}) VALUES ({_placeholders(fields, 'a_')}) "
        f"ON CONFLICT ({col(Annotation, 'item')}, {col(Annotation, 'reviewer')}) DO UPDATE SET {updates} "
        f"RETURNING {cols(Annotation, table)}"
    )
    return sql


def revision_from_upsert(revision: AnnotationRevision) -> tuple[str, dict]:
    """The revision INSERT fed by the annotation upsert's RETURNING row (``a``), for a WITH statement."""
    own = [f for f in _revision_fields() if f.name not in _REVISION_FED]
    return _revision_from_upsert(), _named_values(revision, own, "r_", add=True)


# Revision columns that the annotation upsert's RETURNING row supplies.
_REVISION_FED = {"annotation": "a.id", "number": "a.revision"}


@statement
def _revision_from_upsert() -> str:
    fed = _REVISION_FED
    fields = _revision_fields()
    # Cast: a parameter in a SELECT list has no type of its own for PostgreSQL to infer.
    values = [fed.get(f.name) or f"CAST(%(r_{f.attname})s AS {f.db_type(connection)})" for f in fields]
    sql = (
        f"INSERT INTO {T(AnnotationRevision)} ({', '.join(_q(f.column) for f in fields)}) "
        f"SELECT {', '.join(values)} FROM a"
    )
    return sql


def lease_submitted(lease: Lease) -> tuple[str, dict]:
    """Mark a lease submitted (status, submitted_at, updated_at as the lease holds them)."""
    return _lease_submitted(), {**_named_values(lease, _lease_submitted_fields(), "l_", add=False), "l_id": lease.pk}


@cache
def _lease_submitted_fields() -> tuple:
    return tuple(Lease._meta.get_field(name) for name in ("status", "submitted_at", "updated_at"))


@statement
def _lease_submitted() -> str:
    sets = ", ".join(f"{_q(f.column)} = %(l_{f.attname})s" for f in _lease_submitted_fields())
    return f"UPDATE {T(Lease)} SET {sets} WHERE id = %(l_id)s"


def item_result_lock(*, item: Item, now: datetime) -> tuple[str, dict]:
    """Create the item's result row if missing and lock it, returning the row.

    Rather than get_or_create: no savepoint to guard a racing insert (two first submissions of one
    item meet in ON CONFLICT, and the second waits for the first's commit), and no second read."""
    params = {
        "ir_item": item.pk,
        "ir_kind": item.kind,
        "ir_status": ItemResult.Status.PENDING.value,
        "ir_reviewers": "[]",
        "ir_now": rawsql.param(now),
    }
    return _item_result_lock(), params


@statement
def _item_result_lock() -> str:
    item_col = col(ItemResult, "item")
    table = T(ItemResult)
    sql = (
        f"INSERT INTO {table} ({item_col}, {col(ItemResult, 'kind')}, {col(ItemResult, 'status')}, "
        f"{col(ItemResult, 'reviewer_ids')}, {col(ItemResult, 'updated_at')}) "
        f"VALUES (%(ir_item)s, %(ir_kind)s, %(ir_status)s, %(ir_reviewers)s, %(ir_now)s) "
        f"ON CONFLICT ({item_col}) DO UPDATE SET {item_col} = EXCLUDED.{item_col} "
        f"RETURNING {cols(ItemResult, table)}"
    )
    return sql


def submission(
    *, lease: Lease | None, annotation: Annotation, revision: AnnotationRevision, item: Item, now: datetime
) -> tuple[str, dict]:
    """PostgreSQL: the lease update, the annotation upsert, its revision and the lock of the item's result row,
    as one statement returning the annotation row followed by the result row."""
    params = annotation_upsert(annotation)[1]
    params.update(revision_from_upsert(revision)[1])
    if lease is not None:
        params.update(lease_submitted(lease)[1])
    params.update(item_result_lock(item=item, now=now)[1])
    return _submission(lease is not None), params


@statement
def _submission(with_lease: bool) -> str:
    sql = f"WITH a AS ({_annotation_upsert()}), r AS ({_revision_from_upsert()})"
    if with_lease:
        sql += f", l AS ({_lease_submitted()})"
    return f"{sql}, ir AS ({_item_result_lock()}) SELECT a.*, ir.* FROM a, ir"


def annotations_of_item(*, item_id: int) -> tuple[str, dict]:
    """Every reviewer's current annotation of the item, by reviewer id."""
    return _annotations_of_item(), {"item": item_id}


@statement
def _annotations_of_item() -> str:
    return (
        f"SELECT {cols(Annotation, 'a')} FROM {T(Annotation)} a "
        f"WHERE a.{col(Annotation, 'item')} = %(item)s ORDER BY a.{col(Annotation, 'reviewer')}"
    )
