"""Imports through the API go through the same service as the page and the command: same counts, errors,
duplicates and split, line for line; big ones go to the worker with a status URL."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from annotate.models import ImportBatch, Item
from annotate.services.projects import project_create

pytestmark = pytest.mark.django_db

ROWS = [
    {"prompt": "Where is my parcel?", "response": "It ships tomorrow.", "provenance": "distilled"},
    {
        "prompt": "Refund?",
        "chosen": "Within 30 days.",
        "rejected": "No.",
        "chosen_model": "big",
        "rejected_model": "small",
    },
    {"prompt": ""},  # bad: empty prompt
    {"prompt": "Where is my parcel?", "response": "It ships tomorrow."},  # duplicate of line 1
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"prompt": "x", "colour": "red"},  # bad: unknown key
] + [{"prompt": f"Question {i}", "response": f"Answer {i}"} for i in range(40)]


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def twin(admin_user, settings, tmp_path):
    """A second project with the same split seed and eval share, for the command's run."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return project_create(name="Twin", slug="twin", task_kinds=["gold", "preference", "rubric"], created_by=admin_user)


def outcome(batch: ImportBatch) -> dict:
    batch.refresh_from_db()
    items = Item.objects.filter(import_batch=batch)
    return {
        "status": batch.status,
        "counts": (batch.rows_seen, batch.rows_imported, batch.rows_rejected, batch.duplicates),
        "errors": batch.errors,
        "items": sorted(items.values_list("source_line", "content_hash", "split", "kind", "provenance")),
    }


@pytest.mark.parametrize("mode", ["skip_bad", "all_or_nothing"])
def test_an_api_import_equals_the_commands_on_the_same_file(api_as, admin_user, project, twin, tmp_path, mode):
    data = jsonl(ROWS)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    api = api_as(admin_user)
    response = api(
        "POST",
        f"/projects/support/imports/rows?mode={mode}&filename=rows.jsonl",
        data,
        content_type="application/x-ndjson",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    with pytest.raises(CommandError):  # exit 2 (partly) or 1 (nothing): both raise
        call_command("import_items", "twin", str(path), *(["--skip-bad"] if mode == "skip_bad" else []))
    by_api = outcome(ImportBatch.objects.get(pk=body["id"]))
    by_cli = outcome(ImportBatch.objects.get(project=twin))
    assert by_api == by_cli
    assert body["rows_rejected"] == 2 and body["duplicates"] == (1 if mode == "skip_bad" else 0)
    assert [e["line"] for e in body["errors"]] == [3, 6]
    if mode == "skip_bad":
        assert body["status"] == "succeeded" and body["rows_imported"] == 43
        assert [d["line"] for d in body["duplicate_rows"]] == [4]
        assert {split for _, _, split, _, _ in by_api["items"]} <= {"train", "eval"}
    else:
        assert body["status"] == "failed" and not Item.objects.exists()


def test_a_multipart_upload_imports_like_the_page(api_as, admin_user, project, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    upload = SimpleUploadedFile("data.csv", b"prompt,response\nHi,Hello\nBye,Ciao\n", content_type="text/csv")
    response = api_as(admin_user).client.post(
        "/api/v1/projects/support/imports",
        {"file": upload, "mode": "all_or_nothing", "provenance": "rule_based"},
        HTTP_AUTHORIZATION=f"Bearer {api_as(admin_user).token}",
    )
    assert response.status_code == 201, response.content
    assert response.json()["rows_imported"] == 2
    assert set(Item.objects.values_list("provenance", flat=True)) == {"rule_based"}


def test_every_bad_line_is_listed_beyond_the_first_ones_kept_on_the_batch(
    api_as, admin_user, project, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    rows = [{"prompt": ""} for _ in range(250)] + [{"prompt": "fine", "response": "ok"}]
    api = api_as(admin_user)
    body = api("POST", "/projects/support/imports/rows", jsonl(rows), content_type="application/x-ndjson").json()
    assert body["status"] == "failed" and len(body["errors"]) == 200  # the batch keeps the first 200
    listed = api("GET", body["errors_url"])
    lines = [json.loads(line) for line in b"".join(listed.streaming_content).splitlines()]
    assert [e["line"] for e in lines] == list(range(1, 251))
    assert all("prompt" in e["message"] for e in lines)


def test_a_big_import_goes_to_the_worker_and_reports_a_status_url(
    api_as, admin_user, project, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.GOLDSET_IMPORT_INLINE_MAX_BYTES = 100
    api = api_as(admin_user)
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(30)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api("POST", "/projects/support/imports/rows", jsonl(rows), content_type="application/x-ndjson")
    assert response.status_code == 202 and len(callbacks) == 1
    body = response.json()
    assert response["Location"] == body["status_url"] and body["status"] == "queued"
    from annotate.tasks import import_run

    import_run(body["id"])  # what the worker does with the message
    done = api("GET", body["status_url"]).json()
    assert done["status"] == "succeeded" and done["rows_imported"] == 30


def test_rows_without_a_format_are_refused_with_the_field_named(api_as, admin_user, project):
    response = api_as(admin_user)(
        "POST", "/projects/support/imports/rows", b"x", content_type="application/octet-stream"
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"in": "query", "field": "file_format", "message": "is missing"}]
    assert not ImportBatch.objects.exists()


def test_a_file_name_as_long_as_the_field_allows_is_imported(api_as, admin_user, project, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    name = "r" * 249 + ".jsonl"
    response = api_as(admin_user)(
        "POST", f"/projects/support/imports/rows?filename={name}", jsonl(ROWS[:2]), content_type="application/x-ndjson"
    )
    assert response.status_code == 201 and response.json()["filename"] == name
