"""Checks stored before the pairs moved: the migration takes their eval text off the training side."""

import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from tests.conftest import ON_POSTGRES

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

BEFORE = [("evalsets", "0001_initial")]


def test_the_migration_moves_existing_pairs_to_the_evalsets_side_and_keeps_the_training_record_ids():
    from evalsets.models import ContaminationReport
    from training.models import SnapshotCheck

    alias = "owner" if ON_POSTGRES else "default"  # migrations run as the owner role
    connection = connections[alias]
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps
        snapshot = (
            old.get_model("training", "TrainingSnapshot").objects.using(alias).create(name="old", sha256="a" * 64)
        )
        pair = {
            "kind": "ngram",
            "score": 0.91,
            "train": {"record_id": 41, "position": 3, "source_item_id": 7, "field": "completion", "text": "copied"},
            "eval": {
                "record_id": 9,
                "item_id": 8,
                "version": "support-eval-v1",
                "field": "reference",
                "text": "SECRET",
            },
        }
        report = {"offending_count": 2, "offending_train_records": 1, "pairs": [pair, pair], "pairs_truncated": True}
        checks = old.get_model("training", "SnapshotCheck").objects.using(alias)
        dirty = checks.create(snapshot=snapshot, passed=False, threshold=0.5, evalset_versions=[], report=report)
        clean = checks.create(
            snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=[], report={"pairs": [], "n": 13}
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        if ON_POSTGRES:  # the tables the round trip re-created get their grants back, as after any migrate
            from config.dbroles import sync_roles

            sync_roles(connection)

    moved = ContaminationReport.objects.get(snapshot_check_id=dirty.pk)
    assert moved.pairs == [pair, pair] and moved.pairs_truncated
    after = SnapshotCheck.objects.get(pk=dirty.pk).report
    assert after == {"offending_count": 2, "offending_train_records": 1, "offending_train_record_ids": [41]}
    assert "SECRET" not in str(after)
    assert SnapshotCheck.objects.get(pk=clean.pk).report == {"n": 13, "offending_train_record_ids": []}
    assert not ContaminationReport.objects.filter(snapshot_check_id=clean.pk).exists()
