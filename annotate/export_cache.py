"""Each item's annotation-export line, kept built ahead of time (PostgreSQL only).

Building an item's JSON line (``annotate/export_sql.py``) costs the database 70-110 µs of CPU: its result,
its annotations with their revisions and reviewers, its adjudications, each an index probe. Exporting then
ran at a few thousand items a second whatever Python did. So the lines are built ahead, by the worker,
and the export reads them back as text: ``ExportLine`` holds each item's line as last built.

**Never stale.** Whoever changes what a line shows (the queue, an adjudication, the admin, a shell, raw
SQL), a trigger adds the item to ``ExportLineChange`` in the same transaction. The export serves a stored
line only when no change of its item is visible to it; any other item's line it builds on the spot, as it
did before there were stored lines. The triggers only ever INSERT into a table without a unique key, so
writers never wait on each other or on the worker, and cannot deadlock through it.

**Refreshing** (``refresh``, the worker, every minute from Celery beat): read the next page of changes (by
change id), read every change of the items they name, build those items' lines in a later statement, store
them, then delete exactly the changes it read, all in one READ COMMITTED transaction. A change committed
after the build's snapshot is not among those read, so it stays and keeps its item's line from being
served. An item deleted while its line is built cannot leave the line behind: the line's foreign key
cascades on delete, and storing a line for an item that is gone fails (the page is read again). One
refresh runs at a time (a session advisory lock). Nothing scans for items without a line: a new item is a
change like any other (the migration that made the table recorded every item there was).

What changes a line: a new item, the item's exported columns, its result, its annotations and their
revisions, its adjudications, and a reviewer's or adjudicator's username (the line names them).
"""

from __future__ import annotations

import logging
import time

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.utils import IntegrityError

from annotate.exports import ITEM_COLUMNS as EXPORT_COLUMNS
from annotate.models import Adjudication, Annotation, AnnotationRevision, ExportLine, ExportLineChange, Item, ItemResult
from config.sqltext import column as _col
from config.sqltext import ident

log = logging.getLogger(__name__)

# The item's own columns a line shows (the export's, less the id and the result's): an UPDATE of any other
# (the queue's review count, the calibration flag) leaves the line as it is.
ITEM_COLUMNS = tuple(c for c in EXPORT_COLUMNS if c != "id" and "__" not in c)
# Items per refresh transaction, and how long one run of the worker's refresh may go on.
REFRESH_PAGE = 2000
REFRESH_BUDGET_S = 50.0
# A key for pg_try_advisory_lock: one refresh at a time per database.
REFRESH_LOCK = 0x60_1D_5E_7E


def _table(model) -> str:
    return ident(model._meta.db_table)


def _changes_from(rows: str, model) -> str:
    """SELECT of the item ids touched by the rows of transition table ``rows`` of ``model``."""
    if model is AnnotationRevision:
        return (
            f"SELECT a.{_col(Annotation, 'item')} FROM {rows} r JOIN {_table(Annotation)} a"
            f" ON a.{_col(Annotation, 'id')} = r.{_col(AnnotationRevision, 'annotation')}"
        )
    return f"SELECT r.{_col(model, 'item')} FROM {rows} r"


