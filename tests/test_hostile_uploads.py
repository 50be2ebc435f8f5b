"""Uploads and downloads under attack: oversized uploads refused with a message before they fill the disk,
path traversal and odd names in upload file names, and artifact downloads that reach outside their folder."""

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.models import ImportBatch, Item
from annotate.services import imports

pytestmark = pytest.mark.django_db

ROW = b'{"prompt": "Where is my order?", "response": "In transit."}\n'


@pytest.fixture
def small_limit(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.GOLDSET_UPLOAD_MAX_BYTES = 10_000
    return settings


def _stored_uploads() -> list[Path]:
    folder = imports.imports_dir() / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_an_oversized_upload_on_the_page_is_refused_with_a_message_and_nothing_kept(
    client, admin_user, project, small_limit
):
    client.force_login(admin_user)
    big = SimpleUploadedFile("big.jsonl", ROW * 2000)  # ~120 kB over a 10 kB limit
    response = client.post(
        f"/projects/{project.slug}/imports/", {"file": big, "mode": "all_or_nothing", "provenance": "human"}
    )
    assert response.status_code == 413
    text = response.content.decode()
    assert "larger than the upload limit of 0.0 MB" in text or "larger than the upload limit" in text
    assert "GOLDSET_UPLOAD_MAX_BYTES" in text
    assert not ImportBatch.objects.exists() and _stored_uploads() == [] and not Item.objects.exists()
    # A file under the limit still goes through.
    ok = SimpleUploadedFile("ok.jsonl", ROW * 10)
    response = client.post(
        f"/projects/{project.slug}/imports/", {"file": ok, "mode": "all_or_nothing", "provenance": "human"}
    )
    assert response.status_code == 302 and Item.objects.count() == 1  # ten identical rows: one item


def test_an_oversized_upload_through_the_api_is_413(client, admin_user, project, small_limit):
    from annotate.services.tokens import api_token_create

    _, token = api_token_create(user=admin_user, name="t", scope="admin")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    multipart = client.post(
        f"/api/v1/projects/{project.slug}/imports",
        {"file": SimpleUploadedFile("big.jsonl", ROW * 2000), "mode": "all_or_nothing"},
        **auth,
    )
    assert multipart.status_code == 413 and "GOLDSET_UPLOAD_MAX_BYTES" in multipart.json()["detail"]
    declared = client.generic(
        "POST", f"/api/v1/projects/{project.slug}/imports/rows", ROW * 2000, content_type="application/x-ndjson", **auth
    )
    assert declared.status_code == 413
    assert not ImportBatch.objects.exists() and _stored_uploads() == []


def test_a_streamed_body_without_a_length_is_cut_off_at_the_limit(project, admin_user, small_limit):
    """A chunked body (no Content-Length) is counted as it is copied: the copy stops and is removed."""
    from django.core.exceptions import ValidationError

    endless = io.BytesIO(ROW * 5000)
    with pytest.raises(ValidationError, match="upload limit"):
        imports.import_batch_create(project=project, uploaded_by=admin_user, filename="rows.jsonl", upload=endless)
    assert endless.tell() <= 10_000 + 1024 * 1024  # read at most one chunk past the limit
    assert not ImportBatch.objects.exists() and _stored_uploads() == []


@pytest.mark.parametrize(
    "name",
    [
        "../../../../etc/passwd.jsonl",
        "..\\..\\windows\\system32.jsonl",
        "/abs/path.jsonl",
        "a\x00b.jsonl",
        "line\nbreak.jsonl",
        "<script>alert(1)</script>.jsonl",
        "CON.jsonl",
        ".jsonl",
        "é" * 300 + ".jsonl",
    ],
)
def test_odd_upload_names_stay_inside_the_uploads_folder_and_are_shown_escaped(
    client, admin_user, project, small_limit, name
):
    client.force_login(admin_user)
    upload = SimpleUploadedFile("x.jsonl", ROW)
    upload.name = name  # as a client may send it, beyond what the browser would
    batch = imports.import_batch_submit(project=project, uploaded_by=admin_user, upload=upload, filename=name)
    root = (imports.imports_dir() / "uploads").resolve()
    assert "/" not in batch.filename and "\\" not in batch.filename.replace("\\\\", "")
    if batch.stored_path:
        assert root in Path(batch.stored_path).resolve().parents
    page = client.get(f"/projects/{project.slug}/imports/{batch.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in page


def test_an_artifact_download_takes_nothing_from_outside_the_adapter_folder(client, admin_user, settings, tmp_path):
    from training.models import TrainingJob, TrainingSnapshot

    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    adapter = settings.ARTIFACTS_DIR / "job-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "leak.txt").symlink_to(secret)
    (adapter / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    snapshot = TrainingSnapshot.objects.create(name="s", sha256="d" * 64)
    job = TrainingJob.objects.create(
        snapshot=snapshot, base_model="m", method="sft", config={}, status="succeeded", output_dir=str(adapter.parent)
    )
    outside = TrainingJob.objects.create(
        snapshot=snapshot, base_model="m", method="sft", config={}, status="succeeded", output_dir=str(tmp_path)
    )
    traversal = TrainingJob.objects.create(
        snapshot=snapshot,
        base_model="m",
        method="sft",
        config={},
        status="succeeded",
        output_dir=str(settings.ARTIFACTS_DIR / ".." / ".."),
    )
    client.force_login(admin_user)
    response = client.get(f"/training/jobs/{job.pk}/adapter.zip")
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert names == ["adapter_config.json"]
    assert client.get(f"/training/jobs/{outside.pk}/adapter.zip").status_code == 404
    assert client.get(f"/training/jobs/{traversal.pk}/adapter.zip").status_code == 404
