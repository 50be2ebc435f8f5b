import json

import pytest

from annotate.models import ImportBatch, Item
from tests.annotate.test_import_views import live_worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_an_admin_uploads_a_file_sees_upload_progress_and_the_result(
    live_server, login_page, project, admin_user, tmp_path, screenshot_dir
):
    rows = [{"prompt": f"<b>Where is order {i}?</b>", "response": "On its way."} for i in range(3000)]
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    page = login_page(admin_user)
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.click("text=Import data")
    page.wait_for_url(f"{live_server.url}/projects/{project.slug}/imports/")
    page.wait_for_load_state()
    page.evaluate(
        """document.addEventListener("htmx:beforeSend", (e) => e.detail.xhr.upload.addEventListener("progress",
             () => sessionStorage.setItem("upload", document.getElementById("upload-progress").value)))"""
    )
    page.set_input_files("input[name=file]", str(path))
    page.screenshot(path=str(screenshot_dir / "import-form.png"), full_page=True)
    page.click("text=Upload and import")
    page.wait_for_url(f"{live_server.url}/projects/{project.slug}/imports/*/")
    page.wait_for_selector("text=Imported 3000 of 3000 rows.")
    page.screenshot(path=str(screenshot_dir / "import-done.png"), full_page=True)

    # sessionStorage outlives the redirect: what the bar showed when the upload ended.
    assert page.evaluate("sessionStorage.getItem('upload')") == "100"
    assert Item.objects.filter(project=project).count() == 3000
    page.click("text=See the items")
    page.screenshot(path=str(screenshot_dir / "item-list.png"))
    assert page.locator("td", has_text="<b>Where is order 0?</b>").count() == 1, "HTML shown as text"


def test_the_batch_page_polls_until_the_import_finishes(live_server, login_page, project, admin_user):
    batch = ImportBatch.objects.create(
        project=project, filename="big.jsonl", file_format="jsonl", status="running", bytes_total=100, bytes_read=40
    )
    page = login_page(admin_user)
    with live_worker(batch.id):  # a worker holds the running batch (else the page finds it abandoned)
        page.goto(f"{live_server.url}/projects/{project.slug}/imports/{batch.id}/")
        assert page.locator("#import-progress[hx-trigger]").count() == 1
        ImportBatch.objects.filter(pk=batch.pk).update(
            status="succeeded", bytes_read=100, rows_seen=5, rows_imported=5, message="Imported 5 of 5 rows."
        )
    page.wait_for_selector("text=Imported 5 of 5 rows.", timeout=5000)
    assert page.locator("#import-progress[hx-trigger]").count() == 0, "polling stopped"