def trigger_sql() -> list[str]:
    """The statements that install the change triggers (run by the owner, in a migration)."""
    change = f"{_table(ExportLineChange)} ({_col(ExportLineChange, 'item_id')})"
    statements = []
    for model in (ItemResult, Annotation, AnnotationRevision, Adjudication):
        table, name = _table(model), model._meta.db_table
        function = ident(f"{name}_export_changed")
        # One statement-level trigger per event: transition tables cannot serve several events, and a bulk
        # write (an import's COPY, a recount) adds its changes in one INSERT rather than one per row.
        statements.append(
            f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO {change} SELECT DISTINCT * FROM ({_changes_from("new_rows", model)}) touched;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO {change} SELECT DISTINCT * FROM ({_changes_from("old_rows", model)}) touched;
  END IF;
  RETURN NULL;
END $$;
"""
        )
        for event, referencing in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
        ):
            trigger = ident(f"{name}_export_{event.lower()}")
            statements += [
                f"DROP TRIGGER IF EXISTS {trigger} ON {table};",
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {referencing}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {function}();",
            ]
    # The item itself, and a renamed user (every item they reviewed or adjudicated names them): edits of
    # one row at a time. The columns are compared in the function body, not in a WHEN clause or an
    # ``UPDATE OF`` list, which would forbid later migrations from altering those columns' types.
    columns = [_col(Item, field) for field in ITEM_COLUMNS]
    differs = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
    user = get_user_model()
    username, user_id = _col(user, user.USERNAME_FIELD), ident(user._meta.pk.column)
    statements += [
        f"""
CREATE OR REPLACE FUNCTION annotate_item_export_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF {differs} THEN
    INSERT INTO {change} VALUES (NEW.{_col(Item, "id")});
  END IF;
  RETURN NULL;
END $$;
""",
        f"""
CREATE OR REPLACE FUNCTION annotate_item_export_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {change} SELECT {_col(Item, "id")} FROM new_rows;
  RETURN NULL;
END $$;
""",
        f"DROP TRIGGER IF EXISTS annotate_item_export_insert ON {_table(Item)};",
        f"CREATE TRIGGER annotate_item_export_insert AFTER INSERT ON {_table(Item)} REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION annotate_item_export_added();",
        f"DROP TRIGGER IF EXISTS annotate_item_export_update ON {_table(Item)};",
        f"CREATE TRIGGER annotate_item_export_update AFTER UPDATE ON {_table(Item)}"
        " FOR EACH ROW EXECUTE FUNCTION annotate_item_export_changed();",
        f"""
CREATE OR REPLACE FUNCTION annotate_user_export_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.{username} IS DISTINCT FROM NEW.{username} THEN
    INSERT INTO {change}
      SELECT {_col(Annotation, "item")} FROM {_table(Annotation)} WHERE {_col(Annotation, "reviewer")} = NEW.{user_id}
      UNION SELECT {_col(Adjudication, "item")} FROM {_table(Adjudication)}
        WHERE {_col(Adjudication, "adjudicator")} = NEW.{user_id};
  END IF;
  RETURN NULL;
END $$;
""",
        f"DROP TRIGGER IF EXISTS annotate_user_export_update ON {_table(user)};",
        f"CREATE TRIGGER annotate_user_export_update AFTER UPDATE ON {_table(user)}"
        " FOR EACH ROW EXECUTE FUNCTION annotate_user_export_changed();",
    ]
    # Every item there is now gets its line built by the first refresh.
    statements.append(f"INSERT INTO {change} SELECT {_col(Item, 'id')} FROM {_table(Item)};")
    # A line goes with its item, whoever deletes the item.
    statements.append(
        f"ALTER TABLE {_table(ExportLine)} ADD CONSTRAINT annotate_exportline_item_fk"
        f" FOREIGN KEY ({_col(ExportLine, 'item_id')}) REFERENCES {_table(Item)} ({_col(Item, 'id')})"
        " ON DELETE CASCADE;"
    )
    return statements


def drop_sql() -> list[str]:
    user = get_user_model()
    statements = [f"DROP TRIGGER IF EXISTS annotate_user_export_update ON {_table(user)};"]
    statements.append(f"DROP TRIGGER IF EXISTS annotate_item_export_update ON {_table(Item)};")
    statements.append(f"DROP TRIGGER IF EXISTS annotate_item_export_insert ON {_table(Item)};")
    for model in (ItemResult, Annotation, AnnotationRevision, Adjudication):
        for event in ("insert", "update", "delete"):
            trigger = ident(f"{model._meta.db_table}_export_{event}")
            statements.append(f"DROP TRIGGER IF EXISTS {trigger} ON {_table(model)};")
        statements.append(f"DROP FUNCTION IF EXISTS {ident(f'{model._meta.db_table}_export_changed')}();")
    statements += [
        "DROP FUNCTION IF EXISTS annotate_item_export_changed();",
        "DROP FUNCTION IF EXISTS annotate_item_export_added();",
        "DROP FUNCTION IF EXISTS annotate_user_export_changed();",
        f"ALTER TABLE {_table(ExportLine)} DROP CONSTRAINT IF EXISTS annotate_exportline_item_fk;",
    ]
    return statements


# --- reading ----------------------------------------------------------------------------------------


def page_of_stored_lines(cursor, page: QuerySet) -> list[tuple[int, bytes | str | None]]:
    """``(item id, line)`` for each item of ``page`` (a sliced queryset of items' ids in order), in one
    statement: the stored line, or None where there is none or a visible change has outdated it."""
    sql, params = page.values_list("id").query.sql_with_params()
    key, text, changed = _col(ExportLine, "item_id"), _col(ExportLine, "line"), _col(ExportLineChange, "item_id")
    cursor.execute(
        f"SELECT p.id, CASE WHEN EXISTS (SELECT 1 FROM {_table(ExportLineChange)} c WHERE c.{changed} = p.id)"
        f" THEN NULL ELSE l.{text} END FROM ({sql}) p LEFT JOIN {_table(ExportLine)} l ON l.{key} = p.id"
        " ORDER BY p.id",
        params,
    )
    return cursor.fetchall()


# --- refreshing -------------------------------------------------------------------------------------


def _refresh_page(cursor, after: int, size: int) -> tuple[int, int] | None:
    """Build and store the lines of the items named by the next ``size`` changes after change id ``after``;
    return (the last change id read, items built), or None when there was no change."""
    from annotate.export_sql import page_sql

    change, line = _table(ExportLineChange), _table(ExportLine)
    changed = _col(ExportLineChange, "item_id")
    key, text, built_at = (_col(ExportLine, f) for f in ("item_id", "line", "built_at"))
    cursor.execute("SET LOCAL jit = off")
    # Keyset on the change id: a primary-key range scan that never walks again what a page deleted.
    cursor.execute(f"SELECT id, {changed} FROM {change} WHERE id > %s ORDER BY id LIMIT %s", [after, size])
    head = cursor.fetchall()
    if not head:
        return None
    ids = sorted({item_id for _, item_id in head})
    # Every change of these items visible now (later ones too: the item is built once, not once per change);
    # all of them are older than the build's snapshot below.
    cursor.execute(f"SELECT id FROM {change} WHERE {changed} = ANY(%s)", [ids])
    change_ids = [row[0] for row in cursor.fetchall()]
    # A later statement: its snapshot holds every change just read, and maybe more.
    cursor.execute(
        f"INSERT INTO {line} ({key}, {text}, {built_at}) SELECT built.*, now() FROM ({page_sql()}) built"
        f" ON CONFLICT ({key}) DO UPDATE SET {text} = EXCLUDED.{text}, {built_at} = EXCLUDED.{built_at}",
        {"ids": ids},
    )
    cursor.execute(f"DELETE FROM {change} WHERE id = ANY(%s)", [change_ids])
    return head[-1][0], len(ids)


def refresh(*, budget_s: float | None = REFRESH_BUDGET_S, page: int = REFRESH_PAGE) -> dict:
    """Build the lines of the items with changes, a page per transaction, until none is left or the budget
    is spent. Returns what it did; ``"skipped": True`` when another refresh holds the lock."""
    if connection.vendor != "postgresql":
        return {"pages": 0, "items": 0, "skipped": True}
    started = time.monotonic()
    pages = items = failed = 0
    after = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [REFRESH_LOCK])
        if not cursor.fetchone()[0]:
            return {"pages": 0, "items": 0, "skipped": True}
        try:
            while budget_s is None or time.monotonic() - started < budget_s:
                try:
                    with transaction.atomic():
                        done = _refresh_page(cursor, after, page)
                except IntegrityError:
                    # An item of the page was deleted while its line was built: the page is read again,
                    # without it.
                    failed += 1
                    log.info("export lines: an item went away during a refresh page; reading the page again")
                    if failed > 3:
                        break
                    continue
                if done is None:
                    break
                after, built = done
                pages, items = pages + 1, items + built
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [REFRESH_LOCK])
    return {"pages": pages, "items": items, "skipped": False, "seconds": round(time.monotonic() - started, 3)}
