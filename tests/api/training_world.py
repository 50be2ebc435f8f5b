"""Eval set and training data for the API tests, built with the services the pages use: a frozen eval set
version, a trainable snapshot (audited, contamination check passed), an older audit with a blocking finding,
a requested contamination check, a passed preflight, and jobs in each state an action needs."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from annotate.models import Annotation, Item, ItemResult
from evalsets.models import ContaminationCheckRun
from evalsets.services import evalset_freeze
from training.config import TrainingConfig
from training.models import SnapshotAudit, SnapshotCheck, TrainingJob, TrainingPreflight
from training.services import snapshot_create

FAST = {"max_steps": 4, "logging_steps": 2, "save_steps": 2, "batch_size": 2, "max_length": 128}


def _item(project, *, kind, prompt, split, responses=None):
    digest = hashlib.sha256(f"{kind}|{prompt}|{split}".encode()).hexdigest()
    return Item.objects.create(
        project=project, kind=kind, prompt=prompt, responses=responses or [], split=split, content_hash=digest
    )


def eval_version(project, reviewers, admin):
    """A frozen eval set version of gold answers two reviewers agreed on."""
    for i in range(3):
        item = _item(project, kind="gold", prompt=f"Which plan includes phone support, case {i}?", split="eval")
        payload = {"action": "write", "answer": f"The business plan, case {i}.", "source_index": None, "reason": ""}
        for reviewer in reviewers:
            Annotation.objects.create(item=item, reviewer=reviewer, kind="gold", payload=payload)
        ItemResult.objects.create(
            item=item,
            kind="gold",
            status="consensus",
            payload=payload,
            agreement=1.0,
            reviewer_ids=[r.pk for r in reviewers],
        )
    return evalset_freeze(project=project, user=admin, changelog="First eval set.").version


def approved_train_data(project):
    """Four gold answers and four preference pairs in the train split, approved."""
    for i in range(4):
        gold = _item(project, kind="gold", prompt=f"How do I reset my password, case {i}?", split="train")
        ItemResult.objects.create(
            item=gold,
            kind="gold",
            status="consensus",
            agreement=1.0,
            payload={"action": "write", "answer": f"Open settings, then security {i}.", "source_index": None},
        )
        pair = _item(
            project,
            kind="preference",
            prompt=f"Can I get a refund, case {i}?",
            split="train",
            responses=[{"text": "No.", "model": "a"}, {"text": f"Yes, within thirty days {i}.", "model": "b"}],
        )
        ItemResult.objects.create(
            item=pair,
            kind="preference",
            status="consensus",
            agreement=1.0,
            payload={"choice": "response", "chosen": 1, "rejected": 0, "strength": "clear", "rationale": ""},
        )


def passed_check(snapshot, version=None):
    versions = [{"id": version.pk, "name": version.name, "sha256": version.sha256}] if version else []
    return SnapshotCheck.objects.create(
        snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=versions, report={"offending_count": 0}
    )


def trainable_snapshot(project, admin, version=None, *, name="support v1", **filters):
    """A snapshot made by the page's service (its audit runs inline), whose contamination check passed."""
    from training.curation import SnapshotFilters

    snapshot = snapshot_create(
        name=name, projects=[project], created_by=admin, filters=SnapshotFilters(**filters) if filters else None
    )
    passed_check(snapshot, version)
    return snapshot


def adapter_files(job: TrainingJob) -> Path:
    """An adapter folder under ARTIFACTS_DIR as a finished job leaves it, and the job row pointing at it."""
    output = Path(settings.ARTIFACTS_DIR) / f"job-{job.pk}"
    adapter = output / "adapter"
    (adapter / "tokenizer").mkdir(parents=True)
    (adapter / "manifest.json").write_text(json.dumps({"job": job.pk, "snapshot": {"sha256": job.snapshot.sha256}}))
    (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (adapter / "tokenizer" / "tokenizer.json").write_text('{"model": "tiny"}')
    (output / "train.log").write_text("not part of the adapter\n")
    TrainingJob.objects.filter(pk=job.pk).update(output_dir=str(output), last_checkpoint=str(output / "sft" / "c-2"))
    return adapter


def build(world: dict, *, project, admin, reviewers) -> dict:
    """Adds to ``world``: version, snapshot, audit (older, blocking), run, preflight, jobs {queued, failed}."""
    version = eval_version(project, reviewers, admin)
    approved_train_data(project)
    snapshot = trainable_snapshot(project, admin, version)
    clean = SnapshotAudit.objects.filter(snapshot=snapshot).latest()
    assert clean.status == "succeeded" and not clean.blocking, clean.message
    blocking = SnapshotAudit.objects.create(
        snapshot=snapshot,
        status=SnapshotAudit.Status.SUCCEEDED,
        report={
            "findings": [{"key": "dup-answer", "type": "duplicates", "title": "One answer everywhere", "gate": "block"}]
        },
    )
    # Older than the clean audit, so the snapshot stays cleared to train.
    SnapshotAudit.objects.filter(pk=blocking.pk).update(created_at=clean.created_at - timedelta(hours=1))
    run = ContaminationCheckRun.objects.create(snapshot=snapshot, created_by=admin)
    preflight = TrainingPreflight.objects.create(
        snapshot=snapshot,
        base_model="/models/tiny",
        method="sft",
        config=TrainingConfig(**FAST).to_dict(),
        status=TrainingPreflight.Status.SUCCEEDED,
        result={"ok": True, "errors": [], "warnings": [], "samples": [], "stats": {}},
        created_by=admin,
    )
    jobs = {}
    for status in ("queued", "failed"):
        jobs[status] = TrainingJob.objects.create(
            snapshot=snapshot,
            base_model="/models/tiny",
            method="sft",
            config=TrainingConfig(**FAST).to_dict(),
            status=status,
            error="The worker went silent." if status == "failed" else "",
            created_by=admin,
            queued_at=timezone.now(),
        )
    adapter_files(jobs["failed"])
    world.update(version=version, snapshot=snapshot, audit=blocking, run=run, preflight=preflight, jobs=jobs)
    return world
