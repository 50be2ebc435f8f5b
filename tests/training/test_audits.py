"""Snapshot audits on real snapshots: findings, gates, acknowledgements, curation, the diff, the pages."""

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.urls import reverse

from annotate.models import Annotation, Item, ItemResult, Lease, Project
from tests.conftest import login
from tests.training.conftest import approve, make_item
from training import services
from training.audits import audit_finding_acknowledge, snapshot_audit_clearance
from training.curation import SnapshotFilters
from training.models import AuditAcknowledgement, SnapshotAudit, SnapshotCheck, SnapshotRecord
from training.selectors import snapshot_diff

pytestmark = pytest.mark.django_db

TOPICS = ["refund", "delivery", "password", "invoice", "exchange", "warranty", "coupon", "address"]


def _answer(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return f"For your {topic} question number {i}: open the account page, pick {topic}, and follow step {i % 7 + 2}."


@pytest.fixture
def support(project):
    """40 gold items answered by accepting a model's answer: 'swift' ends every answer with "Thanks!",
    'careful' never does; 10 preference pairs; a refund window stated as 30 days in eight answers and as 14
    days in four (all of them careful's)."""
    for i in range(40):
        model = "swift" if i % 2 else "careful"
        text = _answer(i)
        if i % 10 == 6:  # 6, 16, 26, 36
            text = "You can get a full refund within 14 days of delivery. " + text
        elif i % 4 == 0:  # 0, 4, 8, 12, 20, 24, 28, 32
            text = "You can get a full refund within 30 days of delivery. " + text
        text += " Thanks!" if model == "swift" else ""
        item = make_item(
            project,
            kind="gold",
            prompt=f"Customer {i} asks about {TOPICS[i % 8]}.",
            responses=[{"text": text, "model": model}],
        )
        approve(item, {"action": "accept", "answer": text, "source_index": 0, "reason": ""})
    for i in range(10):
        pair = make_item(
            project,
            kind="preference",
            prompt=f"Which reply to customer {100 + i}?",
            responses=[{"text": _answer(100 + i), "model": "careful"}, {"text": _answer(200 + i), "model": "swift"}],
            provenance="distilled",
        )
        approve(pair, {"choice": "response", "chosen": 0, "rejected": 1, "strength": None, "rationale": ""})
    return project


def _snapshot(project, admin_user, name="support v1", **filters):
    snapshot = services.snapshot_create(
        name=name, projects=[project], created_by=admin_user, filters=SnapshotFilters(**filters)
    )
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=[])
    return snapshot


def _finding(audit, kind):
    return next(f for f in audit.findings if f["type"] == kind)


def test_a_snapshot_is_audited_as_it_is_frozen_and_the_planted_sign_off_is_found_with_its_share(support, admin_user):
    snapshot = _snapshot(support, admin_user)
    audit = snapshot.audits.get()
    assert audit.status == "succeeded" and audit.finished_at
    thanks = _finding(audit, "recurring_closing")
    assert thanks["phrase"] == "thanks!" and thanks["count"] == 20
    assert thanks["share"] == pytest.approx(20 / 50, abs=1e-4)  # 20 of 40 gold answers + 10 pairs
    assert {row["source"]: row["share"] for row in thanks["by_source"]} == {"swift": 1.0}
    assert thanks["gate"] == "warn" and len(thanks["examples"]) == 8
    facts = _finding(audit, "conflicting_facts")
    assert [(v["value"], v["count"]) for v in facts["values"]] == [("30", 8), ("14", 4)]
    assert facts["gate"] == "block"  # a wrong fact blocks by default
    lineage = SnapshotRecord.objects.filter(snapshot=snapshot, kind="sft").first().lineage
    assert lineage["source"] in ("swift", "careful") and lineage["decided_by"] == "consensus"


