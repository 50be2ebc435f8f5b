"""The annotation export's JSON lines, built by PostgreSQL (``annotate.exports.export_jsonl`` uses it there).

Building each record in Python (decode every JSON column, make dicts, encode them again) held the export
to a few thousand records a second; here the database writes the line and Python only joins them. Each
page is one statement over a page of item ids that the ORM chose (so the filters are the ORM's, written
once in ``ExportFilter``): the item, its result, its annotations with their revisions and reviewer, its
adjudications. The lines parse to exactly the records ``export_records`` makes, key for key
(tests/annotate/test_export_sql.py checks every field); only the spacing of the JSON differs.

The export itself mostly reads these lines stored: the worker builds them ahead and triggers record what
outdates them (``annotate/export_cache.py``); ``export_lines`` builds here only the lines of a page that
are missing or outdated.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import QuerySet
from psycopg.adapt import Loader

from annotate.models import Adjudication, Annotation, AnnotationRevision, Item, ItemResult


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _col(model, field: str, alias: str) -> str:
    return f"{alias}.{_q(model._meta.get_field(field).column)}"


def _iso(expression: str) -> str:
    """A timestamptz as Python's ``datetime.isoformat()`` writes an aware UTC one: six digits of fraction, none
    when it is zero (PostgreSQL's own JSON form trims the fraction's trailing zeros)."""
    return f"replace(to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US+00:00'), '.000000+', '+')"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "json_build_object(" + ", ".join(f"'{key}', {value}" for key, value in pairs) + ")"


@cache
def page_sql() -> str:
    """The statement for one page: ``%(ids)s`` (the page's item ids, ascending) in, ``(id, line)`` rows out."""
    user = get_user_model()
    username = _q(user._meta.get_field(user.USERNAME_FIELD).column)
    users, user_pk = _q(user._meta.db_table), _q(user._meta.pk.column)
    i, r, a, v, d = "i", "r", "a", "v", "d"

    def item(field):
        return _col(Item, field, i)

    def result(field):
        return _col(ItemResult, field, r)

    def ann(field):
        return _col(Annotation, field, a)

    def rev(field):
        return _col(AnnotationRevision, field, v)

    def adj(field):
        return _col(Adjudication, field, d)

    revision = _object(
        [
            ("number", rev("number")),
            ("payload", rev("payload")),
            ("rubric_version_id", rev("rubric_version")),
            ("created_at", _iso(rev("created_at"))),
        ]
    )
    # Correlated subqueries, each an index probe by its parent's id: the plan cannot turn into a scan of a
    # whole table per page, whatever the planner's statistics say (a set-based form did, on fresh data).
    revisions = (
        f"SELECT json_agg({revision} ORDER BY {rev('number')}) FROM {_q(AnnotationRevision._meta.db_table)} {v}"
        f" WHERE {rev('annotation')} = {ann('id')}"
    )
    annotation = _object(
        [
            ("reviewer", f"u.{username}"),
            ("revision", ann("revision")),
            ("payload", ann("payload")),
            ("rubric_version_id", ann("rubric_version")),
            ("display_order", ann("display_order")),
            ("duration_ms", ann("duration_ms")),
            ("created_at", _iso(ann("created_at"))),
            ("updated_at", _iso(ann("updated_at"))),
            ("revisions", f"coalesce(({revisions}), '[]'::json)"),
        ]
    )
    annotations = (
        f"SELECT json_agg({annotation} ORDER BY {ann('reviewer')}, {ann('id')})"
        f" FROM {_q(Annotation._meta.db_table)} {a} JOIN {users} u ON u.{user_pk} = {ann('reviewer')}"
        f" WHERE {ann('item')} = {item('id')}"
    )
    adjudication = _object(
        [
            ("adjudicator", f"u.{username}"),
            ("payload", adj("payload")),
            ("reason", adj("reason")),
            ("created_at", _iso(adj("created_at"))),
        ]
    )
    adjudications = (
        f"SELECT json_agg({adjudication} ORDER BY {adj('created_at')}, {adj('id')})"
        f" FROM {_q(Adjudication._meta.db_table)} {d} JOIN {users} u ON u.{user_pk} = {adj('adjudicator')}"
        f" WHERE {adj('item')} = {item('id')}"
    )
    result_row = f"SELECT * FROM {_q(ItemResult._meta.db_table)} {r} WHERE {result('item')} = {item('id')}"
    result_object = _object(
        [
            ("status", result("status")),
            ("payload", result("payload")),
            ("agreement", result("agreement")),
            ("reviewer_ids", result("reviewer_ids")),
            ("rubric_version_id", result("rubric_version")),
            ("decided_at", _iso(result("decided_at"))),
            ("updated_at", _iso(result("updated_at"))),
        ]
    )
    record = _object(
        [
            ("item_id", item("id")),
            ("kind", item("kind")),
            ("split", item("split")),
            ("provenance", item("provenance")),
            ("prompt", item("prompt")),
            ("messages", item("messages")),
            ("responses", item("responses")),
            ("metadata", item("metadata")),
            ("import_batch_id", item("import_batch")),
            ("source_line", item("source_line")),
            ("is_check", item("is_check")),
            ("created_at", _iso(item("created_at"))),
            ("state", f"coalesce({result('status')}, 'unreviewed')"),
            ("result", f"CASE WHEN {result('id')} IS NULL THEN NULL ELSE {result_object} END"),
            ("annotations", f"coalesce(({annotations}), '[]'::json)"),
            ("adjudications", f"coalesce(({adjudications}), '[]'::json)"),
        ]
    )
    return (
        f"SELECT {item('id')}, {record}::text FROM {_q(Item._meta.db_table)} {i}"
        f" LEFT JOIN LATERAL ({result_row}) {r} ON true"
        f" WHERE {item('id')} = ANY(%(ids)s) ORDER BY {item('id')}"
    )


class _Bytes(Loader):
    """Text as the bytes PostgreSQL sent: the lines go out as they came in, never decoded."""

    def load(self, data) -> bytes:
        return bytes(data)


def export_lines(items: QuerySet, size: int) -> Iterator[bytes]:
    """One JSON line per item of ``items`` (a queryset of items, filters applied), in id order: a page of
    ``size`` items per statement, each item's stored line where no change has outdated it
    (``annotate/export_cache.py``), the others built here."""
    from annotate.export_cache import page_of_stored_lines

    sql = page_sql()
    after = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.cursor.adapters.register_loader("text", _Bytes)
            # Walk the (project, id) index in order and stop at the page's end. Right after a bulk load, before
            # autovacuum has analyzed the items, the planner expects a few rows and would rather fetch every
            # remaining item of the project and sort them, for each page: 0.2 s a page at 1M items.
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
            rows = page_of_stored_lines(cursor, items.filter(id__gt=after).order_by("id")[:size])
            if not rows:
                return
            outdated = [item_id for item_id, line in rows if line is None]
            if outdated:
                # The planner's estimate for the nested aggregates can be huge; compiling them (JIT) then
                # costs more than running them, on every page.
                cursor.execute("SET LOCAL jit = off")
                cursor.execute(sql, {"ids": outdated})
                built = dict(cursor.fetchall())
                rows = [(item_id, line if line is not None else built.get(item_id)) for item_id, line in rows]
        for _, line in rows:
            if line is not None:  # None: an item deleted since its page was chosen
                yield line
        after = rows[-1][0]
