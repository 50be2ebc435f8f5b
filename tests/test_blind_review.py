"""Blind review holds on every endpoint a reviewer can reach: no page, fragment, history, export or API answer
carries another reviewer's annotation of an item.

The endpoints come from the access table (tests/test_page_access.py) and the API's own routes, so a new page a
reviewer may open is searched too. Bob's answers are planted on the very items Alice holds leases on and has
answered, then every GET (full page and htmx fragment) and every POST Alice may make is searched for them.
"""

import itertools

import pytest

from annotate.models import Annotation, Lease
from tests.api.conftest import api_as  # noqa: F401
from tests.api.test_access_matrix import api_operations
from tests.factories import annotate, gold
from tests.test_page_access import RULES, WHO, page_patterns, request, url_for, world  # noqa: F401

pytestmark = pytest.mark.django_db

SECRET = "BOB-SECRET-7f3a"
HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def planted(world, bob, alice):  # noqa: F811 (the fixture imported above)
    """Bob's answer, with a secret in it, on every item Alice holds a lease on or has answered."""
    project = world["project"]
    project.reviewers_see_evalsets = True  # the eval set pages too
    project.save()
    items = {lease.item for lease in Lease.objects.filter(reviewer=alice)}
    items |= {a.item for a in Annotation.objects.filter(reviewer=alice)}
    for item in items:
        if not Annotation.objects.filter(item=item, reviewer=bob).exists():
            annotate(item, bob, gold("write", f"{SECRET} answer by bob"))
    assert len(items) >= 2
    return world


def _body(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode("utf-8", "replace")


def test_no_page_or_fragment_a_reviewer_may_open_shows_another_reviewers_answer(client, planted, alice):
    client.force_login(alice)
    seen = 0
    for name, method in itertools.product(sorted(RULES), ("GET", "POST")):
        who = RULES[name].get(method)
        if who is None or "reviewer" not in WHO[who]:
            continue
        url = url_for(name, page_patterns()[name], planted, "reviewer")
        for headers in ({}, HX):
            if method == "GET":
                response = client.get(url, **headers)
            else:
                response = request(client, "POST", url)
            assert response.status_code < 500, (method, url)
            assert SECRET not in _body(response), f"{method} {url} shows bob's answer"
            seen += 1
    assert seen > 20
    # The search can find it: an admin's export of the annotations holds bob's answers.
    client.force_login(planted["users"]["admin"])
    export = client.get(f"/projects/{planted['project'].slug}/export/annotations.jsonl")
    assert SECRET in _body(export)


def test_the_history_of_an_item_one_has_not_answered_is_not_found(client, planted, alice, bob, project):
    from tests.factories import make_item

    item = make_item(project, "gold", prompt="Only bob answered this")
    annotate(item, bob, gold("write", SECRET))
    client.force_login(alice)
    response = client.get(f"/projects/{project.slug}/queue/items/{item.pk}/history/")
    assert response.status_code == 404 and SECRET not in _body(response)


def test_no_api_answer_to_a_reviewer_shows_another_reviewers_answer(client, api_as, planted, alice):  # noqa: F811
    api = api_as(alice, "read")
    values = {k: make("reviewer") for k, make in planted["values"].items() if ":" not in k}
    values["version_id"] = planted["values"]["annotate:version_id"]("reviewer")
    values["evalset_version_id"] = planted["values"]["evalsets:version_id"]("reviewer")
    values["run_id"] = planted["values"]["evalsets:run_id"]("reviewer")
    values.update(layout="goldset", path="manifest.json")
    reads = [path for method, path in api_operations() if method == "GET"]
    for path in reads:
        response = api("GET", path.format(**values))
        assert SECRET not in _body(response), f"GET {path} shows bob's answer"
    # The queue's own calls, as a script works it.
    lease = Lease.objects.filter(reviewer=alice, status="active").first()
    for method, path in [
        ("POST", "/projects/{slug}/queue/next"),
        ("POST", f"/projects/{{slug}}/queue/leases/{lease.pk}/skip"),
    ]:
        response = api_as(alice, "write")(method, path.format(**values))
        assert response.status_code < 500 and SECRET not in _body(response), path
