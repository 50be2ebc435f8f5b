import csv
import io
import json
from contextlib import contextmanager

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotate.models import ImportBatch, Item

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def upload(name: str, rows: list) -> SimpleUploadedFile:
    body = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    return SimpleUploadedFile(name, body, content_type="application/octet-stream")


def post_import(client, project, file, **fields):
    data = {"file": file, "mode": "all_or_nothing", "provenance": "human", "file_format": "", **fields}
    return client.post(reverse("annotate:import-new", kwargs={"slug": project.slug}), data)


def test_an_admin_sees_the_upload_form_with_a_progress_bar(client, admin_user, project):
    client.force_login(admin_user)
    response = client.get(reverse("annotate:import-new", kwargs={"slug": project.slug}))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'hx-encoding="multipart/form-data"' in html
    assert '<progress id="upload-progress"' in html
    assert "js/import-upload.js" in html


def test_an_admin_uploads_a_small_file_and_lands_on_the_finished_import(client, admin_user, project):
    client.force_login(admin_user)
    response = post_import(client, project, upload("rows.jsonl", [{"prompt": "Hi", "response": "Hello"}]))
    batch = ImportBatch.objects.get(project=project)
    assert response.status_code == 302
    assert response.url == reverse("annotate:import-detail", kwargs={"slug": project.slug, "batch_id": batch.id})
    assert batch.status == ImportBatch.Status.SUCCEEDED
    assert batch.uploaded_by == admin_user
    page = client.get(response.url).content.decode()
    assert "Imported 1 of 1 rows." in page
    assert "hx-trigger" not in page, "a finished import does not poll"


def test_an_htmx_upload_answers_with_a_client_redirect(client, admin_user, project):
    client.force_login(admin_user)
    response = client.post(
        reverse("annotate:import-new", kwargs={"slug": project.slug}),
        {
            "file": upload("rows.jsonl", [{"prompt": "Hi", "response": "Hello"}]),
            "mode": "all_or_nothing",
            "provenance": "human",
        },
        headers={"HX-Request": "true"},
    )
    batch = ImportBatch.objects.get(project=project)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse(
        "annotate:import-detail", kwargs={"slug": project.slug, "batch_id": batch.id}
    )


def test_a_file_of_unknown_type_is_refused_with_a_message_on_the_form(client, admin_user, project):
    client.force_login(admin_user)
    response = post_import(client, project, upload("rows.txt", [{"prompt": "Hi"}]))
    assert response.status_code == 400
    assert "Cannot tell the format of &#x27;rows.txt&#x27;: name it .jsonl or .csv, or choose the format." in (
        response.content.decode()
    )
    assert not ImportBatch.objects.exists()


def test_a_big_upload_goes_through_the_worker_task(
    client, admin_user, project, settings, django_capture_on_commit_callbacks
):
    settings.GOLDSET_IMPORT_INLINE_MAX_BYTES = 10
    client.force_login(admin_user)
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(20)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post_import(client, project, upload("rows.jsonl", rows))
    batch = ImportBatch.objects.get(project=project)
    assert batch.status == ImportBatch.Status.QUEUED, "not run during the request"
    assert len(callbacks) == 1

    from annotate.tasks import import_run

    import_run(batch.id)  # what the worker does with the message
    batch.refresh_from_db()
    assert batch.status == ImportBatch.Status.SUCCEEDED
    assert Item.objects.filter(project=project).count() == 20


