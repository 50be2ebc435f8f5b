"""XSS payloads in every user-writable field, rendered inert: checked in the DOM of real Chromium on every
page that shows them.

Each field gets a payload that, if the page parsed it as HTML, would make an element with an id naming the
field (and, where scripts could run, call a recorder). The check is on the DOM, so it holds whether or not
the Content-Security-Policy would also have stopped a script: no such element may exist, nothing may be
recorded, and the payload must be on the page as text.
"""

import pytest

from annotate.models import Adjudication, ItemResult, Rubric, RubricVersion
from annotate.services import imports
from annotate.services.projects import project_member_set
from tests.factories import annotate, gold, make_item, pref

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIELDS = [
    "prompt",
    "response",
    "rationale",
    "answer",
    "criterion",
    "level",
    "example",
    "project",
    "username",
    "changelog",
    "snapshot",
    "filename",
    "token",
    "reason",
]


def payload(field: str) -> str:
    return f'"><img src=x id="xss-{field}" onerror="window.__xss.push(\'{field}\')"><b id="xss-b-{field}">{field}</b>'


@pytest.fixture
def hostile(project, alice, bob, judge, admin_user, django_user_model, settings, tmp_path):
    from evalsets.services import evalset_freeze
    from training.models import TrainingSnapshot

    settings.MEDIA_ROOT = tmp_path / "media"
    project.name = payload("project")
    project.save()
    evil = django_user_model.objects.create_user(username=payload("username")[:150], password="pw")
    project_member_set(project=project, user=evil, role="reviewer", by=admin_user)

    # Preference items whose texts and rationales are hostile, one disputed (the adjudication page shows all).
    item = make_item(project, "preference", prompt=payload("prompt"))
    item.responses = [{"text": payload("response"), "model": "m"}, {"text": "plain", "model": "m"}]
    item.save()
    annotate(item, alice, {**pref(chosen=0, rejected=1), "rationale": payload("rationale")})
    annotate(item, bob, pref("both_bad"))
    from annotate.services.results import item_result_refresh

    item_result_refresh(item=item)
    Adjudication.objects.create(
        item=item, adjudicator=judge, payload=pref(chosen=0, rejected=1), reason=payload("reason")
    )

    criteria = [
        {
            "key": "helpful",
            "name": payload("criterion"),
            "scale": "ordinal",
            "levels": [
                {"value": v, "label": str(v), "description": payload("level"), "example": payload("example")}
                for v in (1, 2)
            ],
        }
    ]
    rubric = Rubric.objects.create(project=project, name="Quality")
    version = RubricVersion.objects.create(rubric=rubric, number=1, criteria=criteria)

    eval_item = make_item(project, "gold", prompt=payload("prompt"), split="eval")
    answer = gold("write", payload("answer"))
    for user in (alice, bob):
        annotate(eval_item, user, answer)
    ItemResult.objects.create(
        item=eval_item, kind="gold", status="consensus", payload=answer, agreement=1.0, reviewer_ids=[alice.pk, bob.pk]
    )
    evalset = evalset_freeze(project=project, user=admin_user, changelog=payload("changelog")).version
    snapshot = TrainingSnapshot.objects.create(name=payload("snapshot")[:200], sha256="f" * 64)

    import io

    batch = imports.import_batch_submit(
        project=project,
        uploaded_by=admin_user,
        upload=io.BytesIO(b'{"prompt": ""}\n'),
        filename=payload("filename").replace("/", "") + ".jsonl",
    )
    from annotate.services.tokens import api_token_create

    api_token_create(user=admin_user, name=payload("token")[:100], scope="read")
    return {"item": item, "version": version, "evalset": evalset, "snapshot": snapshot, "batch": batch}


def _check(page, url: str, found: set[str]) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    injected = page.evaluate("Array.from(document.querySelectorAll('[id^=xss-]')).map(e => e.id)")
    assert injected == [], f"{url}: payload parsed as HTML: {injected}"
    assert page.evaluate("window.__xss") == [], url
    # Shown escaped, the payload's markup is readable text on the page.
    text = page.evaluate("document.body.innerText")
    found.update(f for f in FIELDS if f'id="xss-{f}"' in text)


def test_every_hostile_field_is_shown_as_text_and_never_parsed(
    login_page, live_server, hostile, admin_user, judge, alice, project
):
    base = live_server.url
    slug = project.slug
    found: set[str] = set()
    page = login_page(admin_user)
    page.add_init_script("window.__xss = [];")
    for path in [
        "/",
        f"/projects/{slug}/",
        f"/projects/{slug}/items/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/rubrics/",
        f"/projects/{slug}/rubrics/versions/{hostile['version'].pk}/",
        f"/projects/{slug}/queue/health/",
        f"/projects/{slug}/imports/",
        f"/projects/{slug}/imports/{hostile['batch'].pk}/",
        f"/projects/{slug}/report/",
        f"/projects/{slug}/adjudication/",
        f"/projects/{slug}/adjudication/{hostile['item'].pk}/",
        "/evalsets/",
        f"/evalsets/versions/{hostile['evalset'].pk}/",
        "/evalsets/snapshots/",
        "/training/snapshots/",
        f"/training/snapshots/{hostile['snapshot'].pk}/",
        "/settings/tokens/",
        "/admin-log/",
    ]:
        _check(page, base + path, found)
    page.context.clear_cookies()
    page = login_page(alice)
    page.add_init_script("window.__xss = [];")
    for path in [f"/projects/{slug}/queue/", f"/projects/{slug}/queue/items/{hostile['item'].pk}/history/"]:
        _check(page, base + path, found)
    # Every field was on some page, as text (so the search above looked at it).
    assert set(FIELDS) - found == set(), f"fields never shown: {sorted(set(FIELDS) - found)}"
