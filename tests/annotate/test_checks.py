import pytest
from django.core.exceptions import ValidationError

from annotate.models import Item, ItemResult
from annotate.services.checks import check_item_create, check_item_seed_from_item
from tests.conftest import login
from tests.factories import gold, make_item, pref


def test_an_existing_item_becomes_a_check_item_with_its_consensus_as_answer(project):
    item = make_item(project, "gold")
    ItemResult.objects.create(item=item, kind="gold", status="consensus", payload=gold("accept", source_index=1))
    check_item_seed_from_item(item=item)
    item.refresh_from_db()
    assert item.is_check and item.check_answer["source_index"] == 1


def test_an_undecided_item_needs_an_explicit_answer(project):
    item = make_item(project, "gold")
    with pytest.raises(ValidationError, match="no consensus or adjudicated result"):
        check_item_seed_from_item(item=item)
    check_item_seed_from_item(item=item, answer=gold("unusable"))
    assert Item.objects.get(pk=item.pk).check_answer["action"] == "unusable"


def test_a_new_check_item_is_validated_against_its_kind(project):
    with pytest.raises(ValidationError, match="chosen"):
        check_item_create(
            project=project, kind="preference", prompt="P", responses=[{"text": "a"}], answer=pref(chosen=3)
        )
    assert not Item.objects.filter(is_check=True).exists()
    item = check_item_create(
        project=project, kind="preference", prompt="P", responses=[{"text": "a"}, {"text": "b"}], answer=pref(chosen=1)
    )
    assert item.is_check and item.check_answer["chosen"] == 1 and item.split == "train"


def test_a_check_item_looks_like_any_other_item_apart_from_its_hidden_fields(project):
    item = check_item_create(
        project=project,
        kind="gold",
        prompt="Reset a password?",
        responses=[{"text": "Use the link."}],
        answer=gold("accept", source_index=0),
    )
    regular = make_item(project, "gold")
    assert item.metadata == regular.metadata == {}
    assert item.provenance == regular.provenance
    assert set(item.responses[0]) == set(regular.responses[0]) == {"text", "model"}


def test_admins_seed_checks_through_the_page_and_reviewers_cannot(client, project, admin_user, alice):
    assert login(client, alice).get(f"/projects/{project.slug}/checks/").status_code == 403
    login(client, admin_user)
    response = client.post(
        f"/projects/{project.slug}/checks/",
        {
            "action": "create",
            "kind": "preference",
            "prompt": "Pick one",
            "responses": "First\n---\nSecond",
            "answer": '{"choice": "response", "chosen": 1, "rejected": 0}',
        },
    )
    assert response.status_code == 302
    item = Item.objects.get(is_check=True)
    assert [r["text"] for r in item.responses] == ["First", "Second"]
    page = client.get(f"/projects/{project.slug}/checks/").content.decode()
    assert "Pick one" in page


def test_a_bad_answer_on_the_page_says_where_and_keeps_nothing(client, project, admin_user):
    response = login(client, admin_user).post(
        f"/projects/{project.slug}/checks/",
        {"action": "create", "kind": "gold", "prompt": "Q", "responses": "", "answer": "{bad"},
    )
    assert response.status_code == 400
    assert "line 1, column 2" in response.content.decode()
    assert not Item.objects.exists()
