"""An artifacts directory the gpu worker cannot write: the job fails at once with that message, and no
half-written adapter is recorded or handed out."""

import errno
from pathlib import Path

import pytest

from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued_job(trainable_snapshot, admin_user, settings):
    from training import services
    from training.config import TrainingConfig

    settings.TRAINING_HEARTBEAT_THREAD = False
    return services._job_insert(
        snapshot=trainable_snapshot,
        base_model="a-base-model",
        config=TrainingConfig.from_dict({"method": "sft"}),
        created_by=admin_user,
        preflight={},
    )


def test_a_job_whose_artifacts_folder_cannot_be_made_fails_saying_so(queued_job, settings, tmp_path):
    from training.tasks import training_job_run

    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the folder should be")  # unwritable even for root
    settings.ARTIFACTS_DIR = blocker
    assert training_job_run(queued_job.pk, queued_job.worker_secret) == "failed"
    job = TrainingJob.objects.get(pk=queued_job.pk)
    assert job.status == "failed"
    assert f"Could not write the job's artifacts in {blocker}/job-{job.pk}" in job.error
    assert "GOLDSET_ARTIFACTS_DIR" in job.error and "retry the job" in job.error
    assert job.manifest in ({}, None) and job.last_checkpoint == ""


def test_a_full_disk_mid_run_names_the_disk_and_keeps_no_checkpoint(settings, tmp_path):
    from training.tasks import _failure

    class Sink:
        lines: list = []

        def log(self, line):
            self.lines.append(line)

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "job-3" / "adapter" / "model.safetensors"))
    reason, checkpoint = _failure(full, Sink())
    assert "No space left on device" in reason and "free space on that disk" in reason
    assert checkpoint == ""


def test_only_a_succeeded_jobs_adapter_can_be_downloaded(client, admin_user, trainable_snapshot, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    adapter = tmp_path / "job-x" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"half")
    job = TrainingJob.objects.create(
        snapshot=trainable_snapshot,
        base_model="m",
        method="sft",
        config={},
        status="failed",
        error="disk full",
        output_dir=str(Path(adapter).parent),
    )
    client.force_login(admin_user)
    assert client.get(f"/training/jobs/{job.pk}/adapter.zip").status_code == 404
    TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", error="")
    assert client.get(f"/training/jobs/{job.pk}/adapter.zip").status_code == 200
