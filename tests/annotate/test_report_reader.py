"""The agreement report's reader: rows streamed in chunks, coded in SQL exactly as the Python rules code them."""

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections

from annotate import report_reader
from annotate.models import AgreementReport, Annotation, Item, Project
from annotate.reports import report_build, report_rubric_version
from annotate.services.projects import project_add_members
from tests.annotate import report_dataset
from tests.annotate.report_reference import report_build_reference
from tests.factories import annotate, make_item, pref

N_BOOT, SEED = 50, 11


@pytest.fixture
def six(project):
    users = get_user_model()
    extra = [users.objects.create_user(username=n, password="pw") for n in ("dave", "erin", "frank")]
    project_add_members(project=project, users=extra)
    return [users.objects.get(username=n) for n in ("alice", "bob", "carol")] + extra


@pytest.fixture
def v2(project, admin_user):
    return report_dataset._version(project, report_dataset.V2_CRITERIA, "active", admin_user)


def same_as_orm_reader(project, version=None) -> None:
    report = report_build(project=project, rubric_version=version, n_boot=N_BOOT, seed=SEED)
    report.pop("generated_at")
    expected = report_build_reference(
        project=project,
        version=report_rubric_version(project=project, rubric_version=version),
        n_boot=N_BOOT,
        seed=SEED,
    )
    assert report == expected


def test_a_larger_random_project_is_reported_as_the_orm_reader_did(project, six, v2):
    report_dataset.build_random(project, v2, six, items=240, seed=5, exotic="tie-free")
    assert Annotation.objects.filter(item__project=project).count() > 600
    same_as_orm_reader(project)


@pytest.mark.postgres
def test_sql_codes_every_row_as_the_python_rules_do(project, six, v2):
    """Every field the SQL computes, row by row, against the Python rules applied to the ORM's payloads."""
    report_dataset.build_random(project, v2, six, items=300, seed=9, exotic="any")
    data = report_reader.read(project=project, version=v2, max_similarity_pairs=2000)
    rows = data.rows
    assert 0 < data.coded_in_python < rows.n / 2  # both paths are exercised

    coder = report_reader.RowCoder(
        criteria=v2.criteria,
        version_id=v2.pk,
        preference=report_reader.Labels(report_reader.PREFERENCE_LABELS),
        gold=report_reader.Labels(report_reader.GOLD_LABELS),
    )
    orm = {
        (a.item_id, a.reviewer_id): a
        for a in Annotation.objects.filter(item__project=project, item__is_calibration=False)
    }
    assert rows.n == len(orm)

    def label(k: int) -> str | None:
        kind = rows.flags[k] & 3
        if kind == 1:
            p = int(rows.pcat[k])
            return (
                f"response:{int(rows.chosen[k])}" if p == report_reader.RESPONSE_CHOSEN else rows.preference_labels[p]
            )
        if kind == 0:
            return rows.gold_labels[int(rows.gcat[k])]
        return None

    for k in range(rows.n):
        a = orm[int(rows.item[k]), int(rows.reviewer[k])]
        expected = coder.code(a.kind, a.rubric_version_id, a.payload, a.display_order)
        assert int(rows.day[k]) == int(a.updated_at.timestamp() // 86400)
        got = {"flags": int(rows.flags[k]), "scores": [int(x) for x in rows.scores[:, k]], "label": label(k)}
        want = {"flags": expected.flags, "scores": expected.scores or [-1] * 4, "label": None}
        if a.kind == "preference":
            got["olen"], want["olen"] = int(rows.olen[k]), expected.olen
            if expected.flags & report_reader.RESPONSE:  # the indices are read for responses only
                got |= {"chosen": int(rows.chosen[k]), "rejected": int(rows.rejected[k])}
                want |= {"chosen": expected.chosen, "rejected": expected.rejected}
            want["label"] = coder.preference.names[expected.pcat]
        elif a.kind == "gold":
            want["label"] = coder.gold.names[expected.gcat]
        assert got == want, (a.payload, a.display_order)


def test_progress_moves_while_the_rows_are_read(project, monkeypatch):
    report_dataset.build(project)
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 40)
    seen = []
    report_build(project=project, n_boot=0, progress=lambda f, stage: seen.append((f, stage)))
    reading = [(f, s) for f, s in seen if s.startswith("Reading annotations (")]
    assert len(reading) >= 7
    fractions = [f for f, _ in reading]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1] <= 0.6
    assert reading[-1][1].startswith("Reading annotations (302 ")


