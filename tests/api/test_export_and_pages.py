"""The annotation export (API and page buttons) and the project pages that were only in the admin site."""

import csv
import io
import json

import pytest
from django.urls import reverse

from annotate.models import Adjudication, Annotation, ItemResult, Lease, Project
from annotate.services.adjudication import adjudication_record
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(project, alice, bob, judge):
    """A disputed preference item (alice revised once), then adjudicated; an agreed gold item; an untouched one."""
    pair = factories.make_item(project, "preference", prompt='=HYPERLINK("http://evil")')
    for user, order, choice in ((alice, [0, 1], "1"), (bob, [0, 1], "2")):
        factories.submit(factories.lease_for(project, user, display_order=order), choice=choice)
    factories.revise(pair, alice, choice="1", rationale="+1 sure")
    gold = factories.make_item(project, "gold")
    for user in (alice, bob):
        factories.submit(factories.lease_for(project, user, display_order=[0, 1]), action="accept", source="1")
    untouched = factories.make_item(project, "gold")
    return {"pair": pair, "gold": gold, "untouched": untouched}


def lines(response) -> list[dict]:
    return [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]


def test_the_export_has_every_annotation_with_revisions_consensus_and_adjudication(api_as, admin_user, judge, reviewed):
    pair = reviewed["pair"]
    assert ItemResult.objects.get(item=pair).status == "disputed"
    adjudication_record(
        item=pair, adjudicator=judge, payload={"choice": "response", "chosen": 0, "rejected": 1}, reason="Policy"
    )
    records = {r["item_id"]: r for r in lines(api_as(admin_user)("GET", "/projects/support/annotations/export"))}
    assert set(records) == {reviewed["pair"].pk, reviewed["gold"].pk, reviewed["untouched"].pk}
    exported = records[pair.pk]
    assert exported["state"] == "adjudicated" and exported["result"]["status"] == "adjudicated"
    by_reviewer = {a["reviewer"]: a for a in exported["annotations"]}
    assert set(by_reviewer) == {"alice", "bob"}
    assert [r["number"] for r in by_reviewer["alice"]["revisions"]] == [1, 2]
    assert by_reviewer["alice"]["revisions"][1]["payload"]["rationale"] == "+1 sure"
    assert exported["adjudications"][0]["adjudicator"] == "judge"
    assert exported["responses"][0]["model"] == "m1"  # admins get the labels the reviewers never saw
    assert records[reviewed["gold"].pk]["state"] == "consensus"
    assert (
        records[reviewed["untouched"].pk]["state"] == "unreviewed"
        and records[reviewed["untouched"].pk]["annotations"] == []
    )


def test_the_export_filters_by_kind_state_and_date(api_as, admin_user, reviewed):
    api = api_as(admin_user)
    gold_only = lines(api("GET", "/projects/support/annotations/export?kind=gold"))
    assert {r["kind"] for r in gold_only} == {"gold"} and len(gold_only) == 2
    agreed = lines(api("GET", "/projects/support/annotations/export?state=consensus&state=adjudicated"))
    assert [r["item_id"] for r in agreed] == [reviewed["gold"].pk]
    future = lines(api("GET", "/projects/support/annotations/export?since=2999-01-01T00:00:00Z"))
    assert future == []
    bad = api("GET", "/projects/support/annotations/export?state=maybe")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "state.0"


def test_the_export_is_for_admins_only(api_as, judge, alice, reviewed, client):
    assert api_as(judge)("GET", "/projects/support/annotations/export").status_code == 403
    client.force_login(alice)
    assert client.get(reverse("annotate:annotation-export", args=["support", "jsonl"])).status_code == 403


