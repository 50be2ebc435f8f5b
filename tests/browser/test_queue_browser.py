"""A reviewer works through every task kind in real Chromium using only the keyboard."""

import time

import pytest
from django.db import OperationalError
from django.utils import timezone
from playwright.sync_api import expect

from annotate.models import Annotation, Item, Lease, Rubric, RubricVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CRITERIA = [
    {
        "key": "accuracy",
        "name": "Accuracy",
        "scale": "ordinal",
        "levels": [
            {"value": 1, "label": "Wrong", "description": "Contains a factual error"},
            {"value": 2, "label": "Mostly right", "description": "Minor slips only"},
            {"value": 3, "label": "Right", "description": "Every fact checks out"},
        ],
    },
    {
        "key": "tone",
        "name": "Tone",
        "scale": "binary",
        "levels": [
            {"value": "good", "label": "Kind", "description": "Polite and warm"},
            {"value": "bad", "label": "Rude", "description": "Curt or dismissive"},
        ],
    },
]


def seed(project):
    rubric = Rubric.objects.create(project=project, name="Support quality")
    RubricVersion.objects.create(
        rubric=rubric, number=1, status="active", activated_at=timezone.now(), criteria=CRITERIA
    )
    specs = [
        ("gold", "Gold one: how do I reset my password?", None),
        ("preference", "Pref one: write a greeting", None),
        ("rubric", "Rubric one", [{"role": "user", "content": "Rubric one: my order is late"}]),
        ("gold", "Gold two: cancel my plan", None),
        ("preference", "Pref two: say goodbye", None),
        ("rubric", "Rubric two: refund?", None),
    ]
    items = []
    for n, (kind, prompt, messages) in enumerate(specs):
        items.append(
            Item.objects.create(
                project=project,
                kind=kind,
                prompt=prompt,
                messages=messages,
                responses=[{"text": f"Candidate A for {n} <b>bold?</b>"}, {"text": f"Candidate B for {n}"}],
                content_hash=f"browser-{n}",
                split="train",
            )
        )
    return items


def stored(reviewer, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    found = {}
    while time.monotonic() < deadline:
        try:
            found = {a.item_id: a for a in Annotation.objects.filter(reviewer=reviewer)}
        except OperationalError:  # the in-memory SQLite test database locks tables while the server writes
            found = {}
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {count} stored annotations, found {len(found)}")


def test_a_reviewer_labels_every_kind_with_the_keyboard_and_survives_a_reload(
    live_server, login_page, project, alice, screenshot_dir
):
    project.overlap_k = 1
    project.save()
    gold1, pref1, rub1, gold2, pref2, rub2 = seed(project)
    page = login_page(alice)
    page_errors = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.click("text=Start reviewing")
    current = page.locator("#queue-current")
    prompt = current.locator(".task-prompt")

    # Gold: accept candidate 1 (display position), submit; the text is shown escaped.
    expect(prompt).to_contain_text("Gold one")
    expect(current).to_contain_text("<b>bold?</b>")
    page.screenshot(path=str(screenshot_dir / "queue-gold.png"), full_page=True)
    page.keyboard.press("?")
    expect(page.locator("#queue-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#queue-help")).to_be_hidden()
    page.keyboard.press("1")
    expect(current.locator("input[name=action][value=accept]")).to_be_checked()
    page.keyboard.press("Enter")

    # Preference: undo the gold answer first, resubmit it, then pick response 2, clearly better.
    expect(prompt).to_contain_text("Pref one")
    stored(alice, 1)
    page.keyboard.press("u")
    expect(prompt).to_contain_text("Gold one")
    expect(current.locator("input[name=action][value=accept]")).to_be_checked()
    page.keyboard.press("Enter")
    expect(prompt).to_contain_text("Pref one")
    page.screenshot(path=str(screenshot_dir / "queue-preference.png"), full_page=True)
    page.keyboard.press("2")
    page.keyboard.press("c")
    page.keyboard.press("Enter")

    # Rubric: chat turns on the left, level descriptions visible; score 2 then "good".
    expect(prompt).to_contain_text("Rubric one: my order is late")
    expect(current).to_contain_text("Every fact checks out")
    page.screenshot(path=str(screenshot_dir / "queue-rubric.png"), full_page=True)
    page.keyboard.press("2")
    page.keyboard.press("1")
    page.keyboard.press("Enter")

    # Gold two: write from scratch, Ctrl+Enter submits from the text box.
    expect(prompt).to_contain_text("Gold two")
    page.keyboard.press("w")
    page.keyboard.type("Go to Settings, then Plan, then Cancel.")
    page.keyboard.press("Control+Enter")

    # Preference two: choose tie, reload mid-item; the draft comes back and is submitted.
    expect(prompt).to_contain_text("Pref two")
    page.keyboard.press("t")
    page.keyboard.press("l")
    # Reload only once gold two is stored: a reload cancels a submission still in flight (its draft
    # then brings gold two back, answer filled in), which is not what this step checks.
    stored(alice, 4)
    page.reload()
    expect(prompt).to_contain_text("Pref two")
    expect(current.locator("input[name=choice][value=tie]")).to_be_checked()
    page.keyboard.press("Enter")

    # Rubric two: skip it, it comes back last (it is the only one left), then score it.
    expect(prompt).to_contain_text("Rubric two")
    page.keyboard.press("s")
    expect(prompt).to_contain_text("Rubric two")
    page.keyboard.press("3")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.locator(".queue-done")).to_be_visible()
    expect(page.locator("[data-stat=done-today]")).to_have_text("6")
    page.screenshot(path=str(screenshot_dir / "queue-done.png"), full_page=True)

    found = stored(alice, 6)
    order = {lease.item_id: lease.display_order for lease in Lease.objects.filter(reviewer=alice)}
    assert found[gold1.pk].payload["action"] == "accept"
    assert found[gold1.pk].payload["source_index"] == order[gold1.pk][0]
    assert found[gold1.pk].revision == 1  # the undone submission was taken back, then resubmitted
    assert found[pref1.pk].payload["chosen"] == order[pref1.pk][1]
    assert found[pref1.pk].payload["strength"] == "clear"
    assert found[rub1.pk].payload["scores"] == {"accuracy": 2, "tone": "good"}
    assert found[gold2.pk].payload == {
        "action": "write",
        "answer": "Go to Settings, then Plan, then Cancel.",
        "source_index": None,
        "reason": "",
    }
    assert found[pref2.pk].payload["choice"] == "tie" and found[pref2.pk].payload["chosen"] is None
    assert found[rub2.pk].payload["scores"] == {"accuracy": 3, "tone": "bad"}
    assert all(a.duration_ms is not None for a in found.values())
    assert page_errors == []