@pytest.mark.postgres
def test_the_rows_come_a_part_at_a_time(project, monkeypatch):
    """Rubric reviews in slices of the item ids, one query each; the other kinds through a server-side cursor."""
    report_dataset.build(project)
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 60)
    slices, cursors = [], []
    fetch = report_reader._fetch_slice

    def fetch_slice(raw, sql, params):
        slices.append((params["lo"], params["hi"]))
        return fetch(raw, sql, params)

    def progress(fraction, stage):
        if stage.startswith("Reading annotations ("):
            with connection.cursor() as cursor:
                cursor.execute("SELECT name, is_holdable FROM pg_cursors")
                cursors.append(cursor.fetchall())

    monkeypatch.setattr(report_reader, "_fetch_slice", fetch_slice)
    report_build(project=project, n_boot=0, progress=progress)
    ids = sorted(Item.objects.filter(project=project, is_calibration=False).values_list("id", flat=True))
    assert len(slices) >= 3
    assert slices[0][0] == ids[0] and slices[-1][1] == ids[-1] + 1
    assert all(hi == next_lo for (_, hi), (next_lo, _) in zip(slices, slices[1:], strict=False))
    assert any(("agreement_report_rows", False) in open_now for open_now in cursors)


@pytest.mark.django_db(transaction=True)
def test_a_workers_progress_is_visible_to_the_page_while_it_reads(project, monkeypatch):
    """Outside a transaction (a worker) the reads hold no transaction on the connection progress is written on."""
    report_dataset.build(project)
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 60)
    row = AgreementReport.objects.create(project=project, fingerprint="x", status=AgreementReport.Status.RUNNING)
    page = connections.create_connection("default")
    seen = []

    def progress(fraction, stage):
        if not stage.startswith("Reading annotations ("):
            return
        AgreementReport.objects.filter(pk=row.pk).update(progress=fraction)
        with page.cursor() as cursor:
            cursor.execute(f"SELECT progress FROM {AgreementReport._meta.db_table} WHERE id = %s", [row.pk])
            seen.append((fraction, cursor.fetchone()[0]))

    try:
        report_build(project=project, n_boot=0, progress=progress)
    finally:
        page.close()
    assert len(seen) >= 5
    assert all(written == visible for written, visible in seen)


@pytest.mark.postgres
def test_the_arrays_grow_when_the_row_estimate_is_low(project, monkeypatch):
    made = report_dataset.build(project)
    monkeypatch.setattr(report_reader, "_estimate", lambda cursor, statement: 1)
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 7)
    same_as_orm_reader(project)
    same_as_orm_reader(project, made["v1"])


@pytest.mark.parametrize("fetch_rows", [65536, 40])
def test_a_kind_the_project_no_longer_lists_is_still_reported(project, monkeypatch, fetch_rows):
    """Its rows come with the rubric slices, whose items they share the count of, and are read again as packed rows."""
    monkeypatch.setattr(report_reader, "FETCH_ROWS", fetch_rows)
    report_dataset.build(project)
    Project.objects.filter(pk=project.pk).update(task_kinds=["rubric"])
    project.refresh_from_db()
    same_as_orm_reader(project)


def test_preference_categories_that_sort_level_are_ordered_by_name(project, alice, bob, carol):
    for chosen in (0, None, "x"):
        item = make_item(project, "preference")
        annotate(item, alice, pref(chosen=chosen, rejected=1))
        annotate(item, bob, pref(chosen=chosen, rejected=1))
        annotate(item, carol, pref(chosen=1, rejected=0))
    report = report_build(project=project, n_boot=0)
    labels = report["sections"][0]["variables"][0]["labels"]
    assert labels == ["response:0", "response:None", "response:x", "response:1"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_reads_one_snapshot_of_the_project(project, alice, bob, monkeypatch):
    item = make_item(project, "preference")
    annotate(item, alice, pref(chosen=0, rejected=1))
    odd = annotate(item, bob, pref(chosen="1", rejected=0))  # coded in Python: read a second time
    for _ in range(30):
        other = make_item(project, "preference")
        annotate(other, alice, pref(chosen=1, rejected=0))
        annotate(other, bob, pref(chosen=1, rejected=0))
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 10)
    writer = connections.create_connection("default")
    changed = []

    def progress(fraction, stage):
        if stage.startswith("Reading annotations (") and not changed:
            with writer.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {Annotation._meta.db_table} SET payload = %s WHERE id = %s",
                    ['{"choice": "tie", "chosen": null, "rejected": null}', odd.pk],
                )
            changed.append(True)

    try:
        report = report_build(project=project, n_boot=0, progress=progress)
    finally:
        writer.close()
    assert changed
    labels = report["sections"][0]["variables"][0]["labels"]
    assert "tie" not in labels and "response:1" in labels
    assert Annotation.objects.get(pk=odd.pk).payload["choice"] == "tie"


def test_scores_as_sent_by_a_form_or_as_floats_find_their_level():
    lookup = report_reader.score_lookup(
        {"key": "k", "name": "K", "scale": "ordinal", "levels": [{"value": v} for v in (3, 1, 2)]}
    )[2]
    assert [report_reader.score_code(lookup, v) for v in (1, "2", 3.0, True, 7, None, [1], "x")] == [
        0,
        1,
        2,
        0,
        -1,
        -1,
        -1,
        -1,
    ]
    assert np.iinfo(np.int32).min == report_reader.NONE


