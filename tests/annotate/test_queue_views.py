"""The queue pages: task screens, htmx fragments, blind review and permissions."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Annotation, Flag, Lease, Rubric, RubricVersion
from tests import factories

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def make_item(project, n, kind="gold", **fields):
    return factories.make_item(project, kind, n=n, **fields)


def url(name, project, *args):
    return reverse(f"annotate:{name}", args=[project.slug, *args])


def current_lease(client, project):
    html = client.get(url("queue-next", project), **HX).content.decode()
    match = re.search(r'id="queue-current".*?data-lease="(\d+)"', html, re.S)
    return Lease.objects.get(pk=int(match.group(1))), html


def test_the_queue_page_shows_the_current_item_and_prefetches_the_next(client, alice, project):
    make_item(project, 1, prompt="First <b>prompt</b>")
    make_item(project, 2)
    client.force_login(alice)
    response = client.get(url("queue", project))
    html = response.content.decode()
    assert response.status_code == 200
    assert "First &lt;b&gt;prompt&lt;/b&gt;" in html  # escaped, never raw
    assert 'id="queue-prefetch" hidden' in html and "Prompt 2" in html
    assert Lease.objects.filter(reviewer=alice, status="active").count() == 2


def test_the_htmx_request_gets_only_the_cards_fragment(client, alice, project):
    make_item(project, 1)
    client.force_login(alice)
    html = client.get(url("queue", project), **HX).content.decode()
    assert 'id="queue-cards"' in html and "<html" not in html and "queue-progress" not in html


def test_chat_messages_are_shown_as_turns(client, alice, project):
    make_item(project, 1, messages=[{"role": "user", "content": "Hi <there>"}, {"role": "assistant", "content": "Yo"}])
    client.force_login(alice)
    html = client.get(url("queue", project)).content.decode()
    assert 'class="turn turn-user"' in html and "Hi &lt;there&gt;" in html


def test_submit_stores_the_annotation_and_returns_the_next_prefetch(client, alice, project):
    for n in range(3):
        make_item(project, n)
    client.force_login(alice)
    first, _ = current_lease(client, project)
    second = Lease.objects.filter(reviewer=alice, status="active").exclude(pk=first.pk).get()
    position = first.display_order.index(1) + 1
    response = client.post(
        url("queue-submit", project, first.pk),
        {"action": "accept", "source": str(position), "have": str(second.pk), "duration_ms": "4200"},
        **HX,
    )
    assert response.status_code == 200
    assert "Prompt 2" in response.content.decode()  # the third item, the one not yet held
    assert "goldset:submitted" in response["HX-Trigger"]
    annotation = Annotation.objects.get(item=first.item, reviewer=alice)
    assert annotation.payload == {"action": "accept", "answer": "Answer B0", "source_index": 1, "reason": ""}
    assert annotation.duration_ms == 4200 and annotation.display_order == first.display_order
    first.refresh_from_db()
    assert first.status == "submitted"


def test_a_plain_form_post_redirects_back_to_the_queue(client, alice, project):
    make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    response = client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "Mine"})
    assert response.status_code == 302 and response.url == url("queue", project)


def test_an_invalid_answer_is_refused_with_a_clear_message(client, alice, project):
    make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    response = client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "  "}, **HX)
    assert response["HX-Retarget"] == "#queue-alert"
    assert "Write the reference answer: it is empty." in response.content.decode()
    assert "goldset:submit-failed" in response["HX-Trigger"]
    assert not Annotation.objects.exists()
    page = client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "  "})
    assert page.status_code == 400 and "Write the reference answer" in page.content.decode()


def test_a_reviewer_cannot_submit_on_someone_elses_lease(client, alice, bob, project):
    make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.force_login(bob)
    response = client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "x"})
    assert response.status_code == 404
    assert not Annotation.objects.exists()


def test_a_lease_cannot_be_submitted_through_another_projects_url(client, alice, project):
    from annotate.services.projects import project_add_members, project_create

    other = project_create(name="Other", slug="other", task_kinds=["gold"], overlap_k=2)
    project_add_members(project=other, users=[alice])
    make_item(other, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, other)
    response = client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "x"}, **HX)
    assert response.status_code == 404
    assert not Annotation.objects.exists()
    lease.refresh_from_db()
    assert lease.status == "active"


def test_blind_review_hides_other_answers_in_page_fragment_and_history(client, alice, bob, project):
    item = make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    secret = "ALICE-SECRET-ANSWER"
    client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": secret}, **HX)
    client.force_login(bob)
    bob_lease, fragment = current_lease(client, project)
    assert bob_lease.item == item
    assert secret not in fragment
    assert secret not in client.get(url("queue", project)).content.decode()
    assert client.get(url("annotation-history", project, item.pk)).status_code == 404
    assert secret not in client.get(url("queue-progress", project), **HX).content.decode()


def test_check_items_look_like_any_other(client, alice, project):
    make_item(project, 1, is_check=True, check_answer={"action": "accept", "source_index": 0})
    client.force_login(alice)
    html = client.get(url("queue", project)).content.decode()
    assert "check" not in html.lower().replace("checked", "").replace("checkbox", "")


def test_a_non_member_gets_404_everywhere(client, alice, mallory, project):
    make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.force_login(mallory)
    assert client.get(url("queue", project)).status_code == 404
    assert client.get(url("queue-next", project), **HX).status_code == 404
    assert client.post(url("queue-skip", project, lease.pk)).status_code == 404
    assert client.post(url("queue-undo", project)).status_code == 404
    assert not Lease.objects.filter(reviewer=mallory).exists()


def test_anonymous_users_must_log_in(client, project):
    response = client.get(url("queue", project))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_skip_returns_the_next_prefetch_and_sends_the_item_to_the_back(client, alice, project):
    first, second, third = make_item(project, 1), make_item(project, 2), make_item(project, 3)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    assert lease.item == first
    held = Lease.objects.get(reviewer=alice, item=second)
    response = client.post(url("queue-skip", project, lease.pk), {"have": str(held.pk)}, **HX)
    assert "Prompt 3" in response.content.decode()
    assert "goldset:skipped" in response["HX-Trigger"]
    lease.refresh_from_db()
    assert lease.status == "skipped"
    active = Lease.objects.filter(reviewer=alice, status="active").order_by("expires_at", "id")
    assert [x.item for x in active] == [second, third]


def test_undo_brings_the_last_item_back_with_its_answer(client, alice, project):
    make_item(project, 1)
    make_item(project, 2)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "Undo me"}, **HX)
    response = client.post(url("queue-undo", project), **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "goldset:undone" in response["HX-Trigger"]
    assert re.search(rf'id="queue-current".*?data-lease="{lease.pk}"', html, re.S)
    assert "Undo me" in html
    assert not Annotation.objects.filter(reviewer=alice).exists()


def test_undo_with_nothing_submitted_says_so(client, alice, project):
    client.force_login(alice)
    response = client.post(url("queue-undo", project), **HX)
    assert "Nothing to undo" in response.content.decode() and response["HX-Retarget"] == "#queue-alert"


def test_flagging_records_the_reason_for_admins(client, alice, project):
    item = make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    response = client.post(url("queue-flag", project, lease.pk), {"reason_flag": "Prompt is cut off"}, **HX)
    assert "Flagged for an admin" in response.content.decode()
    assert Flag.objects.get(item=item).reason == "Prompt is cut off"
    response = client.post(url("queue-flag", project, lease.pk), {"reason_flag": ""}, **HX)
    assert "Say what is wrong" in response.content.decode()


def test_the_progress_fragment_counts_my_work(client, alice, project):
    for n in range(3):
        make_item(project, n)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "x"}, **HX)
    html = client.get(url("queue-progress", project), **HX).content.decode()
    assert '<b data-stat="done-today">1</b>' in html
    assert '<b data-stat="left-for-me">2</b>' in html  # 3 items, one done by me
    assert "1 of 6" in html


def test_rubric_screen_shows_levels_and_descriptions(client, alice, project):
    rubric = Rubric.objects.create(project=project, name="Helpfulness")
    RubricVersion.objects.create(
        rubric=rubric,
        number=2,
        status="active",
        activated_at=timezone.now(),
        criteria=[
            {
                "key": "accuracy",
                "name": "Accuracy",
                "scale": "ordinal",
                "levels": [
                    {"value": 1, "label": "Wrong", "description": "States <false> facts"},
                    {"value": 2, "label": "Right", "description": "All facts check out"},
                ],
            }
        ],
    )
    make_item(project, 1, kind="rubric")
    client.force_login(alice)
    lease, html = current_lease(client, project)
    assert "Helpfulness" in html and "States &lt;false&gt; facts" in html and 'name="score-accuracy"' in html
    client.post(url("queue-submit", project, lease.pk), {"score-accuracy": "2"}, **HX)
    annotation = Annotation.objects.get(reviewer=alice)
    assert annotation.payload["scores"] == {"accuracy": 2} and annotation.rubric_version.number == 2


def test_rubric_page_explains_why_rubric_items_wait(client, alice, project):
    make_item(project, 1, kind="rubric")
    client.force_login(alice)
    html = client.get(url("queue", project)).content.decode()
    assert "no active rubric version" in html


def test_preference_screen_shows_all_responses_in_stored_order(client, alice, project):
    make_item(project, 1, kind="preference")
    client.force_login(alice)
    lease, html = current_lease(client, project)
    first_shown = "Answer A1" if lease.display_order[0] == 0 else "Answer B1"
    second_shown = "Answer B1" if first_shown == "Answer A1" else "Answer A1"
    assert html.index(first_shown) < html.index(second_shown)
    client.post(url("queue-submit", project, lease.pk), {"choice": "1", "strength": "clear"}, **HX)
    payload = Annotation.objects.get(reviewer=alice).payload
    assert payload["chosen"] == lease.display_order[0] and payload["rejected"] == lease.display_order[1]


def test_history_shows_my_revisions_and_saving_adds_one(client, alice, project):
    item = make_item(project, 1)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.post(url("queue-submit", project, lease.pk), {"action": "write", "answer": "First take"}, **HX)
    history = url("annotation-history", project, item.pk)
    assert "First take" in client.get(history).content.decode()
    response = client.post(history, {"action": "write", "answer": "Second take"})
    assert response.status_code == 302
    annotation = Annotation.objects.get(reviewer=alice)
    assert annotation.revision == 2 and annotation.payload["answer"] == "Second take"
    assert [r.payload["answer"] for r in annotation.revisions.order_by("number")] == ["First take", "Second take"]


def test_revisions_name_the_candidate_as_the_reviewers_screen_did(client, alice, bob, project):
    """Two reviewers shown the item's responses in opposite orders accept the same response: each history says
    so in the words of their own screen, and both stored the same response index."""
    item = make_item(project, 1)
    pages = {}
    for user, order in ((alice, [1, 0]), (bob, [0, 1])):
        client.force_login(user)
        lease, _ = current_lease(client, project)
        Lease.objects.filter(pk=lease.pk).update(display_order=order)
        position = order.index(0) + 1  # where response 0 ("Answer A1") was on this reviewer's screen
        client.post(url("queue-submit", project, lease.pk), {"action": "accept", "source": str(position)}, **HX)
        pages[user.username] = client.get(url("annotation-history", project, item.pk)).content.decode()
    assert {a.payload["source_index"] for a in Annotation.objects.filter(item=item)} == {0}
    revisions = {name: html[html.index("<h2>Revisions</h2>") :] for name, html in pages.items()}
    assert "Candidate 2: Answer A1" in revisions["alice"] and "Candidate 1: Answer A1" in revisions["bob"]
    assert "Accept the selected candidate" in revisions["alice"]
    assert "source_index" not in revisions["alice"] and "source_index" not in revisions["bob"]


def test_admins_see_flags_from_queue_health_search_them_and_resolve_them_with_a_note(
    client, alice, admin_user, project
):
    item = make_item(project, 1, prompt="What is the <b>refund</b> window?")
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    client.post(url("queue-flag", project, lease.pk), {"reason_flag": "The prompt names no <i>product</i>."}, **HX)
    flag = Flag.objects.get()
    assert client.get(url("flag-list", project)).status_code == 403
    assert client.post(url("flag-resolve", project, flag.pk)).status_code == 403

    client.force_login(admin_user)
    health = client.get(url("queue-health", project)).content.decode()
    assert f'href="{url("flag-list", project)}"' in health and "1</b> open flag" in health
    page = client.get(url("flag-list", project)).content.decode()
    assert "The prompt names no &lt;i&gt;product&lt;/i&gt;." in page and "alice" in page
    assert reverse("annotate:adjudication-item", args=[project.slug, item.pk]) in page
    assert "1 flag" in client.get(url("flag-list", project), {"q": "ALICE"}).content.decode()
    assert "0 flags" in client.get(url("flag-list", project), {"q": "shipping"}).content.decode()

    done = client.post(url("flag-resolve", project, flag.pk), {"resolution": "Rewrote the prompt."}, **HX)
    assert done.status_code == 200 and f"Flag {flag.pk} resolved." in done.content.decode()
    flag.refresh_from_db()
    assert flag.resolved and flag.resolved_by == admin_user and flag.resolution == "Rewrote the prompt."
    assert "No open flags" in client.get(url("flag-list", project)).content.decode()
    resolved = client.get(url("flag-list", project), {"state": "resolved"}).content.decode()
    assert "Rewrote the prompt." in resolved and "admin" in resolved
    again = client.post(url("flag-resolve", project, flag.pk), **HX)
    assert again.status_code == 400 and "resolved already" in again.content.decode()


def test_the_flag_list_pages_fifty_at_a_time_and_keeps_its_search_on_every_page(
    client, alice, bob, admin_user, project
):
    items = [make_item(project, n, prompt=f"Flagged prompt {n}") for n in range(55)]
    for n, item in enumerate(items):
        Flag.objects.create(item=item, reviewer=alice if n % 5 else bob, reason=f"Reason {n}")
    client.force_login(admin_user)
    first = client.get(url("flag-list", project)).content.decode()
    assert "55 flags" in first and "Page 1 of 2" in first and first.count("<tr>") == 51  # head + 50
    assert "Reason 54" in first and "Reason 4<" not in first  # newest first
    second = client.get(url("flag-list", project), {"page": 2}).content.decode()
    assert "Page 2 of 2" in second and "Reason 0<" in second and "Reason 54" not in second
    by_bob = client.get(url("flag-list", project), {"q": "bob"}).content.decode()
    assert "11 flags" in by_bob and "Page 1" not in by_bob
    assert all(f"Reason {n}<" in by_bob for n in range(0, 55, 5))


def test_queue_health_is_for_admins_only(client, alice, admin_user, project):
    make_item(project, 1)
    client.force_login(alice)
    current_lease(client, project)
    assert client.get(url("queue-health", project)).status_code == 403
    client.force_login(admin_user)
    html = client.get(url("queue-health", project)).content.decode()
    assert "leases out" in html and "alice" in html
    fragment = client.get(url("queue-health", project), **HX).content.decode()
    assert fragment.lstrip().startswith('<div id="health"')


def test_an_admin_expires_and_reassigns_leases_from_the_health_page(client, alice, bob, admin_user, project):
    make_item(project, 1)
    make_item(project, 2)
    client.force_login(alice)
    lease, _ = current_lease(client, project)
    other = Lease.objects.filter(reviewer=alice, status="active").exclude(pk=lease.pk).get()
    client.force_login(admin_user)
    response = client.post(url("queue-lease-reassign", project, lease.pk), {"to": "bob"}, **HX)
    assert "moved to bob" in response.content.decode()
    assert Lease.objects.get(item=lease.item, reviewer=bob).status == "active"
    response = client.post(url("queue-lease-expire", project, other.pk), **HX)
    assert "expired" in response.content.decode()
    other.refresh_from_db()
    assert other.status == "expired"
    client.force_login(alice)
    assert client.post(url("queue-lease-expire", project, other.pk)).status_code == 403


def test_the_project_page_has_a_start_reviewing_button(client, alice, project):
    client.force_login(alice)
    html = client.get(project.get_absolute_url()).content.decode()
    assert "Start reviewing" in html and url("queue", project) in html


@pytest.mark.parametrize("slug", ["918273645", "p-918273645-1"])
def test_card_urls_match_the_url_conf_whatever_the_slug(client, alice, project, slug):
    # The per-lease URLs are built from patterns reversed once per project; a slug holding digits
    # (even the placeholder's) must not change them.
    project.slug = slug
    project.save(update_fields=["slug"])
    make_item(project, 1)
    client.force_login(alice)
    lease, html = current_lease(client, project)
    card = re.search(r'<form class="task-card[^>]*>', html).group(0)
    assert f'action="{url("queue-submit", project, lease.pk)}"' in card
    assert f'data-skip-url="{url("queue-skip", project, lease.pk)}"' in card
    assert f'data-flag-url="{url("queue-flag", project, lease.pk)}"' in card
    assert f'formaction="{url("queue-undo", project)}"' in html