def test_a_blocking_finding_stops_a_job_until_acknowledged_and_the_reason_goes_with_the_job(support, admin_user):
    snapshot = _snapshot(support, admin_user)
    audit = snapshot.audits.get()
    with pytest.raises(ValidationError, match="1 blocking audit finding") as refused:
        services.training_preflight_request(
            snapshot=snapshot, base_model="m", method="sft", config={}, created_by=admin_user
        )
    assert audit.get_absolute_url() in str(refused.value)  # says where to act
    with pytest.raises(ValidationError, match="Say why"):
        audit_finding_acknowledge(
            audit=audit, finding_key=_finding(audit, "conflicting_facts")["key"], reason=" ", acknowledged_by=admin_user
        )
    key = _finding(audit, "conflicting_facts")["key"]
    audit_finding_acknowledge(
        audit=audit, finding_key=key, reason="Fourteen days is the Black Friday window.", acknowledged_by=admin_user
    )
    with pytest.raises(ValidationError, match="only a blocking finding|already"):
        audit_finding_acknowledge(audit=audit, finding_key=key, reason="again", acknowledged_by=admin_user)
    clearance = snapshot_audit_clearance(snapshot)
    assert clearance["acknowledgements"][0]["reason"] == "Fourteen days is the Black Friday window."
    config = services.training_config_parse(method="sft", config={})
    job = services._job_insert(snapshot=snapshot, base_model="m", config=config, created_by=admin_user, preflight={})
    assert job.audit["id"] == audit.pk and job.audit["acknowledgements"][0]["by"] == admin_user.username
    from training.tasks import _provenance

    assert _provenance(job, snapshot, snapshot.checks.get())["audit"] == job.audit  # into the manifest