@pytest.mark.django_db(transaction=True)
def test_a_worker_reads_exactly_the_projects_annotations_whether_or_not_its_items_fill_their_id_range(
    project, six, v2, admin_user
):
    """Items of one project in a run of ids are read without the join; interleaved ones with it."""
    from annotate.services.projects import project_create

    other = project_create(name="Other", slug="other", task_kinds=["gold", "preference", "rubric"])
    other_v2 = report_dataset._version(other, report_dataset.V2_CRITERIA, "active", admin_user)
    report_dataset.build_random(project, v2, six, items=60, seed=1, exotic="tie-free")
    for k in range(2):  # now interleave: the other project's items inside this project's id range
        report_dataset.build_random(other, other_v2, six, items=9, seed=10 + k, exotic="tie-free")
        report_dataset.build_random(project, v2, six, items=9, seed=20 + k, exotic="tie-free")
    alone = project_create(name="Alone", slug="alone", task_kinds=["gold", "preference", "rubric"])
    alone_v2 = report_dataset._version(alone, report_dataset.V2_CRITERIA, "active", admin_user)
    report_dataset.build_random(alone, alone_v2, six, items=60, seed=3, exotic="tie-free")
    with connection.cursor() as cursor:
        assert not report_reader._item_bounds(cursor, project).only_ours
        assert report_reader._item_bounds(cursor, alone).only_ours
    for p in (project, other, alone):
        same_as_orm_reader(p)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_workers_two_connections_read_one_snapshot(project, six, v2, monkeypatch):
    """The helper connection reads its slices in the reader's snapshot: a change committed after the reader's
    snapshot was taken, before the helper connected, is in neither's rows."""
    report_dataset.build_random(project, v2, six, items=120, seed=3, exotic=None)
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 40)
    before = report_build(project=project, n_boot=0)
    bounds, fetch, used = report_reader._item_bounds, report_reader._fetch_slice, set()
    writer = connections.create_connection("default")

    def item_bounds(cursor, project):  # runs in the reader's snapshot, before the helper connects
        with writer.cursor() as other:
            other.execute(
                f"UPDATE {Annotation._meta.db_table} SET payload = jsonb_set(payload, '{{scores}}', '{{}}')"
                " WHERE kind = 'rubric'"
            )
        return bounds(cursor, project)

    def fetch_slice(raw, sql, params):
        used.add(id(raw))
        return fetch(raw, sql, params)

    monkeypatch.setattr(report_reader, "_item_bounds", item_bounds)
    monkeypatch.setattr(report_reader, "_fetch_slice", fetch_slice)
    try:
        during = report_build(project=project, n_boot=0)
    finally:
        writer.close()
    monkeypatch.setattr(report_reader, "_item_bounds", bounds)
    monkeypatch.setattr(report_reader, "_fetch_slice", fetch)
    after = report_build(project=project, n_boot=0)
    assert len(used) == 2  # the reader's connection and the helper
    for report in (before, during, after):
        report.pop("generated_at")
    assert during == before
    assert after != before


def read_with_sink(project, version):
    chunks = []
    data = report_reader.read(project=project, version=version, max_similarity_pairs=2000, rubric=chunks.append)
    return data, chunks


@pytest.mark.postgres
def test_a_rubric_sink_is_handed_the_reviews_a_run_of_items_at_a_time_in_item_order(project, six, v2, monkeypatch):
    report_dataset.build_random(project, v2, six, items=150, seed=4, exotic="tie-free")
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 50)
    data, chunks = read_with_sink(project, v2)
    ours = Annotation.objects.filter(item__project=project, item__is_calibration=False)
    rubric = ours.filter(kind="rubric").count()
    assert len(chunks) >= 4 and max(len(c) for c in chunks) < rubric / 2
    keys = [(int(i), int(r)) for c in chunks for i, r in zip(c.item, c.reviewer, strict=True)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == rubric  # every review once, in order
    assert not np.any(data.rows.kind == report_reader.KIND_CODE["rubric"])  # none of them kept in the rows
    assert data.rows.n == ours.count() - rubric
    assert data.n_annotations == ours.count()
    assert data.n_items == ours.values("item").distinct().count()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_workers_slices_reach_the_report_in_item_order_when_a_lane_falls_behind(project, six, v2, monkeypatch):
    """Two connections read alternate slices; the first one's slow start must not reorder the sums."""
    import time

    report_dataset.build_random(project, v2, six, items=150, seed=6, exotic="tie-free")
    monkeypatch.setattr(report_reader, "FETCH_ROWS", 50)
    fetch, calls = report_reader._fetch_slice, []

    def fetch_slice(raw, sql, params):
        calls.append(params["lo"])
        if len(calls) == 1:
            time.sleep(0.5)  # the other lane reads ahead meanwhile
        return fetch(raw, sql, params)

    monkeypatch.setattr(report_reader, "_fetch_slice", fetch_slice)
    data, chunks = read_with_sink(project, v2)
    firsts = [int(c.item[0]) for c in chunks if len(c)]
    assert calls != sorted(calls) and firsts == sorted(firsts)
    same_as_orm_reader(project)
