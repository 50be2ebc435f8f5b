"""Stored export lines (annotate/export_cache.py) are never served stale: whatever changes what an item's
line shows, by whichever path, the export gives what the Python records give, before and after the worker
has refreshed the lines; a change committed while a refresh is building keeps its item's line from being
served; a deleted item takes its line with it."""

import json
import threading
import time

import pytest
from django.db import DatabaseError, connection, connections, transaction

from annotate import export_cache
from annotate.export_sql import export_lines, page_sql
from annotate.exports import ExportFilter, export_records
from annotate.models import (
    Adjudication,
    Annotation,
    AnnotationRevision,
    ExportLine,
    ExportLineChange,
    Item,
    ItemResult,
)
from annotate.services.adjudication import adjudication_record
from annotate.services.annotations import annotation_undo_last
from tests import factories

pytestmark = [pytest.mark.postgres]


def _reviewed(project, alice, bob, judge):
    pair = factories.make_item(project, "preference", prompt="Refund for order 17?")
    for user, choice in ((alice, "1"), (bob, "2")):
        factories.submit(factories.lease_for(project, user, display_order=[0, 1]), choice=choice)
    adjudication_record(
        item=pair, adjudicator=judge, payload={"choice": "response", "chosen": 0, "rejected": 1}, reason="policy"
    )
    gold = factories.make_item(project, "gold", prompt="Reset my password")
    for user in (alice, bob):
        factories.submit(factories.lease_for(project, user, display_order=[1, 0]), action="accept", source="1")
    factories.make_item(project, "gold", prompt="Nobody reviewed this")
    return pair, gold


def _export(project) -> list[dict]:
    return [json.loads(line) for line in export_lines(ExportFilter().items(project), 2)]


def _python(project) -> list[dict]:
    return list(export_records(project=project))


def _built(ids) -> dict[int, dict]:
    with connection.cursor() as cursor:
        cursor.execute(page_sql(), {"ids": sorted(ids)})
        return {item_id: json.loads(line) for item_id, line in cursor.fetchall()}


def _stored() -> dict[int, dict]:
    return {item_id: json.loads(line) for item_id, line in ExportLine.objects.values_list("item_id", "line")}


@pytest.fixture
def reviewed(db, project, alice, bob, judge):
    pair, gold = _reviewed(project, alice, bob, judge)
    return project, pair, gold


@pytest.mark.django_db
def test_the_export_serves_the_stored_lines_once_refreshed(reviewed):
    project, pair, _ = reviewed
    assert ExportLine.objects.count() == 0
    assert _export(project) == _python(project)  # nothing stored yet: every line built on the spot
    done = export_cache.refresh()
    assert done["items"] == 3 and not done["skipped"]
    assert not ExportLineChange.objects.exists()
    assert _stored() == _built(_stored())
    assert _export(project) == _python(project)
    # It is the stored line that is served: one altered behind the export's back shows.
    record = json.loads(ExportLine.objects.get(item_id=pair.pk).line)
    ExportLine.objects.filter(item_id=pair.pk).update(line=json.dumps({**record, "prompt": "from the store"}))
    assert [r["prompt"] for r in _export(project)][0] == "from the store"


def _revise(project, pair, gold, alice, bob, judge, carol, django_user_model):
    factories.revise(pair, alice, choice="2", rationale="changed my mind")


def _new_review(project, pair, gold, alice, bob, judge, carol, django_user_model):
    lease = factories.lease_for(project, carol, display_order=[1, 0])
    values = {"choice": "tie"} if lease.item.kind == "preference" else {"action": "accept", "source": "1"}
    factories.submit(lease, **values)


def _adjudicate(project, pair, gold, alice, bob, judge, carol, django_user_model):
    answer = {"action": "write", "answer": "Use the link."}
    adjudication_record(item=gold, adjudicator=judge, payload=answer, reason="r")


def _undo(project, pair, gold, alice, bob, judge, carol, django_user_model):
    # bob's last submission (gold) is undone: its revision and its annotation are deleted.
    annotation_undo_last(project=project, reviewer=bob)


def _new_item(project, pair, gold, alice, bob, judge, carol, django_user_model):
    factories.make_item(project, "gold", prompt="Imported after the last refresh")


