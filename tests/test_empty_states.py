"""Every empty state says what to do next, with a link to where it is done.

Each page that needs no object but its project (or nothing at all) is opened in a project with nothing in it yet,
as an admin and as a reviewer; every element marked ``class="empty"`` must hold a link that the same caller can
open. The few empty states whose next step is not in the app for that caller are listed in ``NO_LINK`` with why.
"""

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from tests.test_page_access import RULES, WHO, page_patterns

pytestmark = pytest.mark.django_db

# (role, URL name) -> why its empty state holds no link.
NO_LINK: dict[tuple[str, str], str] = {}


class _EmptyStates(HTMLParser):
    """The text and links of each element with class "empty"."""

    def __init__(self):
        super().__init__()
        self.found: list[dict] = []
        self._open: list[tuple[str, dict | None]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in {"br", "input", "img", "meta", "link", "hr", "col", "source", "wbr"}:
            return
        state = None
        if "empty" in (attrs.get("class") or "").split():
            state = {"text": "", "links": []}
            self.found.append(state)
        self._open.append((tag, state))
        if tag == "a" and attrs.get("href"):
            for _, open_state in self._open:
                if open_state is not None:
                    open_state["links"].append(attrs["href"])

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, state in self._open:
            if state is not None:
                state["text"] += data


def empty_states(html: str) -> list[dict]:
    parser = _EmptyStates()
    parser.feed(html)
    return parser.found


def pages_without_objects() -> list[str]:
    """Pages whose only argument is the project (or none), that a caller opens with GET."""
    return sorted(
        name
        for name, pattern in page_patterns().items()
        if set(pattern.pattern.converters) <= {"slug"} and RULES[name].get("GET") not in {None, "public"}
    )


@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_every_empty_state_links_to_what_to_do_next(client, project, admin_user, alice, role):
    user = {"admin": admin_user, "reviewer": alice}[role]
    client.force_login(user)
    failures, seen = [], 0
    for name in pages_without_objects():
        if role not in WHO[RULES[name]["GET"]]:
            continue
        pattern = page_patterns()[name]
        url = reverse(name, kwargs={"slug": project.slug} if pattern.pattern.converters else {})
        response = client.get(url)
        if not response.get("Content-Type", "").startswith("text/html"):
            continue  # a download (CSV, JSON): no empty state to read
        assert response.status_code == 200, (url, response.status_code)
        html = response.content.decode()
        for state in empty_states(html):
            seen += 1
            text = " ".join(state["text"].split())
            if not state["links"]:
                if (role, name) not in NO_LINK:
                    failures.append(f"{name} as {role}: {text!r} links nowhere")
                continue
            for href in state["links"]:
                if href.startswith("#"):
                    if f'id="{href[1:]}"' not in html:
                        failures.append(f"{name} as {role}: {text!r} points at {href}, which is not on the page")
                    continue
                status = client.get(href).status_code
                if status >= 400:
                    failures.append(f"{name} as {role}: {text!r} links to {href}, which answers {status}")
    assert seen, "no empty state was found: the pages are not empty"
    assert failures == [], "\n".join(failures)
