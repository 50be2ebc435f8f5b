"""Property-based attacks (hypothesis) on everything that reads outside input: the JSONL and CSV import
parsers, the task forms that turn a reviewer's answer into a payload, every other form, and every page that
takes a POST. No input may raise out of them or be answered with a 5xx; each gets a clear error (a message
that names the line or field) or is accepted. The API has its own schema-driven fuzzing (tests/api/test_fuzz.py).
"""

import inspect
import io
import json

import pytest
from django import forms as django_forms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import forms as annotate_forms
from annotate import importers
from training import forms as training_forms

KINDS = ["gold", "preference", "rubric"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "prompt",
        "response",
        "responses",
        "chosen",
        "rejected",
        "messages",
        "metadata",
        "provenance",
        "kind",
        "id",
        "response_model",
        "chosen_model",
        "rejected_model",
        "text",
        "model",
        "role",
        "content",
        "bogus",
    ]
)
ROW = st.dictionaries(KEYS, JSON, max_size=6) | JSON
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _consume(data: bytes, file_format: str) -> list[importers.ParsedRow]:
    try:
        rows = list(
            importers.parse(io.BytesIO(data), file_format=file_format, task_kinds=KINDS, default_provenance="human")
        )
    except importers.FileInvalid as exc:  # the whole file refused, with a line and a message
        assert exc.error.line >= 0 and exc.error.message
        return []
    for row in rows:
        assert row.line >= 1 and 0 <= row.start_offset <= row.end_offset <= len(data)
        if row.ok:
            assert isinstance(row.row, dict) and isinstance(row.row.get("prompt"), str)
        else:
            assert all(e.line == row.line and e.message for e in row.errors)
    return rows


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_parse_as_jsonl_into_rows_or_line_errors(data):
    _consume(data, "jsonl")


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_parse_as_csv_into_rows_or_line_errors(data):
    _consume(data, "csv")


@FAST
@given(st.lists(ROW, min_size=1, max_size=6))
def test_any_json_rows_parse_into_rows_or_errors_that_name_the_line(rows):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    parsed = _consume(data, "jsonl")
    assert len(parsed) == len(rows)
    for i, row in enumerate(parsed, start=1):
        assert row.line == i
        for error in row.errors:
            assert str(error).startswith(f"line {i}: ")


