"""Generation runs: one response per eval prompt, from the base or base + adapter, with recorded decoding and
model identity; the gpu worker's writes are secret-checked; the prompt file is the run's alone."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from evalsets.judging.generate import DecodingConfig
from evalsets.judging.models import GenerationOutput, GenerationRun
from evalsets.judging.services import runs
from tests.judging.conftest import run_here, start_run

pytestmark = [pytest.mark.django_db, pytest.mark.training]


def test_a_base_run_answers_every_eval_prompt_once_and_records_the_models_identity(
    eval_version, tiny_model, admin_user, shared_artifacts
):
    from training.provenance import model_fingerprint

    run = start_run(eval_version, admin_user, base_model=tiny_model)
    path = runs.prompts_path(run.pk)
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600
    written = path.read_text()
    records = list(eval_version.records.order_by("position"))
    assert all(r.prompt in written for r in records)
    assert not any(r.reference in written for r in records)  # reference answers never leave the web side

    assert run_here(run) == "succeeded", run.message + run.log_tail
    outputs = list(run.outputs.order_by("position"))
    assert [o.record_id for o in outputs] == [r.pk for r in records]
    assert all(o.model_generated and o.finish_reason in ("eos", "length") for o in outputs)
    assert all(0 < o.new_tokens <= 8 or o.finish_reason == "eos" for o in outputs)
    assert run.output_count == run.prompt_count == 6 and run.progress == 1.0
    assert run.model_identity["base_model"]["sha256"] == model_fingerprint(tiny_model)["sha256"]
    assert run.model_identity["adapter_manifest_sha256"] is None
    assert run.decoding == {**DecodingConfig().to_dict(), "max_new_tokens": 8, "batch_size": 4}
    assert run.responses_per_second > 0 and run.tokens_per_second > 0
    assert "responses/s" in run.log_tail and "batch of 4" in run.log_tail and "batch of 2" in run.log_tail
    assert not path.exists()  # the prompts are gone with the run


def test_greedy_runs_repeat_and_the_adapter_answers_differently(
    eval_version, tiny_model, adapter_job, admin_user, shared_artifacts
):
    import hashlib

    first = start_run(eval_version, admin_user, base_model=tiny_model, label="base")
    second = start_run(eval_version, admin_user, base_model=tiny_model, label="base again")
    tuned = start_run(eval_version, admin_user, job=adapter_job, label="support v1")
    for run in (first, second, tuned):
        assert run_here(run) == "succeeded", run.message + run.log_tail

    def texts(run):
        return list(run.outputs.order_by("position").values_list("text", flat=True))

    assert texts(first) == texts(second)
    assert texts(tuned) != texts(first)
    manifest = (adapter_job.output_dir + "/adapter/manifest.json").encode()
    with open(manifest, "rb") as fh:
        assert tuned.model_identity["adapter_manifest_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert tuned.adapter_dir.endswith("/adapter") and tuned.base_model == tiny_model


def test_sampling_is_seeded(eval_version, tiny_model, admin_user, shared_artifacts):
    settings = {"temperature": 1.5, "top_p": 0.9, "seed": 7}
    a, b = (start_run(eval_version, admin_user, base_model=tiny_model, **settings) for _ in range(2))
    c = start_run(eval_version, admin_user, base_model=tiny_model, **{**settings, "seed": 8})
    for run in (a, b, c):
        assert run_here(run) == "succeeded", run.message
    texts = [list(r.outputs.order_by("position").values_list("text", flat=True)) for r in (a, b, c)]
    assert texts[0] == texts[1] != texts[2]


def test_bad_decoding_settings_and_models_are_refused_in_words(eval_version, tiny_model, admin_user, shared_artifacts):
    with pytest.raises(ValidationError, match="top_p"):
        runs.decoding_parse({"top_p": 0})
    with pytest.raises(ValidationError, match="Unknown decoding settings beam"):
        runs.decoding_parse({"beam": 4})
    with pytest.raises(ValidationError, match="base model"):
        start_run(eval_version, admin_user)
    assert not GenerationRun.objects.exists()


def test_an_adapter_on_another_base_fails_the_run_with_the_reason(
    eval_version, tiny_model, adapter_job, admin_user, shared_artifacts, tmp_path
):
    import json
    from pathlib import Path

    manifest = Path(adapter_job.output_dir) / "adapter" / "manifest.json"
    saved = manifest.read_text()
    data = json.loads(saved)
    data["base_model"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    try:
        run = start_run(eval_version, admin_user, job=adapter_job)
        assert run_here(run) == "failed"
    finally:
        manifest.write_text(saved)
    assert "trained on a base model with sha256 000000000000" in run.message
    assert run.output_count == 0 and not runs.prompts_path(run.pk).exists()


def test_cancel_and_retry(eval_version, tiny_model, admin_user, shared_artifacts):
    run = start_run(eval_version, admin_user, base_model=tiny_model)
    runs.generation_run_cancel(run=run)
    assert run_here(run) == "not claimed" and run.status == "cancelled"
    with pytest.raises(ValidationError, match="nothing to cancel"):
        runs.generation_run_cancel(run=run)
    again = runs.generation_run_retry(run=run, created_by=admin_user)
    assert again.retry_of == run and again.decoding == run.decoding
    assert run_here(again) == "succeeded" and again.output_count == 6


def test_cancel_while_running_stops_after_the_batch_and_keeps_its_outputs(
    eval_version, tiny_model, admin_user, shared_artifacts, monkeypatch
):
    from evalsets.judging import tasks

    run = start_run(eval_version, admin_user, base_model=tiny_model, batch_size=2)
    calls = []

    def stop_after_first_batch(self):
        calls.append(1)
        if len(calls) == 2:  # the check before the second batch
            GenerationRun.objects.filter(pk=self.run_id).update(cancel_requested=True)
        return GenerationRun.objects.get(pk=self.run_id).cancel_requested

    monkeypatch.setattr(tasks.RunSink, "should_stop", stop_after_first_batch)
    assert run_here(run) == "cancelled"
    assert run.output_count == 2 and run.outputs.count() == 2
    assert "Cancelled after 2 responses" in run.message


def test_only_the_worker_with_the_runs_secret_writes_it(eval_version, tiny_model, admin_user, shared_artifacts):
    run = start_run(eval_version, admin_user, base_model=tiny_model)
    other = start_run(eval_version, admin_user, base_model=tiny_model)
    with pytest.raises(PermissionDenied, match="secret does not match"):
        runs.generation_run_claim(run_id=run.pk, secret=other.worker_secret, worker="x", using="default")
    assert runs.generation_run_claim(run_id=run.pk, secret=run.worker_secret, worker="x", using="default")
    with pytest.raises(PermissionDenied, match="may not write status"):
        runs.generation_run_update(run_id=run.pk, secret=run.worker_secret, using="default", status="succeeded")
    with pytest.raises(PermissionDenied, match="secret does not match"):
        runs.generation_outputs_add(run_id=run.pk, secret="guess", rows=[], using="default")
    row = {"position": 0, "record_id": None, "check_key": "", "text": "hi", "new_tokens": 1, "finish_reason": "eos"}
    assert runs.generation_outputs_add(run_id=run.pk, secret=run.worker_secret, rows=[row], using="default")
    out = GenerationOutput.objects.get(run=run)
    assert out.text_sha256 == __import__("hashlib").sha256(b"hi").hexdigest() and out.model_generated
    assert runs.generation_run_finish(
        run_id=run.pk, secret=run.worker_secret, status="failed", message="stopped", using="default"
    )
    assert not runs.generation_outputs_add(run_id=run.pk, secret=run.worker_secret, rows=[row], using="default")


def test_a_run_whose_worker_went_silent_is_failed_with_the_reason(eval_version, admin_user, shared_artifacts):
    from datetime import timedelta

    from django.utils import timezone

    from evalsets.judging.tasks import generation_runs_fail_stale

    silent, alive = (start_run(eval_version, admin_user, base_model="m") for _ in range(2))
    for run in (silent, alive):
        assert runs.generation_run_claim(run_id=run.pk, secret=run.worker_secret, worker="gpu", using="default")
    GenerationRun.objects.filter(pk=silent.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=400))
    assert generation_runs_fail_stale(300) == [silent.pk]
    silent.refresh_from_db()
    alive.refresh_from_db()
    assert silent.status == "failed" and "went silent for more than 300 s" in silent.message
    assert alive.status == "running" and not runs.prompts_path(silent.pk).exists()
    # The worker, if it wakes up, can no longer write the run.
    assert not runs.generation_run_update(run_id=silent.pk, secret=silent.worker_secret, using="default", progress=0.5)
