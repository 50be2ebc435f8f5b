"""Eval set pages: the list, the freeze page, the version page and its fragments, and who sees them."""

import pytest
from django.urls import reverse

from annotate.models import ItemResult
from evalsets.models import EvalSetVersion
from tests.evalsets.conftest import gold_payload

pytestmark = pytest.mark.django_db


def test_the_list_shows_versions_and_admins_get_freeze_links(client, admin_user, make_item, freeze):
    make_item("gold")
    version = freeze().version
    client.force_login(admin_user)
    body = client.get(reverse("evalsets:evalset-list")).content.decode()
    assert version.name in body and version.sha256[:12] in body
    assert reverse("evalsets:evalset-freeze", args=["support"]) in body


def test_reviewers_see_eval_sets_only_where_the_project_allows_it(client, alice, mallory, project, make_item, freeze):
    make_item("gold")
    version = freeze().version
    client.force_login(alice)
    assert version.name not in client.get(reverse("evalsets:evalset-list")).content.decode()
    assert client.get(version.get_absolute_url()).status_code == 403
    project.reviewers_see_evalsets = True
    project.save()
    body = client.get(reverse("evalsets:evalset-list")).content.decode()
    assert version.name in body
    assert reverse("evalsets:evalset-freeze", args=["support"]) not in body
    assert client.get(version.get_absolute_url()).status_code == 200
    client.force_login(mallory)
    assert client.get(version.get_absolute_url()).status_code == 404


def test_the_freeze_page_previews_records_and_refusals_with_reasons(client, admin_user, make_item):
    make_item("gold")
    judged = make_item("gold", provenance="llm_judged")
    client.force_login(admin_user)
    body = client.get(reverse("evalsets:evalset-freeze", args=["support"])).content.decode()
    assert "<b>1</b> records would be frozen" in body
    assert f"#{judged.pk}" in body and "its provenance is llm_judged" in body
    item_page = reverse("annotate:adjudication-item", kwargs={"slug": "support", "item_id": judged.pk})
    assert f'href="{item_page}"' in body, "each refused item links to its reviews"
    assert client.get(item_page).status_code == 200


def test_posting_the_freeze_form_freezes_and_opens_the_version(client, admin_user, make_item):
    make_item("gold")
    client.force_login(admin_user)
    response = client.post(reverse("evalsets:evalset-freeze", args=["support"]), {"changelog": "First version"})
    version = EvalSetVersion.objects.get()
    assert response.status_code == 302 and response.url == version.get_absolute_url()
    assert version.changelog == "First version"


def test_a_freeze_without_a_changelog_is_refused_with_the_reason(client, admin_user, make_item):
    make_item("gold")
    client.force_login(admin_user)
    response = client.post(reverse("evalsets:evalset-freeze", args=["support"]), {"changelog": ""})
    assert response.status_code == 400
    assert "Write a changelog note" in response.content.decode()
    assert not EvalSetVersion.objects.exists()


def test_reviewers_cannot_freeze(client, alice, project, make_item):
    project.reviewers_see_evalsets = True
    project.save()
    make_item("gold")
    client.force_login(alice)
    url = reverse("evalsets:evalset-freeze", args=["support"])
    assert client.get(url).status_code == 403
    assert client.post(url, {"changelog": "sneaky"}).status_code == 403
    assert not EvalSetVersion.objects.exists()


def test_the_version_page_shows_counts_agreement_provenance_diff_and_exports(client, admin_user, make_item, freeze):
    fixed = make_item("gold", payload=gold_payload("Old answer"))
    make_item("gold", provenance="production_log", agreeing=2, disagreeing=1)
    freeze()
    ItemResult.objects.filter(item=fixed).update(payload=gold_payload("New <b>answer</b>"))
    v2 = freeze("Fixed one answer").version
    client.force_login(admin_user)
    body = client.get(v2.get_absolute_url()).content.decode()
    assert 'id="version-counts"' in body and "<b>2</b> records" in body
    assert "production_log" in body and "human" in body
    assert "<b>0.8334</b> mean agreement" in body
    assert "support-eval-v1" in body and "<b>1</b> changed" in body
    assert "New &lt;b&gt;answer&lt;/b&gt;" in body and "New <b>answer</b>" not in body
    assert reverse("evalsets:version-export", args=[v2.pk, "openai-sft"]) in body
    assert reverse("evalsets:version-export-manifest", args=[v2.pk, "prompt-completion"]) in body
    # Gold answers only: no preference pairs to export.
    assert reverse("evalsets:version-export", args=[v2.pk, "openai-dpo"]) not in body
    assert reverse("evalsets:version-export-manifest", args=[v2.pk, "preference"]) not in body


def test_more_records_come_as_an_htmx_fragment(client, admin_user, make_item, freeze):
    for i in range(55):
        make_item("gold", prompt=f"Prompt number {i:02d} <i>x</i>")
    version = freeze().version
    client.force_login(admin_user)
    page = client.get(version.get_absolute_url()).content.decode()
    assert "Prompt number 49" in page and "Prompt number 50" not in page and "More records" in page
    fragment = client.get(version.get_absolute_url() + "?page=2", headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<tbody id="record-rows">')
    assert "Prompt number 50" in fragment and "Prompt number 54" in fragment
    assert "&lt;i&gt;x&lt;/i&gt;" in fragment and "<html" not in fragment and "More records" not in fragment


def test_the_navigation_and_the_project_page_link_to_eval_sets(client, admin_user, project):
    client.force_login(admin_user)
    body = client.get(project.get_absolute_url()).content.decode()
    assert reverse("evalsets:evalset-list") in body
    assert reverse("evalsets:evalset-freeze", args=[project.slug]) in body


def test_the_navigation_links_reviewers_to_eval_sets_only_where_a_project_shows_them(client, alice, project):
    client.force_login(alice)
    listing = reverse("evalsets:evalset-list")
    assert listing not in client.get(project.get_absolute_url()).content.decode()
    project.reviewers_see_evalsets = True
    project.save()
    assert listing in client.get(project.get_absolute_url()).content.decode()
