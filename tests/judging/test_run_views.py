"""The generation run pages: admins start, watch, cancel and retry runs; nobody else sees them."""

import pytest

from evalsets.judging.models import GenerationRun
from evalsets.judging.services import runs

pytestmark = pytest.mark.django_db


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    return tmp_path


def test_an_admin_starts_a_run_from_the_form_with_its_decoding_settings(
    client, admin_user, eval_version, artifacts, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    page = client.get("/judging/runs/")
    assert page.status_code == 200 and b"Start a run" in page.content
    response = client.post(
        "/judging/runs/",
        {
            "label": "base",
            "version": eval_version.pk,
            "base_model": "/models/tiny",
            "temperature": "0.7",
            "top_p": "0.9",
            "max_new_tokens": "64",
            "seed": "3",
            "batch_size": "8",
        },
    )
    run = GenerationRun.objects.get()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.decoding == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 3, "batch_size": 8}
    assert run.prompt_count == 6 and runs.prompts_path(run.pk).is_file()

    detail = client.get(run.get_absolute_url())
    assert b"sampling" in detail.content and b"Waiting for a gpu worker" in detail.content
    fragment = client.get(run.get_absolute_url(), HTTP_HX_REQUEST="true")
    assert b'id="run-progress"' in fragment.content and b"<html" not in fragment.content
    assert fragment.status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/judging/runs/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == "cancelled" and not runs.prompts_path(run.pk).exists()
    stopped = client.get(run.get_absolute_url(), HTTP_HX_REQUEST="true")
    assert stopped.status_code == 286  # htmx stops polling a finished run
    client.post(f"/judging/runs/{run.pk}/retry/")
    assert GenerationRun.objects.filter(retry_of=run).count() == 1


def test_the_form_says_what_is_missing(client, admin_user, eval_version, artifacts):
    client.force_login(admin_user)
    response = client.post(
        "/judging/runs/",
        {"label": "x", "temperature": "0", "top_p": "1", "max_new_tokens": "8", "seed": "0", "batch_size": "4"},
    )
    assert response.status_code == 400
    assert b"Choose the eval set version" in response.content and b"Give the base model" in response.content
    assert not GenerationRun.objects.exists()


def test_reviewers_cannot_see_runs(client, alice, admin_user, eval_version, artifacts):
    from evalsets.judging.generate import DecodingConfig

    run = runs.generation_run_start(
        label="base", decoding=DecodingConfig(), created_by=admin_user, version=eval_version, base_model="m"
    )
    client.force_login(alice)
    for url in ("/judging/runs/", run.get_absolute_url()):
        assert client.get(url).status_code == 403
    assert client.post(f"/judging/runs/{run.pk}/cancel/").status_code == 403


def test_an_admin_creates_a_comparison_from_the_form(
    client, admin_user, alice, bob, eval_version, adapter_job, artifacts
):
    from annotate.models import Item
    from evalsets.judging.models import Comparison
    from tests.judging.test_comparison import finished_run

    base = finished_run(eval_version, admin_user, label="base", base_model="m")
    tuned = finished_run(eval_version, admin_user, label="tuned", job=adapter_job)
    client.force_login(admin_user)
    assert client.get("/judging/comparisons/").status_code == 200
    response = client.post(
        "/judging/comparisons/",
        {
            "name": "tuned vs base",
            "run_a": base.pk,
            "run_b": tuned.pk,
            "overlap_k": 2,
            "reviewers": [alice.pk, bob.pk],
            "seed": 0,
        },
    )
    comparison = Comparison.objects.get()
    assert response.status_code == 302 and response["Location"] == comparison.get_absolute_url()
    assert Item.objects.filter(project=comparison.project).count() == 6
    assert set(comparison.project.members.all()) == {admin_user, alice, bob}
    same = client.post(
        "/judging/comparisons/",
        {"name": "x", "run_a": base.pk, "run_b": base.pk, "overlap_k": 2, "reviewers": [alice.pk], "seed": 0},
    )
    assert same.status_code == 400 and b"Choose two different runs" in same.content
    page = client.get(comparison.get_absolute_url())
    assert page.status_code == 200 and b"No judgements yet" in page.content