def _edit_item(project, pair, gold, alice, bob, judge, carol, django_user_model):
    item = Item.objects.get(pk=gold.pk)
    item.metadata = {"source": "edited"}
    item.save()


def _edit_items_in_bulk(project, pair, gold, alice, bob, judge, carol, django_user_model):
    Item.objects.filter(project=project).update(split="eval")


def _rename_reviewer(project, pair, gold, alice, bob, judge, carol, django_user_model):
    user = django_user_model.objects.get(pk=alice.pk)
    user.username = "alice-renamed"
    user.save()


def _rename_adjudicator(project, pair, gold, alice, bob, judge, carol, django_user_model):
    django_user_model.objects.filter(pk=judge.pk).update(username="judge-renamed")


def _result(project, pair, gold, alice, bob, judge, carol, django_user_model):
    ItemResult.objects.filter(item=gold).update(agreement=0.25)


def _raw_revision(project, pair, gold, alice, bob, judge, carol, django_user_model):
    with connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {AnnotationRevision._meta.db_table} SET payload = \'{{"choice": "tie"}}\'::jsonb '
            f"WHERE annotation_id IN (SELECT id FROM {Annotation._meta.db_table} WHERE item_id = %s)",
            [pair.pk],
        )


def _drop_adjudication(project, pair, gold, alice, bob, judge, carol, django_user_model):
    Adjudication.objects.filter(item=pair).delete()


CHANGES = [
    _new_item,
    _revise,
    _new_review,
    _adjudicate,
    _undo,
    _edit_item,
    _edit_items_in_bulk,
    _rename_reviewer,
    _rename_adjudicator,
    _result,
    _raw_revision,
    _drop_adjudication,
]


@pytest.mark.django_db
@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_every_kind_of_change_outdates_the_stored_line(reviewed, alice, bob, judge, carol, django_user_model, change):
    project, pair, gold = reviewed
    export_cache.refresh()
    before = _export(project)
    change(project, pair, gold, alice, bob, judge, carol, django_user_model)
    after = _python(project)
    assert after != before, "the change must show in the export"
    assert ExportLineChange.objects.exists()
    assert _export(project) == after  # served before any refresh: the outdated line is not used
    export_cache.refresh()
    assert not ExportLineChange.objects.exists()
    assert _stored() == _built(_stored())
    assert set(_stored()) == set(Item.objects.values_list("id", flat=True))
    assert _export(project) == after


@pytest.mark.django_db
def test_what_a_line_does_not_show_does_not_outdate_it(reviewed, carol):
    project, pair, _ = reviewed
    export_cache.refresh()
    Item.objects.filter(project=project).update(is_calibration=True, unusable_reason="")
    factories.lease_for(project, carol)  # a lease moves the item's review count, which the line does not show
    assert not ExportLineChange.objects.exists()


@pytest.mark.django_db
def test_a_deleted_item_takes_its_line_whoever_deletes_it(reviewed):
    project, pair, gold = reviewed
    export_cache.refresh()
    assert ExportLine.objects.filter(item_id=gold.pk).exists()
    Item.objects.filter(pk=pair.pk).delete()  # the ORM, which knows nothing of the lines
    with connection.cursor() as cursor:  # raw SQL: the annotations first, then the item
        cursor.execute(f"DELETE FROM {AnnotationRevision._meta.db_table} WHERE annotation_id IN "
                       f"(SELECT id FROM {Annotation._meta.db_table} WHERE item_id = %s)", [gold.pk])  # fmt: skip
        for relation in Item._meta.related_objects:
            table, column = relation.related_model._meta.db_table, relation.field.column
            cursor.execute(f"DELETE FROM {table} WHERE {column} = %s", [gold.pk])
        cursor.execute(f"DELETE FROM {Item._meta.db_table} WHERE id = %s", [gold.pk])
    assert set(ExportLine.objects.values_list("item_id", flat=True)) == set(
        Item.objects.filter(project=project).values_list("id", flat=True)
    )
    assert _export(project) == _python(project)
    export_cache.refresh()  # the changes the deletes recorded name items that are gone
    assert not ExportLineChange.objects.exists()


