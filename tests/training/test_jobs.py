"""Jobs end to end in this process: the gpu task function called directly (covers SQLite runs too)."""

import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from tests.training.conftest import FAST, queue_job
from training import selectors, services
from training.models import JobProgress, PreflightSecret, SnapshotCheck, TrainingJob, TrainingPreflight

pytestmark = [pytest.mark.django_db, pytest.mark.training]


def create(snapshot, model, admin, *, method="sft", **config):
    return queue_job(snapshot, model, admin, method=method, **config)


def preflight_of(snapshot, model, admin, *, method="sft", **config) -> TrainingPreflight:
    """A preflight requested and run here, as the preflight worker runs it."""
    from training.tasks import training_preflight_run

    preflight = services.training_preflight_request(
        snapshot=snapshot, base_model=model, method=method, config={**FAST, **config}, created_by=admin
    )
    training_preflight_run(preflight.pk, preflight.worker_secret)
    preflight.refresh_from_db()
    return preflight


def run(job):
    from training.tasks import training_job_run

    outcome = training_job_run(job.pk, job.worker_secret)
    job.refresh_from_db()
    return outcome


def generate(base_model: str, adapter: Path) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), str(adapter))
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How do I reset my password?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    return tokenizer.decode(out[0, ids.shape[1] :])


def test_an_sft_job_trains_qlora_records_progress_and_leaves_a_complete_reloadable_adapter(
    trainable_snapshot, tiny_model, in_process, admin_user
):
    job = create(trainable_snapshot, tiny_model, admin_user, method="sft")
    assert job.status == "queued" and job.preflight["ok"]
    assert run(job) == "succeeded", job.error
    assert job.status == "succeeded" and job.finished_at and job.heartbeat_at
    rows = list(job.progress.order_by("step"))
    assert [r.step for r in rows] == [2, 4, 6]
    assert all(math.isfinite(r.loss) and r.learning_rate > 0 and r.grad_norm is not None for r in rows)
    assert rows[0].tokens_per_second > 0 and rows[0].total_steps == 6
    assert job.step == 6 and math.isfinite(job.loss)

    adapter = Path(job.output_dir) / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "manifest.json"} <= {
        p.name for p in adapter.iterdir()
    }
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["job_id"] == job.pk
    assert manifest["snapshot"]["sha256"] == trainable_snapshot.sha256
    assert manifest["base_model"]["source"] == "local" and len(manifest["base_model"]["sha256"]) == 64
    assert manifest["config"]["quant_type"] == "nf4" and manifest["config"]["lora_r"] == 16
    assert manifest["evalset_versions_checked"] == [{"id": 1, "name": "support-eval v1", "sha256": "e" * 64}]
    assert set(manifest["library_versions"]) >= {"torch", "transformers", "peft", "trl", "bitsandbytes"}
    assert {"cpu_count", "cuda", "cudnn", "driver"} <= set(manifest["hardware"])
    assert len(manifest["code_version"]["git_commit"]) == 40
    sft = manifest["metrics"]["sft"]
    assert math.isfinite(sft["train_loss"]) and sft["steps"] == 6
    assert sft["batch"] == {"per_device": 2, "gradient_accumulation": 1, "processes": 1, "global": 2}
    assert sft["warmup_steps"] == 1 and sft["adapter_dtype"] == "float32"
    assert sft["fit"]["examples"] == 8 and sft["fit"]["kept"] == 8 and sft["fit"]["left_out"] == 0
    # QLoRA on the CPU: every linear layer of the base (but the output head) was 4-bit NF4.
    assert sft["base_linear_layers_4bit"] == sft["base_linear_layers"] - 1 > 0
    assert "database role" in job.log_tail and "[sft] step 6/6" in job.log_tail
    assert isinstance(generate(tiny_model, adapter), str)


