"""Training fixtures: a tiny Llama built locally (no download), approved data, trainable snapshots."""

import pytest

from training.tinymodel import build_tiny_model

# Short runs on the tiny model: a few steps, progress at every other step, a checkpoint every 3.
FAST = {
    "max_steps": 6,
    "logging_steps": 2,
    "save_steps": 3,
    "batch_size": 2,
    "max_length": 128,
    "learning_rate": 1e-3,
    "dpo_learning_rate": 1e-3,
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a tiny LlamaForCausalLM (hidden 64, 2 layers) with a BPE tokenizer and a chat template."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.ARTIFACTS_DIR


@pytest.fixture
def in_process(settings, artifacts):
    """Run the gpu task in this process: no heartbeat thread (SQLite's in-memory test DB is one connection)."""
    settings.TRAINING_HEARTBEAT_THREAD = False
    settings.TRAINING_CANCEL_POLL_S = 0
    return settings


def make_item(project, *, kind, prompt, responses=None, split="train", provenance="human", messages=None):
    """An item whose content hash follows its content, so snapshots of equal data hash equal."""
    import hashlib

    from tests import factories

    digest = hashlib.sha256(f"{kind}|{prompt}|{responses}".encode()).hexdigest()
    return factories.make_item(
        project,
        kind,
        prompt=prompt,
        responses=responses or [],
        split=split,
        provenance=provenance,
        content_hash=digest,
        messages=messages,
    )


def approve(item, payload, status="consensus"):
    from annotate.models import ItemResult

    return ItemResult.objects.create(item=item, kind=item.kind, status=status, payload=payload, agreement=1.0)


@pytest.fixture
def approved_data(project):
    """Four gold answers and four preference pairs (train split), plus items that must stay out."""
    for i in range(4):
        item = make_item(project, kind="gold", prompt=f"How do I reset my password, case {i}?")
        approve(
            item,
            {
                "action": "write",
                "answer": f"Open settings, choose security, reset password {i}.",
                "source_index": None,
                "reason": "",
            },
        )
        pair = make_item(
            project,
            kind="preference",
            prompt=f"Can I get a refund, case {i}?",
            responses=[{"text": "No.", "model": "a"}, {"text": f"Yes, within thirty days {i}.", "model": "b"}],
        )
        approve(
            pair,
            {"choice": "response", "chosen": 1, "rejected": 0, "strength": "clear", "rationale": ""},
            status="adjudicated" if i == 0 else "consensus",
        )
    return project


@pytest.fixture
def trainable_snapshot(approved_data, admin_user):
    from training.models import SnapshotCheck
    from training.services import snapshot_create

    snapshot = snapshot_create(name="support v1", projects=[approved_data], created_by=admin_user)
    SnapshotCheck.objects.create(
        snapshot=snapshot,
        passed=True,
        threshold=0.5,
        evalset_versions=[{"id": 1, "name": "support-eval v1", "sha256": "e" * 64}],
    )
    return snapshot


def queue_job(snapshot, base_model, admin, *, method="sft", **config):
    """Request a preflight, run it here as the preflight worker would, then queue the job it passed."""
    from training import services
    from training.tasks import training_preflight_run

    preflight = services.training_preflight_request(
        snapshot=snapshot, base_model=base_model, method=method, config={**FAST, **config}, created_by=admin
    )
    outcome = training_preflight_run(preflight.pk, preflight.worker_secret)
    preflight.refresh_from_db()
    assert outcome == "succeeded", preflight.message
    return services.training_job_create(preflight=preflight, created_by=admin)