def test_history_and_queue_health_pages_render(live_server, login_page, project, alice, admin_user, screenshot_dir):
    gold1, *_ = seed(project)
    page = login_page(alice)
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/")
    expect(page.locator("#queue-current .task-prompt")).to_contain_text("Gold one")
    page.keyboard.press("w")
    page.keyboard.type("First <answer>")
    page.keyboard.press("Control+Enter")
    stored(alice, 1)
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/items/{gold1.pk}/history/")
    page.fill("textarea[name=answer]", "Second answer")
    page.click("text=Save as a new revision")
    expect(page.locator("table.revisions tbody tr")).to_have_count(2)
    expect(page.locator("table.revisions")).to_contain_text("First <answer>")
    page.screenshot(path=str(screenshot_dir / "queue-history.png"), full_page=True)
    assert Annotation.objects.get(reviewer=alice).payload["answer"] == "Second answer"

    page.context.clear_cookies()
    page = login_page(admin_user)
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/health/")
    expect(page.locator("#health")).to_contain_text("alice")
    page.screenshot(path=str(screenshot_dir / "queue-health.png"), full_page=True)
    page.locator("#health form button", has_text="Expire now").first.click()
    expect(page.locator("#health")).to_contain_text("expired: its item is back in the queue")


def test_a_failed_submission_brings_the_item_back_with_its_answer(live_server, login_page, project, alice):
    seed(project)
    page = login_page(alice)
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/")
    prompt = page.locator("#queue-current .task-prompt")
    expect(prompt).to_contain_text("Gold one")
    page.route("**/submit/", lambda route: route.fulfill(status=500, body="Server Error"))
    page.keyboard.press("w")
    page.keyboard.type("Keep me")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#queue-alert")).to_contain_text("your queue was reloaded")
    expect(prompt).to_contain_text("Gold one")  # not stored, so it is still leased and comes back
    expect(page.locator("#queue-current textarea[name=answer]")).to_have_value("Keep me")
    page.unroute("**/submit/")
    page.keyboard.press("Control+Enter")
    expect(prompt).to_contain_text("Pref one")
    assert stored(alice, 1)[Item.objects.get(content_hash="browser-0").pk].payload["answer"] == "Keep me"
