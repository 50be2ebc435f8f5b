"""Judging fixtures: a frozen eval set version, the tiny model with an adapter trained-looking enough to
judge (LoRA weights that change its answers, a Goldset manifest), and a finished job that owns it."""

import json

import pytest

from tests.evalsets.conftest import freeze, make_item  # noqa: F401 — fixtures used here
from tests.training.conftest import tiny_model  # noqa: F401 — fixture used here

QUICK = {"max_new_tokens": 8, "batch_size": 4}


@pytest.fixture
def eval_version(make_item, freeze):  # noqa: F811
    """Six frozen gold records (one a chat), with category and difficulty in their items' metadata."""
    from evalsets.models import EvalRecord

    items = []
    for i, (category, difficulty) in enumerate(
        [("refunds", "easy"), ("refunds", "hard"), ("orders", "easy"), ("orders", "hard"), ("billing", "easy")]
    ):
        item = make_item("gold", prompt=f"Can I get a refund for order {1000 + i}?")
        item.metadata = {"category": category, "difficulty": difficulty}
        item.save(update_fields=["metadata"])
        items.append(item)
    make_item(
        "gold",
        prompt="Where is my parcel?",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my parcel?"}],
    )
    version = freeze().version
    assert EvalRecord.objects.filter(version=version).count() == 6
    return version


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tmp_path_factory):  # noqa: F811
    """A LoRA adapter on the tiny model with random (not zero) B matrices, so it answers differently, and a
    manifest naming the base it was made on, as a training job writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.provenance import model_fingerprint

    root = tmp_path_factory.mktemp("adapter-job")
    adapter = root / "adapter"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(adapter)
    manifest = {"status": "succeeded", "base_model": model_fingerprint(tiny_model), "method": "sft"}
    (adapter / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return root


@pytest.fixture
def adapter_job(tiny_model, tiny_adapter, admin_user, project):  # noqa: F811
    """A finished training job whose adapter is ``tiny_adapter``, trained on a snapshot of ``project``."""
    from training.models import SnapshotCheck, TrainingJob, TrainingSnapshot

    snapshot = TrainingSnapshot.objects.create(
        name="support v1",
        sha256="5" * 64,
        sft_count=4,
        sources=[{"project_id": project.pk, "project_slug": project.slug}],
    )
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=[])
    manifest = json.loads((tiny_adapter / "adapter" / "manifest.json").read_text())
    return TrainingJob.objects.create(
        snapshot=snapshot,
        base_model=tiny_model,
        method="sft",
        config={"method": "sft", "lora_r": 4},
        status=TrainingJob.Status.SUCCEEDED,
        output_dir=str(tiny_adapter),
        manifest=manifest,
        created_by=admin_user,
    )


@pytest.fixture
def shared_artifacts(settings, tmp_path):
    """The web side and the gpu worker share this artifacts directory (the run's prompt file goes there)."""
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_CANCEL_POLL_S = 0
    return settings.ARTIFACTS_DIR


def start_run(version, admin, *, job=None, base_model="", label="base", **decoding):
    from evalsets.judging.generate import DecodingConfig
    from evalsets.judging.services.runs import generation_run_start

    return generation_run_start(
        label=label,
        decoding=DecodingConfig(**{**QUICK, **decoding}),
        created_by=admin,
        version=version,
        job=job,
        base_model=base_model,
    )


def run_here(run):
    """Run the gpu task in this process, as the gpu worker would (the test's own connection)."""
    from evalsets.judging.tasks import generation_run_task

    outcome = generation_run_task(run.pk, run.worker_secret)
    run.refresh_from_db()
    return outcome