def _slow_build(monkeypatch, seconds: float):
    """The refresh's build statement sleeps first: its snapshot is taken, its changes read."""
    import annotate.export_sql

    real = annotate.export_sql.page_sql

    def slow():
        return f"SELECT built.* FROM (SELECT pg_sleep({seconds})) pause, ({real()}) built"

    monkeypatch.setattr(annotate.export_sql, "page_sql", slow)


def _refresh_in_thread(budget_s=None) -> tuple[threading.Thread, dict]:
    """A refresh in another thread (its own connection), left 0.3 s to read its changes and start building."""
    out = {}

    def run():
        try:
            out.update(export_cache.refresh(budget_s=budget_s))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    return thread, out


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_during_a_refresh_keeps_the_line_from_being_served(project, alice, bob, judge, monkeypatch):
    pair, gold = _reviewed(project, alice, bob, judge)
    export_cache.refresh()
    factories.revise(pair, alice, choice="2")  # a change the next refresh reads
    _slow_build(monkeypatch, 1.5)
    thread, out = _refresh_in_thread(budget_s=0.5)  # one page: the next would read the change made now
    factories.revise(pair, bob, choice="1", rationale="while the line was being built")  # committed now
    thread.join()
    assert out["items"] == 1
    served = _export(project)
    assert served == _python(project)
    assert served[0]["annotations"][1]["revisions"][-1]["payload"]["rationale"] == "while the line was being built"
    assert ExportLineChange.objects.filter(item_id=pair.pk).exists()  # the later change is still pending
    monkeypatch.undo()
    export_cache.refresh()
    assert not ExportLineChange.objects.exists() and _stored() == _built(_stored())


@pytest.mark.django_db(transaction=True)
def test_an_item_deleted_during_a_refresh_leaves_no_line(project, alice, bob, judge, monkeypatch):
    pair, gold = _reviewed(project, alice, bob, judge)
    _slow_build(monkeypatch, 1.5)
    thread, out = _refresh_in_thread()
    Item.objects.filter(pk=gold.pk).delete()
    thread.join()
    assert out["skipped"] is False
    monkeypatch.undo()
    export_cache.refresh()
    kept = set(Item.objects.filter(project=project).values_list("id", flat=True))
    assert set(ExportLine.objects.values_list("item_id", flat=True)) == kept and gold.pk not in kept
    assert _export(project) == _python(project)


@pytest.mark.django_db(transaction=True)
def test_one_refresh_at_a_time(project, alice, bob, judge, monkeypatch):
    _reviewed(project, alice, bob, judge)
    _slow_build(monkeypatch, 1.0)
    thread, out = _refresh_in_thread()
    assert export_cache.refresh() == {"pages": 0, "items": 0, "skipped": True}
    thread.join()
    assert out["items"] == 3


@pytest.mark.django_db
def test_the_trainer_and_the_public_cannot_read_the_lines(reviewed):
    from config import dbroles

    export_cache.refresh()
    with connection.cursor() as cursor:
        for role in (dbroles.trainer_role(), "public"):
            for table in (ExportLine._meta.db_table, ExportLineChange._meta.db_table):
                cursor.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", [role, table])
                assert cursor.fetchone()[0] is False, (role, table)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "attack",
    [
        "ALTER TABLE annotate_annotation DISABLE TRIGGER USER",
        "ALTER TABLE annotate_annotation DISABLE TRIGGER annotate_annotation_export_update",
        "ALTER TABLE annotate_item DISABLE TRIGGER annotate_item_export_insert",
        "DROP TRIGGER annotate_itemresult_export_update ON annotate_itemresult",
        "CREATE OR REPLACE FUNCTION annotate_annotation_export_changed() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NULL; END $$",
        "ALTER TABLE annotate_exportline DROP CONSTRAINT annotate_exportline_item_fk",
        "SET session_replication_role = replica",
    ],
)
def test_the_app_role_cannot_switch_the_change_triggers_off(attack):
    """The roles that use the database cannot make a write go unrecorded (a stale line served) or a deleted
    item's line stay behind."""
    with pytest.raises(DatabaseError, match="must be owner|permission denied"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(attack)