@contextmanager
def live_worker(batch_id: int):
    """Another process holding the batch's liveness lock, as a worker running it does (config/liveness.py)."""
    from django.db import connection

    from annotate.services.imports import LIVENESS
    from config import liveness

    if connection.vendor == "postgresql":
        import psycopg

        with psycopg.connect(**connection.get_connection_params()) as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", [liveness._namespace(LIVENESS), batch_id])
            yield
        return
    import fcntl

    with open(liveness._lock_file(LIVENESS, batch_id), "w") as held:  # another open file: another lock owner
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def test_the_progress_fragment_polls_while_running_and_stops_when_done(client, admin_user, project):
    client.force_login(admin_user)
    batch = ImportBatch.objects.create(
        project=project,
        filename="big.jsonl",
        file_format="jsonl",
        status="running",
        bytes_total=1000,
        bytes_read=250,
        progress=0.25,
    )
    url = reverse("annotate:import-progress", kwargs={"slug": project.slug, "batch_id": batch.id})
    with live_worker(batch.id):  # else the page would find the batch abandoned, and fail it
        running = client.get(url, headers={"HX-Request": "true"})
    html = running.content.decode()
    assert running.status_code == 200
    assert html.lstrip().startswith('<section id="import-progress"')
    assert 'hx-trigger="every 1s"' in html
    assert 'aria-valuenow="25"' in html
    assert "<html" not in html

    ImportBatch.objects.filter(pk=batch.pk).update(status="succeeded", bytes_read=1000, message="Imported 9 of 9 rows.")
    done = client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286, "htmx stops polling on 286"
    assert "hx-trigger" not in done.content.decode()
    assert "Imported 9 of 9 rows." in done.content.decode()


def test_the_detail_page_lists_errors_escaped_and_offers_the_rejected_rows(client, admin_user, project):
    client.force_login(admin_user)
    response = post_import(
        client,
        project,
        upload("rows.jsonl", [{"prompt": "fine", "response": "ok"}, {"prompt": "x", "<script>alert(1)</script>": 1}]),
        mode="skip_bad",
    )
    page = client.get(response.url).content.decode()
    assert "unknown key &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;" in page
    assert "<script>alert(1)</script>" not in page
    rejected = client.get(
        reverse("annotate:import-rejected", kwargs={"slug": project.slug, "batch_id": ImportBatch.objects.get().id})
    )
    assert rejected.status_code == 200
    assert rejected["Content-Disposition"] == 'attachment; filename="rows-rejected.jsonl"'
    line = json.loads(b"".join(rejected.streaming_content).decode())
    assert line == {"prompt": "x", "<script>alert(1)</script>": 1}, "the row as uploaded"
    errors = client.get(
        reverse(
            "annotate:import-rejected-errors",
            kwargs={"slug": project.slug, "batch_id": ImportBatch.objects.get().id},
        )
    )
    assert errors["Content-Type"] == "text/csv; charset=utf-8"
    assert errors["Content-Disposition"] == 'attachment; filename="rows-rejected-errors.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(errors.streaming_content).decode())))
    assert rows[1][:3] == ["2", "1", "<script>alert(1)</script>"]
    assert rows[1][3].startswith("unknown key '<script>alert(1)</script>'; allowed keys are")


def test_the_detail_page_lists_duplicates_by_line(client, admin_user, project):
    client.force_login(admin_user)
    response = post_import(
        client, project, upload("d.jsonl", [{"prompt": "A", "response": "b"}, {"prompt": "a", "response": "B"}])
    )
    page = client.get(response.url).content.decode()
    assert 'id="import-near-duplicates"' in page and 'id="import-duplicates"' not in page
    assert "Near duplicate of line 1 in this file" in page


def test_a_reviewer_member_cannot_open_the_upload_page_or_import(client, alice, project):
    client.force_login(alice)
    url = reverse("annotate:import-new", kwargs={"slug": project.slug})
    assert client.get(url).status_code == 403
    assert post_import(client, project, upload("rows.jsonl", [{"prompt": "Hi"}])).status_code == 403
    assert not ImportBatch.objects.exists()


def test_a_non_member_gets_404_on_every_project_page(client, mallory, project):
    client.force_login(mallory)
    batch = ImportBatch.objects.create(project=project, filename="a.jsonl", file_format="jsonl")
    for name, kwargs in [
        ("annotate:import-new", {}),
        ("annotate:import-detail", {"batch_id": batch.id}),
        ("annotate:import-progress", {"batch_id": batch.id}),
        ("annotate:import-rejected", {"batch_id": batch.id}),
        ("annotate:item-list", {}),
    ]:
        assert client.get(reverse(name, kwargs={"slug": project.slug, **kwargs})).status_code == 404, name