def test_a_dpo_job_records_reward_margins_and_accuracy(trainable_snapshot, tiny_model, in_process, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user, method="dpo", logging_steps=1)
    assert run(job) == "succeeded", job.error
    rows = list(job.progress.order_by("step"))
    assert len(rows) == 6 and all(r.phase == "dpo" for r in rows)
    assert abs(rows[0].loss - math.log(2)) < 1e-3  # DPO starts at ln 2: the policy equals the reference
    assert rows[-1].reward_margin > rows[0].reward_margin
    assert 0 <= rows[-1].reward_accuracy <= 1
    assert (Path(job.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_sft_then_dpo_trains_dpo_on_the_sft_adapter(trainable_snapshot, tiny_model, in_process, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user, method="sft_dpo", logging_steps=1)
    assert run(job) == "succeeded", job.error
    assert set(job.progress.values_list("phase", flat=True)) == {"sft", "dpo"}
    # The DPO policy starts exactly at its reference, the SFT adapter (not a bf16-rounded copy of it).
    first = job.progress.filter(phase="dpo").order_by("step").first()
    assert first.step == 1 and abs(first.loss - math.log(2)) < 1e-6 and first.reward_margin == 0
    assert set(job.manifest["metrics"]) == {"sft", "dpo"}
    adapter = Path(job.output_dir) / "adapter"
    assert not (adapter / "ref").exists()  # the frozen reference copy is not shipped
    assert isinstance(generate(tiny_model, adapter), str)


def test_cancel_stops_at_the_next_step_keeps_a_checkpoint_and_the_job_resumes_from_it(
    trainable_snapshot, tiny_model, in_process, admin_user, monkeypatch
):
    from training.tasks import DbSink

    job = create(trainable_snapshot, tiny_model, admin_user, method="sft", max_steps=12, save_steps=100)
    original = DbSink.progress

    def progress_then_cancel(self, row):
        original(self, row)
        services.training_job_cancel(job=TrainingJob.objects.get(pk=self.job_id))  # as the web side would

    monkeypatch.setattr(DbSink, "progress", progress_then_cancel)
    assert run(job) == "cancelled"
    assert job.status == "cancelled" and job.cancel_requested
    assert job.step == 3 and job.step < 12  # the step it stopped at, where the checkpoint was saved
    assert Path(job.last_checkpoint).name == "checkpoint-3" and Path(job.last_checkpoint).is_dir()
    monkeypatch.setattr(DbSink, "progress", original)

    resumed = services.training_job_resume(job=job, created_by=admin_user)
    assert resumed.resume_from == job.output_dir and resumed.retry_of == job
    assert run(resumed) == "succeeded", resumed.error
    assert "resuming from checkpoint-3" in resumed.log_tail
    assert min(resumed.progress.values_list("step", flat=True)) > 3


def test_a_queued_job_is_cancelled_at_once_and_never_runs(trainable_snapshot, tiny_model, in_process, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user)
    services.training_job_cancel(job=job)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert run(job) == "not claimed"
    assert job.progress.count() == 0
    with pytest.raises(ValidationError, match="already cancelled: there is nothing to cancel"):
        services.training_job_cancel(job=job)


def test_a_config_that_does_not_fit_the_model_fails_its_preflight_and_cannot_be_queued(
    trainable_snapshot, tiny_model, admin_user
):
    preflight = preflight_of(
        trainable_snapshot, tiny_model, admin_user, max_length=8192, target_modules=["q_proj", "qkv"]
    )
    assert preflight.status == "failed"
    assert "max length 8192 exceeds the model's 256" in preflight.message
    assert "target module(s) qkv do not exist in this llama model: its linear layers are" in preflight.message
    with pytest.raises(ValidationError, match="only a passed preflight can queue its job"):
        services.training_job_create(preflight=preflight, created_by=admin_user)
    assert TrainingJob.objects.count() == 0


def test_a_passed_preflight_queues_one_job_only(trainable_snapshot, tiny_model, admin_user):
    preflight = preflight_of(trainable_snapshot, tiny_model, admin_user)
    assert preflight.status == "succeeded" and preflight.progress == 1.0 and preflight.result["ok"]
    job = services.training_job_create(preflight=preflight, created_by=admin_user)
    assert job.status == "queued" and job.preflight == preflight.result and job.config == preflight.config
    with pytest.raises(ValidationError, match=f"Job {job.pk} was already queued from this preflight"):
        services.training_job_create(preflight=preflight, created_by=admin_user)
    assert TrainingJob.objects.count() == 1


def test_an_impossible_config_is_refused_in_words_before_any_preflight(trainable_snapshot, tiny_model, admin_user):
    with pytest.raises(ValidationError, match="lora_r must be at least 1"):
        services.training_preflight_request(
            snapshot=trainable_snapshot,
            base_model=tiny_model,
            method="sft",
            config={"lora_r": 0},
            created_by=admin_user,
        )
    assert TrainingPreflight.objects.count() == 0


def test_a_method_without_matching_data_fails_its_preflight(project, tiny_model, admin_user):
    from tests.training.conftest import approve, make_item

    approve(make_item(project, kind="gold", prompt="Only gold here"), {"action": "write", "answer": "yes"})
    snapshot = services.snapshot_create(name="gold only", projects=[project], created_by=admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    preflight = preflight_of(snapshot, tiny_model, admin_user, method="dpo")
    assert preflight.status == "failed" and "no DPO pairs" in preflight.message


def test_an_unchecked_or_failed_snapshot_cannot_be_trained_on(approved_data, tiny_model, admin_user):
    snapshot = services.snapshot_create(name="unchecked", projects=[approved_data], created_by=admin_user)
    with pytest.raises(ValidationError, match="Snapshot unchecked has not passed a contamination check"):
        create(snapshot, tiny_model, admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    preflight = preflight_of(snapshot, tiny_model, admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=False, threshold=0.5)
    # Checked again when the passed preflight queues its job: the verdict may have changed meanwhile.
    with pytest.raises(ValidationError, match="failed its contamination check"):
        services.training_job_create(preflight=preflight, created_by=admin_user)


def test_the_worker_also_refuses_a_snapshot_whose_latest_check_failed(
    trainable_snapshot, tiny_model, in_process, admin_user
):
    job = create(trainable_snapshot, tiny_model, admin_user)
    SnapshotCheck.objects.create(snapshot=trainable_snapshot, passed=False, threshold=0.5)
    assert run(job) == "failed"
    assert "failed its contamination check" in job.error


def test_a_failure_during_training_reaches_the_job_page_in_words(
    trainable_snapshot, tiny_model, in_process, admin_user, tmp_path
):
    import shutil

    moved = tmp_path / "model"
    shutil.copytree(tiny_model, moved)
    job = create(trainable_snapshot, str(moved), admin_user)
    shutil.rmtree(moved)  # gone between the preflight and the run
    assert run(job) == "failed"
    assert job.error.startswith("Cannot load the tokenizer of")
    assert "Give a local directory" in job.error


def test_a_running_job_without_heartbeat_is_failed_by_the_periodic_check(trainable_snapshot, tiny_model, admin_user):
    from training.tasks import training_jobs_fail_stale

    job = create(trainable_snapshot, tiny_model, admin_user)
    fresh = create(trainable_snapshot, tiny_model, admin_user)
    long_ago = timezone.now() - timedelta(minutes=30)
    TrainingJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=long_ago, worker="gpu-1")
    TrainingJob.objects.filter(pk=fresh.pk).update(status="running", heartbeat_at=timezone.now())
    assert training_jobs_fail_stale(stale_after_s=300) == [job.pk]
    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.status == "failed" and "Lost the worker's heartbeat" in job.error and "gpu-1" in job.error
    assert fresh.status == "running"


def test_a_failed_job_is_retried_with_the_same_snapshot_and_config(trainable_snapshot, tiny_model, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user, lora_r=8)
    with pytest.raises(ValidationError, match="Only a failed or cancelled job can be retried"):
        services.training_job_retry(job=job, created_by=admin_user)
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", error="boom")
    job.refresh_from_db()
    retry = services.training_job_retry(job=job, created_by=admin_user)
    assert (retry.snapshot_id, retry.base_model, retry.config, retry.status) == (
        job.snapshot_id,
        job.base_model,
        job.config,
        "queued",
    )
    with pytest.raises(ValidationError, match="saved no checkpoint"):
        services.training_job_resume(job=job, created_by=admin_user)


def test_waiting_jobs_know_their_place_in_the_queue(trainable_snapshot, tiny_model, admin_user):
    jobs = [create(trainable_snapshot, tiny_model, admin_user) for _ in range(3)]
    TrainingJob.objects.filter(pk=jobs[0].pk).update(status="running")
    places = {j.pk: j.queue_place for j in selectors.job_list_for_admin(user=admin_user)}
    assert places == {jobs[0].pk: None, jobs[1].pk: 1, jobs[2].pk: 2}


def test_queueing_sends_the_preflight_and_the_job_to_their_queues_on_commit(
    trainable_snapshot, tiny_model, admin_user, django_capture_on_commit_callbacks, monkeypatch
):
    from training.tasks import training_job_run, training_preflight_run

    sent = []
    monkeypatch.setattr(training_preflight_run, "apply_async", lambda *a, **kw: sent.append(("preflight", a, kw)))
    monkeypatch.setattr(training_job_run, "apply_async", lambda *a, **kw: sent.append(("job", a, kw)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = create(trainable_snapshot, tiny_model, admin_user)
    assert len(callbacks) == 2
    (_, (preflight_args,), preflight_kw), (_, (job_args,), job_kw) = sent
    assert [kind for kind, _, _ in sent] == ["preflight", "job"]
    assert preflight_args[0] == job.preflight_run.pk and job_args == (job.pk, job.worker_secret)
    stored = PreflightSecret.objects.get(preflight=job.preflight_run).secret_sha256
    assert stored == services.job_secret_hash(preflight_args[1])  # the preflight's secret, only as its hash
    # The secrets travel only in the messages, never in a worker's log line.
    assert preflight_args[1] not in preflight_kw["argsrepr"] and job.worker_secret not in job_kw["argsrepr"]
    from config.celery import app

    assert app.amqp.router.route({}, "training.tasks.training_job_run")["queue"].name == "gpu"
    assert app.amqp.router.route({}, "training.tasks.training_preflight_run")["queue"].name == "preflight"
    assert app.amqp.router.route({}, "training.tasks.training_jobs_fail_stale")["queue"].name == "default"


def test_the_merge_command_bakes_the_adapter_into_its_base(
    trainable_snapshot, tiny_model, in_process, admin_user, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job = create(trainable_snapshot, tiny_model, admin_user)
    assert run(job) == "succeeded", job.error
    adapter = Path(job.output_dir) / "adapter"
    call_command("merge_adapter", str(adapter), str(tmp_path / "merged"), "--dtype", "float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)
    assert (tmp_path / "merged" / "goldset_manifest.json").is_file()


def test_progress_rows_are_unique_per_phase_and_step(trainable_snapshot, tiny_model, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user)
    row = {
        "phase": "sft",
        "step": 2,
        "total_steps": 6,
        "epoch": 1.0,
        "loss": 1.0,
        "learning_rate": 1e-3,
        "grad_norm": 0.5,
        "tokens_per_second": 10.0,
        "reward_margin": None,
        "reward_accuracy": None,
    }
    services.training_job_claim(job_id=job.pk, secret=job.worker_secret, worker="w", using="default")
    services.training_job_progress_add(job_id=job.pk, secret=job.worker_secret, row=row, using="default")
    again = {**row, "loss": 2.0}
    services.training_job_progress_add(job_id=job.pk, secret=job.worker_secret, row=again, using="default")
    assert list(JobProgress.objects.filter(job=job).values_list("loss", flat=True)) == [1.0]


def test_the_accelerate_command_runs_one_process_per_gpu_with_ddp():
    from training.launch import accelerate_command

    command = accelerate_command(num_processes=4, spec_path=Path("spec.json"), port=29611)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[command.index("--main_process_port") + 1] == "29611"
    assert command[-3:] == ["-m", "training.launch", "spec.json"]
    single = accelerate_command(num_processes=1, spec_path=Path("spec.json"))
    assert "--multi_gpu" not in single and "accelerate.commands.launch" in single
    # On a CPU the same launcher starts both ranks (gloo), not one process as --cpu would.
    cpu = accelerate_command(num_processes=2, spec_path=Path("spec.json"), cpu=True)
    assert "accelerate.commands.launch" in cpu and "--multi_gpu" in cpu and "--cpu" not in cpu


def test_a_job_trains_data_parallel_in_two_processes_with_one_config_and_rank_0_reports_back(
    trainable_snapshot, tiny_model, in_process, admin_user, settings
):
    # Two ranks through accelerate launch with the gloo backend on the CPU: the DDP path a multi-GPU worker
    # takes (NCCL there).
    settings.TRAINING_LAUNCHER = "accelerate"
    settings.TRAINING_GPUS = "2"
    job = create(trainable_snapshot, tiny_model, admin_user, method="sft")
    assert run(job) == "succeeded", job.error + job.log_tail
    assert "launching 2 process(es)" in job.log_tail
    assert [p.step for p in job.progress.order_by("step")] == [2, 4, 6]  # once, from rank 0 only
    assert job.manifest["job_id"] == job.pk and job.manifest["hardware"]["world_size"] == 2
    sft = job.manifest["metrics"]["sft"]
    # Both ranks trained every step, with the settings rank 0 chose, so their gradients weigh the same.
    assert [r["rank"] for r in sft["ranks"]] == [0, 1]
    assert {(r["batch_size"], r["gradient_accumulation"], r["activation_checkpointing"]) for r in sft["ranks"]} == {
        (2, 1, False)
    }
    assert [r["steps"] for r in sft["ranks"]] == [6, 6]
    assert sft["batch"] == {"per_device": 2, "gradient_accumulation": 1, "processes": 2, "global": 4}
    assert (Path(job.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


def _adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_a_short_low_lr_dpo_phase_moves_most_adapter_weights(trainable_snapshot, tiny_model, in_process, admin_user):
    import torch

    # The case: DPO at lr 5e-6 on top of an SFT adapter. In bf16 a 5e-6 Adam step on a weight of
    # 0.01 rounds away, so most lora_A elements would never move.
    job = create(
        trainable_snapshot,
        tiny_model,
        admin_user,
        method="sft_dpo",
        max_steps=4,
        logging_steps=2,
        save_steps=100,
        dpo_learning_rate=5e-6,
    )
    assert run(job) == "succeeded", job.error
    before = _adapter_weights(Path(job.output_dir) / "sft" / "adapter")
    after = _adapter_weights(Path(job.output_dir) / "adapter")
    for part in ("lora_A", "lora_B"):
        names = [n for n in before if part in n]
        moved = sum(int((after[n] != before[n]).sum()) for n in names)
        total = sum(before[n].numel() for n in names)
        assert moved / total > 0.9, f"only {moved / total:.1%} of the {part} elements changed"
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert job.manifest["metrics"]["dpo"]["adapter_dtype"] == "float32"


def test_the_first_non_finite_gradient_fails_the_job_with_its_step_and_last_good_checkpoint(
    trainable_snapshot, tiny_model, in_process, admin_user
):
    import re

    import torch

    # An absurd learning rate: the weights blow up after the first update and the next gradient is NaN.
    job = create(trainable_snapshot, tiny_model, admin_user, learning_rate=1e30, logging_steps=1, save_steps=1)
    assert run(job) == "failed"
    found = re.search(r"The SFT gradient norm became nan at step (\d+) \(learning rate ([^)]+)\)", job.error)
    assert found, job.error
    step = int(found.group(1))
    assert step >= 2 and "training stopped before applying that step" in job.error
    good = Path(job.output_dir) / "sft" / f"checkpoint-{step - 1}"
    assert f"the last good checkpoint is {good}" in job.error
    assert job.last_checkpoint == str(good)
    assert not (Path(job.output_dir) / "sft" / f"checkpoint-{step}").exists()  # nothing saved after the NaN
    assert all(torch.isfinite(t).all() for t in _adapter_weights(good).values())
    assert max(job.progress.values_list("step", flat=True)) == step - 1
    # The failed job can be resumed from that checkpoint.
    assert services.training_job_resume(job=job, created_by=admin_user).resume_from == job.output_dir


def test_long_examples_lose_prompt_turns_never_answer_tokens_and_both_are_counted(
    project, tiny_model, in_process, admin_user
):
    from tests.training.conftest import approve, make_item

    system = {"role": "system", "content": "Be brief."}
    history = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "Noted."}]
    for i in range(3):
        item = make_item(
            project,
            kind="gold",
            prompt=f"long {i}",
            messages=[system, *history, {"role": "user", "content": f"How do I reset my password, case {i}?"}],
        )
        approve(item, {"action": "write", "answer": f"Open settings, then security {i}."})
    short = make_item(project, kind="gold", prompt="Where is my order?")
    approve(short, {"action": "write", "answer": "Track it from the orders page."})
    too_long = make_item(project, kind="gold", prompt="Tell me everything.")
    approve(too_long, {"action": "write", "answer": "thirty days " * 40})
    snapshot = services.snapshot_create(name="long", projects=[project], created_by=admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)

    preflight = preflight_of(snapshot, tiny_model, admin_user, max_length=48)
    assert preflight.status == "succeeded", preflight.message
    fit = preflight.result["stats"]["fit"]["sft"]
    assert (fit["examples"], fit["kept"], fit["prompt_truncated"], fit["left_out"]) == (5, 1, 3, 1)
    assert fit["left_out_items"] == [too_long.pk]
    assert any("1 SFT example(s) will be left out" in w for w in preflight.result["warnings"])
    job = services.training_job_create(preflight=preflight, created_by=admin_user)
    assert run(job) == "succeeded", job.error
    assert job.manifest["metrics"]["sft"]["fit"] == fit
    assert "3 prompt(s) cut from the left, 1 example(s) left out" in job.log_tail


def test_a_job_whose_steps_stop_is_failed_as_stalled_not_as_lost(trainable_snapshot, tiny_model, admin_user):
    from training.tasks import training_jobs_fail_stale

    stuck, slow, lost = (create(trainable_snapshot, tiny_model, admin_user) for _ in range(3))
    now = timezone.now()
    TrainingJob.objects.filter(pk=stuck.pk).update(
        status="running",
        heartbeat_at=now,  # the worker is alive...
        phase="sft",
        step=40,
        total_steps=100,
        step_advanced_at=now - timedelta(seconds=400),  # ...but no step for 400 s, over its 300 s limit
        stall_after_s=300,
        worker="gpu-2",
        last_checkpoint="/artifacts/job/sft/checkpoint-40",
    )
    TrainingJob.objects.filter(pk=slow.pk).update(
        status="running", heartbeat_at=now, step_advanced_at=now - timedelta(seconds=400), stall_after_s=600
    )
    TrainingJob.objects.filter(pk=lost.pk).update(status="running", heartbeat_at=now - timedelta(minutes=30))
    assert sorted(training_jobs_fail_stale(stale_after_s=300)) == sorted([stuck.pk, lost.pk])
    stuck.refresh_from_db()
    assert stuck.status == "failed" and stuck.error.startswith("Stalled: no training step finished for 400s")
    assert "SFT step 40 of 100" in stuck.error and "the limit is 300s" in stuck.error
    assert "resume it from its last checkpoint" in stuck.error and "Lost the worker" not in stuck.error
    assert TrainingJob.objects.get(pk=slow.pk).status == "running"
    assert TrainingJob.objects.get(pk=lost.pk).error.startswith("Lost the worker's heartbeat")


def test_a_worker_without_the_training_extra_says_how_to_install_it(
    trainable_snapshot, tiny_model, in_process, admin_user, monkeypatch
):
    import sys

    from training.tasks import training_preflight_run

    job = create(trainable_snapshot, tiny_model, admin_user)
    preflight = services.training_preflight_request(
        snapshot=trainable_snapshot, base_model=tiny_model, method="sft", config=FAST, created_by=admin_user
    )
    # As on a machine where these were never installed: importing them fails.
    for name in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)
    assert training_preflight_run(preflight.pk, preflight.worker_secret) == "failed"
    assert run(job) == "failed"
    preflight.refresh_from_db()
    for message in (preflight.message, job.error):
        assert "The training extra is not installed on the" in message
        assert "pip install torch==2.13.0 -e '.[train]'" in message
        assert "Traceback" not in message