@pytest.mark.postgres
def test_an_acknowledgement_is_write_once_at_the_database(support, admin_user):
    from django.db import DatabaseError, connection, transaction

    audit = _snapshot(support, admin_user).audits.get()
    ack = audit_finding_acknowledge(
        audit=audit, finding_key=_finding(audit, "conflicting_facts")["key"], reason="ok", acknowledged_by=admin_user
    )
    for sql in ("UPDATE training_auditacknowledgement SET reason = 'x'", "DELETE FROM training_auditacknowledgement"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditAcknowledgement.objects.get(pk=ack.pk).reason == "ok"


def test_a_project_gate_can_make_a_finding_block_or_switch_it_off(support, admin_user):
    support.audit_gates = {
        "recurring_closing": {"action": "block", "min_share": 0.3},
        "conflicting_facts": {"action": "off", "min_share": 0},
    }
    support.save()
    audit = _snapshot(support, admin_user).audits.get()
    assert _finding(audit, "recurring_closing")["gate"] == "block"
    assert not [f for f in audit.findings if f["type"] == "conflicting_facts"]
    assert audit.gates["recurring_closing"] == {"action": "block", "min_share": 0.3}


def test_excluding_a_finding_makes_a_snapshot_without_its_examples_and_its_audit_comes_back_clean(support, admin_user):
    first = _snapshot(support, admin_user)
    audit = first.audits.get()
    keys = [_finding(audit, "recurring_closing")["key"], _finding(audit, "conflicting_facts")["key"]]
    second = _snapshot(support, admin_user, name="support v2", exclude_findings=tuple((audit.pk, k) for k in keys))
    texts = [t for t in SnapshotRecord.objects.filter(snapshot=second).values_list("completion", flat=True) if t]
    assert len(texts) == 40 - 20 - 4 and not any(t.endswith("Thanks!") for t in texts)
    assert not any("within 14 days" in t for t in texts) and sum("within 30 days" in t for t in texts) == 8
    assert second.filters["excluded"] == {f"audit_finding:{keys[0]}": 20, f"audit_finding:{keys[1]}": 4}
    new_audit = second.audits.get()
    assert {f["type"] for f in new_audit.findings} & {"recurring_closing", "conflicting_facts"} == set()
    snapshot_audit_clearance(second)  # nothing blocks any more

    diff = snapshot_diff(first, second)
    assert diff["removed"]["count"] == 24 and diff["added"]["count"] == 0 and diff["changed"]["count"] == 0
    # (a phrase about the refund window may come back longer, now that all its answers say "30 days")
    assert {f["type"] for f in diff["findings_gone"]} >= {"recurring_closing", "conflicting_facts"}
    assert diff["removed"]["provenances"] == {"human": 24} and diff["removed"]["kinds"] == {"sft": 24}


def test_lineage_filters_choose_what_a_snapshot_takes(support, admin_user):
    adjudicated = list(ItemResult.objects.order_by("item_id").values_list("pk", flat=True)[::10])
    ItemResult.objects.filter(pk__in=adjudicated).update(status="adjudicated")
    ItemResult.objects.filter(item__prompt__startswith="Customer 1").update(agreement=0.5)
    only_adjudicated = _snapshot(support, admin_user, name="adjudicated", adjudicated_only=True)
    assert only_adjudicated.sft_count + only_adjudicated.dpo_count == len(adjudicated) == 5
    agreed = _snapshot(support, admin_user, name="agreed", min_agreement=0.9)
    low = ItemResult.objects.filter(agreement=0.5).count()
    assert agreed.sft_count + agreed.dpo_count == 50 - low
    distilled = _snapshot(support, admin_user, name="distilled", provenances=("distilled",))
    assert (distilled.sft_count, distilled.dpo_count) == (0, 10)
    gold = _snapshot(support, admin_user, name="gold", kinds=("gold",))
    assert (gold.sft_count, gold.dpo_count) == (40, 0)
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    ItemResult.objects.update(decided_at=datetime.datetime.now(datetime.UTC))
    with pytest.raises(ValidationError, match="passes the filters"):
        _snapshot(support, admin_user, name="future", decided_from=tomorrow)
    picked = Item.objects.filter(kind="gold").order_by("pk").values_list("pk", flat=True)[:3]
    by_hand = _snapshot(support, admin_user, name="picked", exclude_items=tuple(picked))
    assert by_hand.sft_count == 37 and by_hand.filters["excluded"] == {"picked": 3}


def test_items_a_contamination_check_flagged_can_be_left_out(support, admin_user):
    first = _snapshot(support, admin_user)
    flagged = list(SnapshotRecord.objects.filter(snapshot=first).order_by("position")[:2])
    check = SnapshotCheck.objects.create(
        snapshot=first, passed=False, threshold=0.5, report={"offending_train_record_ids": [r.pk for r in flagged]}
    )
    second = _snapshot(support, admin_user, name="clean", exclude_contaminated_by=check.pk)
    assert second.sft_count + second.dpo_count == 48 and second.filters["excluded"] == {"contaminated": 2}
    assert not SnapshotRecord.objects.filter(
        snapshot=second, source_item_id__in=[r.source_item_id for r in flagged]
    ).exists()


def test_a_findings_items_can_be_sent_back_to_review_or_marked_unusable(client, support, admin_user, alice, bob):
    audit = _snapshot(support, admin_user).audits.get()
    key = _finding(audit, "conflicting_facts")["key"]
    wrong = Item.objects.filter(prompt__in=[f"Customer {i} asks about {TOPICS[i % 8]}." for i in (6, 16, 26, 36)])
    for item in wrong[:2]:
        for reviewer in (alice, bob):
            Lease.objects.create(
                project=support,
                item=item,
                reviewer=reviewer,
                status="submitted",
                expires_at=datetime.datetime.now(datetime.UTC),
                display_order=[0],
            )
    login(client, admin_user)
    url = reverse("training:audit-finding-action", args=[audit.pk])
    response = client.post(url, {"finding": key, "action": "send_back", "note": "Check the refund window: 30 days."})
    assert response.status_code == 302
    assert set(ItemResult.objects.filter(item__in=wrong).values_list("status", flat=True)) == {"pending"}
    assert not Lease.objects.filter(item__in=wrong, status__in=["active", "submitted"]).exists()
    assert all(i.metadata["review_note"] == "Check the refund window: 30 days." for i in wrong)
    client.post(url, {"finding": key, "action": "mark_unusable", "note": "Wrong policy stated."})
    assert set(Item.objects.filter(pk__in=[i.pk for i in wrong]).values_list("unusable_reason", flat=True)) == {
        "Wrong policy stated."
    }
    approve_again = ItemResult.objects.filter(item__in=wrong)
    approve_again.update(status="consensus", payload={"action": "write", "answer": "x", "source_index": None})
    snapshot = _snapshot(support, admin_user, name="after")
    assert snapshot.filters["skipped"]["marked_unusable"] == 4
    assert not Annotation.objects.exists()  # nothing was written on the reviewers' behalf


def test_the_audit_and_snapshot_pages_show_the_findings_and_where_to_act(client, support, admin_user, alice):
    snapshot = _snapshot(support, admin_user)
    audit = snapshot.audits.get()
    login(client, admin_user)
    page = client.get(reverse("training:snapshot-detail", args=[snapshot.pk])).content.decode()
    assert audit.get_absolute_url() in page and reverse("evalsets:snapshot-contamination", args=[snapshot.pk]) in page
    assert "1 blocking audit finding" in page  # why it cannot train, with the link
    body = client.get(audit.get_absolute_url()).content.decode()
    assert "40% of answers end with “thanks!”" in body and "<b>swift</b> 100% of its 20 answers" in body
    assert "Acknowledge" in body
    # Values are listed for the contradiction only (a finding without them shows none, not empty rows).
    assert body.count("Values stated") == 1 and "<b>30</b> in 8 answer(s), <b>14</b> in 4 answer(s)" in body
    assert "New snapshot without these examples" in body
    form = client.get(reverse("training:snapshot-list") + f"?from={snapshot.pk}&exclude=x").content.decode()
    assert "Leave out every example of these findings" in form and "thanks!" in form
    report = client.get(audit.get_absolute_url() + "?format=json").json()
    assert {f["key"] for f in report["findings"]} == {f["key"] for f in audit.findings}
    assert login(client, alice).get(audit.get_absolute_url()).status_code == 403


@override_settings(GOLDSET_AUDIT_INLINE_MAX=10)
def test_a_large_snapshot_is_audited_by_a_worker_behind_a_progress_bar(
    client, support, admin_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        snapshot = _snapshot(support, admin_user)
    audit = snapshot.audits.get()
    assert audit.status == "queued" and len(callbacks) == 1
    login(client, admin_user)
    html = client.get(audit.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()
    assert 'role="progressbar"' in html and 'hx-trigger="every 1s"' in html
    with pytest.raises(ValidationError, match="waiting for a worker"):
        snapshot_audit_clearance(snapshot)
    from training.tasks import snapshot_audit_run_task

    snapshot_audit_run_task(audit.pk)
    snapshot_audit_run_task(audit.pk)  # a redelivered message finds it claimed and does nothing
    audit.refresh_from_db()
    assert audit.status == "succeeded" and audit.progress == 1.0
    final = client.get(audit.get_absolute_url(), HTTP_HX_REQUEST="true")
    assert final.status_code == 286 and "every 1s" not in final.content.decode()
    assert SnapshotAudit.objects.count() == 1


def test_the_audit_reads_each_record_as_the_snapshot_wrote_it(support, admin_user, monkeypatch):
    """The audit's own read (SQL on PostgreSQL, paged) gives the same records as the snapshot's rows do through
    ``audit_record``: prompts of several turns joined line by line, DPO pairs, lineage, across page boundaries."""
    from training import audits
    from training.curation import audit_record

    make_item(
        support,
        kind="gold",
        prompt="",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Line one\nline two"},
            {"role": "assistant", "content": "Earlier answer."},
            {"role": "user", "content": "And now?"},
        ],
        responses=[{"text": "Now this.", "model": "careful"}],
    )
    item = Item.objects.get(responses__0__text="Now this.")
    approve(item, {"action": "accept", "answer": "Now this.", "source_index": 0, "reason": ""})
    snapshot = _snapshot(support, admin_user)
    monkeypatch.setattr(audits, "READ_CHUNK", 7)  # pages end mid-snapshot
    read = list(audits._records(snapshot))
    rows = SnapshotRecord.objects.filter(snapshot=snapshot).order_by("position").values()
    expected = [audit_record(row, record_id=row["id"]) for row in rows]
    assert len(read) == len(expected) == 51
    assert read == expected
    multi = next(r for r in read if r.target == "Now this.")
    assert multi.prompt.count("\n") == 4 and multi.prompt.startswith("system: Be brief.\nuser: Line one\nline two")


def test_responses_scored_under_a_rubric_version_join_a_snapshot_when_they_reach_its_bar(project, admin_user):
    """Rubric-scored responses become SFT examples only when asked for, by version, above the bar of every
    scaled criterion (nominal ones do not count); the snapshot says how many fell short."""
    from annotate.models import Rubric, RubricVersion

    rubric = Rubric.objects.create(project=project, name="Support quality")
    criteria = [
        {"key": "helpful", "name": "Helpful", "scale": "ordinal", "levels": [{"value": v} for v in (1, 2, 3, 4, 5)]},
        {"key": "safe", "name": "Safe", "scale": "binary", "levels": []},
        {"key": "tone", "name": "Tone", "scale": "nominal", "levels": [{"value": "warm"}, {"value": "dry"}]},
    ]
    old = RubricVersion.objects.create(rubric=rubric, number=1, status="retired", criteria=criteria)
    current = RubricVersion.objects.create(rubric=rubric, number=2, status="active", criteria=criteria)
    scored = {}
    for name, helpful, safe, version in [
        ("top", 5, True, current),
        ("good", 4, True, current),
        ("unsafe", 5, False, current),
        ("old", 5, True, old),
    ]:
        reply = [{"text": f"The {name} reply.", "model": "m"}]
        item = make_item(project, kind="rubric", prompt=f"Rate the {name} reply.", responses=reply)
        payload = {"response_index": 0, "scores": {"helpful": helpful, "safe": safe, "tone": "dry"}}
        ItemResult.objects.create(
            item=item, kind="rubric", status="consensus", payload=payload, agreement=1.0, rubric_version=version
        )
        scored[name] = item
    gold = make_item(project, kind="gold", prompt="Where is my parcel?")
    approve(gold, {"action": "write", "answer": "It is on its way.", "source_index": None, "reason": ""})

    def completions(**filters):
        chosen = SnapshotFilters(**filters)
        snapshot = services.snapshot_create(
            name=str(filters), projects=[project], created_by=admin_user, filters=chosen, audit=False
        )
        return snapshot, sorted(SnapshotRecord.objects.filter(snapshot=snapshot).values_list("completion", flat=True))

    _, without = completions()
    assert without == ["It is on its way."]  # rubric items stay out unless a version is chosen
    snapshot, at_top = completions(rubric_version=current.pk)
    assert at_top == ["It is on its way.", "The top reply."]
    skipped = snapshot.filters["skipped"]
    assert skipped["below_rubric_bar"] == 2 and skipped["other_rubric_version"] == 1
    _, at_75 = completions(rubric_version=current.pk, rubric_min=0.75, kinds=("rubric",))
    assert at_75 == ["The good reply.", "The top reply."]
    record = SnapshotRecord.objects.filter(completion="The good reply.").first()
    assert record.source_item_id == scored["good"].pk and record.lineage["source"] == "m"

    other = Project.objects.create(name="Other", slug="other", task_kinds=["gold"])
    with pytest.raises(ValidationError, match="rubric version"):
        services.snapshot_create(
            name="x", projects=[other], created_by=admin_user, filters=SnapshotFilters(rubric_version=current.pk)
        )


@pytest.mark.django_db(transaction=True)
def test_a_committed_snapshot_is_read_ahead_on_a_second_connection_with_the_same_records(
    support, admin_user, monkeypatch
):
    """Outside a transaction the worker reads the next page on a thread while it audits this one: the records,
    their order and the audit are those of the read in line, and a failure in the reader reaches the audit."""
    from django.db import connection

    from training import audits

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: the read ahead is PostgreSQL's path (set DATABASE_URL=postgres://...)")
    snapshot = _snapshot(support, admin_user)
    monkeypatch.setattr(audits, "READ_CHUNK", 7)  # pages end mid-snapshot
    assert not connection.in_atomic_block
    ahead = [record for page in audits._read_ahead(snapshot) for record in page]
    assert ahead == list(audits._records(snapshot)) and len(ahead) == 50
    audit = audits.snapshot_audit_request(snapshot=snapshot, created_by=admin_user)
    assert audit.status == "succeeded" and _finding(audit, "recurring_closing")["share"] == 0.4  # swift's 20 of 50

    def broken(snapshot):
        yield from []
        raise RuntimeError("the page could not be read")

    monkeypatch.setattr(audits, "_pages", broken)
    with pytest.raises(RuntimeError, match="could not be read"):
        list(audits._read_ahead(snapshot))
    monkeypatch.setattr(audits, "_pages", lambda snapshot: iter([[1], [2], [3], [4]]))
    pages = audits._read_ahead(snapshot)
    assert next(pages) == [1]
    pages.close()  # the auditing side stops early: the reader stops too, nothing hangs


@pytest.mark.django_db(transaction=True)
def test_a_large_committed_snapshot_has_its_text_detectors_run_by_a_second_process_with_the_same_report(
    support, admin_user, settings
):
    from django.db import connection

    from training import audits

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: the second process reads the committed snapshot (set DATABASE_URL=postgres://...)")
    snapshot = _snapshot(support, admin_user)
    settings.GOLDSET_AUDIT_PROCESS_MIN = 10**9
    # As the worker runs it: outside any transaction.
    alone = audits.snapshot_audit_run(audit_id=SnapshotAudit.objects.create(snapshot=snapshot).pk)
    settings.GOLDSET_AUDIT_PROCESS_MIN = 1
    started = []
    real_start = audits._TextDetectors.start.__func__

    def start(cls, snapshot, total):
        started.append(real_start(cls, snapshot, total))
        return started[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audits._TextDetectors, "start", classmethod(start))
        both = audits.snapshot_audit_run(audit_id=SnapshotAudit.objects.create(snapshot=snapshot).pk)
    assert alone.status == both.status == "succeeded"
    assert started and started[0] is not None and started[0].proc.returncode == 0
    drop = {"audited_at"}
    assert {k: v for k, v in both.report.items() if k not in drop} == {
        k: v for k, v in alone.report.items() if k not in drop
    }
    types = {f["type"] for f in both.findings}
    assert {"recurring_closing", "conflicting_facts"} <= types  # one from each process's detectors


def test_a_count_known_within_a_bound_shows_its_bound_on_the_audit_page(client, support, admin_user):
    snapshot = _snapshot(support, admin_user)
    audit = snapshot.audits.get()
    report = dict(audit.report)
    closing = _finding(audit, "recurring_closing")
    report["findings"] = [
        {**f, "count_error": 12, "share_error": 0.0003} if f["key"] == closing["key"] else f for f in report["findings"]
    ]
    SnapshotAudit.objects.filter(pk=audit.pk).update(report=report)
    body = login(client, admin_user).get(audit.get_absolute_url()).content.decode()
    assert f"{closing['count']} <span" in body and "± 12</span>" in body
    assert body.count("± ") == 1  # exact counts show none