def test_an_import_of_another_project_is_not_found(client, admin_user, project):
    from annotate.services.projects import project_create

    other = project_create(name="Other", slug="other", task_kinds=["gold"])
    batch = ImportBatch.objects.create(project=other, filename="a.jsonl", file_format="jsonl")
    client.force_login(admin_user)
    url = reverse("annotate:import-detail", kwargs={"slug": project.slug, "batch_id": batch.id})
    assert client.get(url).status_code == 404


def test_anonymous_users_are_sent_to_login(client, project):
    for url in [
        reverse("annotate:import-new", kwargs={"slug": project.slug}),
        reverse("annotate:item-list", kwargs={"slug": project.slug}),
    ]:
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("login"))


def test_the_item_list_escapes_html_in_prompts(client, alice, project):
    Item.objects.create(
        project=project,
        kind="gold",
        prompt="<script>alert('x')</script><b>bold</b>",
        content_hash="h" * 64,
        split="train",
    )
    client.force_login(alice)
    html = client.get(reverse("annotate:item-list", kwargs={"slug": project.slug})).content.decode()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert(" not in html


def test_the_item_list_filters_by_split_and_kind_and_pages(client, alice, project):
    for i in range(60):
        Item.objects.create(
            project=project,
            kind="gold" if i % 2 else "preference",
            prompt=f"prompt {i}",
            content_hash=f"{i:064d}",
            split="eval" if i % 3 == 0 else "train",
        )
    client.force_login(alice)
    url = reverse("annotate:item-list", kwargs={"slug": project.slug})
    page = client.get(url).content.decode()
    assert "60 items" in page and "Page 1 of 2" in page
    filtered = client.get(url, {"split": "eval", "kind": "gold"}, headers={"HX-Request": "true"}).content.decode()
    expected = sum(1 for i in range(60) if i % 2 and i % 3 == 0)
    assert f"{expected} items" in filtered
    assert filtered.lstrip().startswith('<div id="item-table">')


def test_the_item_list_searches_prompts_and_ids_and_links_staff_to_each_items_reviews(
    client, alice, admin_user, project
):
    for i in range(30):
        Item.objects.create(
            project=project, kind="gold", prompt=f"Where is parcel {i}?", content_hash=f"{i:064d}", split="train"
        )
    url = reverse("annotate:item-list", kwargs={"slug": project.slug})
    client.force_login(alice)
    found = client.get(url, {"q": "PARCEL 1"}).content.decode()  # case does not matter
    assert "11 items" in found  # 1, 10..19
    target = Item.objects.get(prompt="Where is parcel 7?")
    by_id = client.get(url, {"q": f"#{target.pk}"}).content.decode()
    assert "Where is parcel 7?" in by_id and "1 item" in by_id
    item_page = reverse("annotate:adjudication-item", kwargs={"slug": project.slug, "item_id": target.pk})
    assert item_page not in by_id, "reviewers do not see other reviews"
    none = client.get(url, {"q": "no such text"}).content.decode()
    assert "No items match these filters" in none and f'href="{url}"' in none
    client.force_login(admin_user)
    assert item_page in client.get(url, {"q": f"{target.pk}"}).content.decode()
    assert client.get(item_page).status_code == 200


def test_the_project_page_links_admins_to_import(client, admin_user, alice, project):
    client.force_login(admin_user)
    assert (
        reverse("annotate:import-new", kwargs={"slug": project.slug})
        in client.get(project.get_absolute_url()).content.decode()
    )
    client.force_login(alice)
    assert (
        reverse("annotate:import-new", kwargs={"slug": project.slug})
        not in client.get(project.get_absolute_url()).content.decode()
    )


def test_an_htmx_upload_with_errors_swaps_back_just_the_form_with_messages(client, admin_user, project):
    client.force_login(admin_user)
    response = client.post(
        reverse("annotate:import-new", kwargs={"slug": project.slug}),
        {"mode": "all_or_nothing", "provenance": "made_up"},
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<form id="import-form"')
    assert "This field is required." in html
    assert "Select a valid choice. made_up is not one of the available choices." in html
    assert not ImportBatch.objects.exists()