@FAST
@given(
    st.lists(
        st.sampled_from(["prompt", "response", "responses", "chosen", "rejected", "metadata", "kind", "x"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    st.lists(st.lists(st.text(max_size=20), min_size=0, max_size=5), min_size=0, max_size=5),
)
def test_any_csv_table_parses_into_rows_or_errors(header, body):
    import csv

    out = io.StringIO()
    writer = csv.writer(out)  # builds hostile CSV input for the parser; the app writes no CSV here
    writer.writerow(header)
    writer.writerows(body)
    _consume(out.getvalue().encode("utf-8", "surrogatepass"), "csv")


# --- forms ----------------------------------------------------------------------------------------------------


def _plain_forms() -> list[type[django_forms.BaseForm]]:
    """Every form of the apps that is built from data alone (the task forms need an item: below)."""
    found = []
    for module in (annotate_forms, training_forms):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, django_forms.BaseForm)
                and cls.__module__ == module.__name__
                and not issubclass(cls, annotate_forms.TaskForm)
            ):
                found.append(cls)
    return found


def test_the_form_list_is_complete():
    names = {cls.__name__ for cls in _plain_forms()}
    assert {
        "ImportForm",
        "ItemFilterForm",
        "ProjectSettingsForm",
        "ProjectCreateForm",
        "MemberForm",
        "ApiTokenForm",
        "AnnotationExportForm",
        "SnapshotForm",
        "JobForm",
    } <= names


VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e309",
            "nan",
            "9" * 30,
            "null",
            "[]",
            "{}",
            '{"a": [1, {"b": null}]}',
            "gold",
            "sft",
            "dpo",
            "auto",
            "2026-02-30",
            "\x00",
            "<script>",
            "é" * 600,
        ]
    ),
)


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_form_raises_on_any_input(data, project):
    for cls in _plain_forms():
        fields = list(cls().fields) + ["x"]
        values = data.draw(st.dictionaries(st.sampled_from(fields), VALUES, max_size=len(fields)), label=cls.__name__)
        form = cls(values)
        if form.is_valid():
            assert isinstance(form.cleaned_data, dict)
        else:
            assert all(isinstance(m, str) and m for ms in form.errors.values() for m in ms)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_task_form_raises_and_a_valid_one_gives_a_payload(data, project):
    from annotate.models import RubricVersion
    from tests.factories import CRITERIA, make_item

    kind = data.draw(st.sampled_from(KINDS))
    item = make_item(project, kind, responses=data.draw(st.integers(0, 3)))
    version = RubricVersion(number=1, criteria=CRITERIA) if kind == "rubric" else None
    names = [
        "action",
        "answer",
        "source",
        "reason",
        "choice",
        "chosen",
        "strength",
        "rationale",
        "response",
        "duration_ms",
        "score-helpful",
        "score-safe",
        "unusable_reason",
        "edit_source",
    ]
    values = data.draw(st.dictionaries(st.sampled_from(names), VALUES, max_size=8))
    form = annotate_forms.task_form(
        item, values, display_order=list(range(len(item.responses))), rubric_version=version
    )
    if form.is_valid():
        assert form.payload is not None
        stored = form.payload.to_json()
        assert json.loads(json.dumps(stored)) == stored
    else:
        assert form.errors


# --- every page that takes a POST -----------------------------------------------------------------------------

from tests.test_page_access import RULES, page_patterns, request, url_for, world  # noqa: E402, F401

POSTS = sorted(name for name, rule in RULES.items() if rule.get("POST") and name != "logout")
FIELD_NAMES = st.sampled_from(
    [
        "name",
        "slug",
        "username",
        "role",
        "answer",
        "action",
        "choice",
        "chosen",
        "reason",
        "rationale",
        "changelog",
        "finding",
        "note",
        "file_format",
        "mode",
        "provenance",
        "scope",
        "expires_on",
        "projects",
        "snapshot",
        "method",
        "base_model",
        "criteria",
        "prompt",
        "responses",
        "have",
        "reason_flag",
        "version",
        "task_kinds",
        "overlap_k",
        "batch_size",
        "learning_rate",
        "audit_gates",
        "duration_ms",
        "password",
        "next",
        "x",
    ]
)


@pytest.mark.django_db
@pytest.mark.parametrize("name", POSTS)
def test_no_post_to_any_page_is_answered_with_a_server_error(client, world, name):  # noqa: F811
    role = "anonymous" if RULES[name]["POST"] == "public" else "admin"
    if world["users"][role] is not None:
        client.force_login(world["users"][role])
    client.raise_request_exception = False
    url = url_for(name, page_patterns()[name], world, role)
    failures = []

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.dictionaries(FIELD_NAMES, st.lists(VALUES, min_size=1, max_size=2), max_size=6), st.booleans())
    def post(values, htmx):
        from urllib.parse import urlencode

        body = urlencode([(k, v) for k, vs in values.items() for v in vs])
        headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        response = _post(client, url, body, headers)
        if response.status_code >= 500:
            failures.append((values, htmx, response.status_code))
        assert response.status_code < 500, (url, values, response.content[:500])
        assert b"Traceback" not in response.content

    post()
    assert failures == []


def _post(client, url, body, headers):
    from django.db import transaction

    from tests.test_page_access import _Rollback

    response = None
    try:
        with transaction.atomic():
            response = client.generic("POST", url, body, content_type="application/x-www-form-urlencoded", **headers)
            raise _Rollback
    except _Rollback:
        pass
    return response