def test_the_csv_export_button_gives_one_row_per_annotation_and_no_formula_cells(client, admin_user, reviewed):
    client.force_login(admin_user)
    page = client.get(reverse("annotate:project-detail", args=["support"])).content.decode()
    assert "Export CSV" in page and "Export JSONL" in page
    response = client.get(reverse("annotate:annotation-export", args=["support", "csv"]))
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, body = rows[0], rows[1:]
    assert header[:7] == ["item_id", "kind", "split", "provenance", "state", "prompt", "reviewer"]
    assert len(body) == Annotation.objects.count() + 1  # the untouched item has a row of its own
    assert not [cell for row in body for cell in row if cell.startswith(("=", "+", "-", "@"))]
    assert "'=HYPERLINK" in "".join(cell for row in body for cell in row)
    jsonl = client.get(reverse("annotate:annotation-export", args=["support", "jsonl"]) + "?kind=preference")
    assert [r["kind"] for r in lines(jsonl)] == ["preference"]


def test_an_admin_makes_a_project_in_the_app(client, admin_user, alice):
    client.force_login(alice)
    assert client.get(reverse("annotate:project-new")).status_code == 403
    client.force_login(admin_user)
    response = client.post(
        reverse("annotate:project-new"),
        {"name": "Billing", "slug": "billing", "task_kinds": ["gold"], "overlap_k": 3, "lease_minutes": 30,
         "consensus_rule": "majority", "score_tolerance": 0.5, "rubric_signoffs_required": 2,
         "calibration_threshold": 0.667, "eval_share": "0.250", "split_seed": 7},
    )  # fmt: skip
    assert response.status_code == 302
    made = Project.objects.get(slug="billing")
    assert made.overlap_k == 3 and made.split_seed == 7 and made.members.filter(pk=admin_user.pk).exists()
    taken = client.post(reverse("annotate:project-new"), {"name": "Again", "slug": "new", "task_kinds": ["gold"]})
    assert taken.status_code == 400 and not Project.objects.filter(slug="new").exists()


def test_settings_change_but_never_the_split(client, admin_user, alice, project):
    client.force_login(alice)
    assert client.get(reverse("annotate:project-settings", args=["support"])).status_code == 403
    client.force_login(admin_user)
    data = {"name": "Support v2", "task_kinds": ["gold", "preference"], "overlap_k": 3, "lease_minutes": 45,
            "consensus_rule": "unanimous", "score_tolerance": 1.0, "rubric_signoffs_required": 1,
            "calibration_threshold": 0.8, "eval_share": "0.9", "split_seed": 99}  # fmt: skip
    response = client.post(reverse("annotate:project-settings", args=["support"]), data)
    assert response.status_code == 200 and "Settings saved." in response.content.decode()
    project.refresh_from_db()
    assert (project.name, project.overlap_k, project.consensus_rule) == ("Support v2", 3, "unanimous")
    assert str(project.eval_share) == "0.200" and project.split_seed == 0


def test_the_api_refuses_to_change_the_split(api_as, admin_user, project):
    response = api_as(admin_user)("PATCH", "/projects/support", {"eval_share": 0.9})
    project.refresh_from_db()
    assert str(project.eval_share) == "0.200"
    assert response.status_code == 200  # unknown fields are not settings: ignored by the schema
    lower = api_as(admin_user)("PATCH", "/projects/support", {"overlap_k": 0})
    assert lower.status_code == 422 and lower.json()["errors"][0]["field"] == "overlap_k"


def test_members_are_added_with_a_role_and_removed_with_their_leases_ended(client, admin_user, mallory, alice, project):
    factories.make_item(project, "gold")
    lease = factories.lease_for(project, alice)
    client.force_login(admin_user)
    url = reverse("annotate:project-members", args=["support"])
    added = client.post(url, {"username": "mallory", "role": "adjudicator"})
    assert added.status_code == 200 and project.members.filter(pk=mallory.pk).exists()
    assert set(mallory.groups.values_list("name", flat=True)) == {"adjudicator"}
    unknown = client.post(url, {"username": "nobody"})
    assert unknown.status_code == 400 and "No active user" in unknown.content.decode()
    removed = client.post(reverse("annotate:project-member-remove", args=["support", "alice"]))
    assert removed.status_code == 200 and not project.members.filter(pk=alice.pk).exists()
    assert Lease.objects.get(pk=lease.pk).status == "expired"
    client.force_login(alice)
    assert client.get(reverse("annotate:project-detail", args=["support"])).status_code == 404
    assert not Adjudication.objects.exists()
