"""Jobs end to end in this process: the gpu task function called directly (covers SQLite runs too)."""

import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from tests.training.conftest import FAST
from training import selectors, services
from training.models import JobProgress, SnapshotCheck, TrainingJob

pytestmark = [pytest.mark.django_db, pytest.mark.training]


@pytest.fixture(autouse=True)
def preflight_here(monkeypatch):
    """The preflight in this process (the subprocess path has its own test): saves a second import of the stack."""
    from training.preflight import check

    monkeypatch.setattr(services, "_preflight", check)


def create(snapshot, model, admin, *, method="sft", django_capture_on_commit_callbacks=None, **config):
    return services.training_job_create(
        snapshot=snapshot, base_model=model, method=method, config={**FAST, **config}, created_by=admin
    )


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
    assert "cpu_count" in manifest["hardware"]
    sft = manifest["metrics"]["sft"]
    assert math.isfinite(sft["train_loss"]) and sft["steps"] == 6
    # QLoRA on the CPU: every linear layer of the base (but the output head) was 4-bit NF4.
    assert sft["base_linear_layers_4bit"] == sft["base_linear_layers"] - 1 > 0
    assert "database role" in job.log_tail and "[sft] step 6/6" in job.log_tail
    assert isinstance(generate(tiny_model, adapter), str)


def test_a_dpo_job_records_reward_margins_and_accuracy(trainable_snapshot, tiny_model, in_process, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user, method="dpo")
    assert run(job) == "succeeded", job.error
    rows = list(job.progress.order_by("step"))
    assert len(rows) == 3 and all(r.phase == "dpo" for r in rows)
    assert abs(rows[0].loss - math.log(2)) < 0.01  # DPO starts at ln 2: the policy equals the reference
    assert rows[-1].reward_margin > rows[0].reward_margin
    assert 0 <= rows[-1].reward_accuracy <= 1
    assert (Path(job.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_sft_then_dpo_trains_dpo_on_the_sft_adapter(trainable_snapshot, tiny_model, in_process, admin_user):
    job = create(trainable_snapshot, tiny_model, admin_user, method="sft_dpo")
    assert run(job) == "succeeded", job.error
    assert set(job.progress.values_list("phase", flat=True)) == {"sft", "dpo"}
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
    assert job.step == 2 and job.step < 12
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


def test_a_config_that_does_not_fit_the_model_is_refused_before_queueing(trainable_snapshot, tiny_model, admin_user):
    with pytest.raises(ValidationError) as caught:
        create(trainable_snapshot, tiny_model, admin_user, max_length=8192, target_modules=["q_proj", "qkv"])
    text = " ".join(caught.value.messages)
    assert "max length 8192 exceeds the model's 256" in text
    assert "target module(s) qkv do not exist in this llama model: its linear layers are" in text
    assert TrainingJob.objects.count() == 0


def test_an_impossible_config_is_refused_in_words(trainable_snapshot, tiny_model, admin_user):
    with pytest.raises(ValidationError, match="lora_r must be at least 1"):
        create(trainable_snapshot, tiny_model, admin_user, lora_r=0)


def test_a_method_without_matching_data_is_refused(project, tiny_model, admin_user):
    from tests.training.conftest import approve, make_item

    approve(make_item(project, kind="gold", prompt="Only gold here"), {"action": "write", "answer": "yes"})
    snapshot = services.snapshot_create(name="gold only", projects=[project], created_by=admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    with pytest.raises(ValidationError, match="no DPO pairs"):
        create(snapshot, tiny_model, admin_user, method="dpo")


def test_an_unchecked_or_failed_snapshot_cannot_be_trained_on(approved_data, tiny_model, admin_user):
    snapshot = services.snapshot_create(name="unchecked", projects=[approved_data], created_by=admin_user)
    with pytest.raises(ValidationError, match="Snapshot unchecked has not passed a contamination check"):
        create(snapshot, tiny_model, admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=False, threshold=0.5)
    with pytest.raises(ValidationError, match="failed its contamination check"):
        create(snapshot, tiny_model, admin_user)


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
    job = services._job_insert(
        snapshot=trainable_snapshot,
        base_model=str(tmp_path / "gone"),
        config=services.training_config_parse(method="sft", config=FAST),
        created_by=admin_user,
        preflight={},
    )
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


def test_queueing_sends_the_task_to_the_gpu_queue_on_commit(
    trainable_snapshot, tiny_model, admin_user, django_capture_on_commit_callbacks, monkeypatch
):
    from training.tasks import training_job_run

    sent = []
    monkeypatch.setattr(training_job_run, "apply_async", lambda *a, **kw: sent.append((a, kw)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = create(trainable_snapshot, tiny_model, admin_user)
    assert len(callbacks) == 1 and sent[0][0][0] == (job.pk, job.worker_secret)
    assert job.worker_secret not in sent[0][1]["argsrepr"]  # never in the worker's log
    from config.celery import app

    assert app.amqp.router.route({}, "training.tasks.training_job_run")["queue"].name == "gpu"
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


def test_a_job_trains_data_parallel_in_two_processes_and_rank_0_reports_back(
    trainable_snapshot, tiny_model, in_process, admin_user, settings
):
    # Two ranks with the gloo backend on the CPU: the DDP path a multi-GPU worker takes (NCCL there).
    settings.TRAINING_LAUNCHER = "accelerate"
    settings.TRAINING_GPUS = "2"
    job = create(trainable_snapshot, tiny_model, admin_user, method="sft")
    assert run(job) == "succeeded", job.error + job.log_tail
    assert "launching 2 process(es)" in job.log_tail
    assert [p.step for p in job.progress.order_by("step")] == [2, 4, 6]  # once, from rank 0 only
    assert job.manifest["job_id"] == job.pk and job.manifest["hardware"]["world_size"] == 2
    assert (Path(job.output_dir) / "adapter" / "adapter_model.safetensors").is_file()
