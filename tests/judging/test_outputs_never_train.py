"""Model outputs generated for evaluation never become training data, and are never edited: the database
refuses them in a snapshot however the row is written (ORM, raw SQL), on PostgreSQL and SQLite."""

import hashlib

import pytest
from django.db import DatabaseError, connection, transaction

from annotate.models import Item
from evalsets.judging.models import GenerationOutput, GenerationRun
from evalsets.judging.services import runs
from training.models import SnapshotRecord, TrainingSnapshot

pytestmark = pytest.mark.django_db

REFUSED = "model outputs made for evaluation never become training data"


@pytest.fixture
def output(eval_version, admin_user, settings, tmp_path):
    """An output of a run, written as the gpu worker writes it."""
    from evalsets.judging.generate import DecodingConfig

    settings.ARTIFACTS_DIR = tmp_path
    run = runs.generation_run_start(
        label="base", decoding=DecodingConfig(), created_by=admin_user, version=eval_version, base_model="m"
    )
    assert runs.generation_run_claim(run_id=run.pk, secret=run.worker_secret, worker="w", using="default")
    row = {
        "position": 0,
        "record_id": eval_version.records.first().pk,
        "check_key": "",
        "text": "Refunds take five working days once we receive the parcel.",
        "new_tokens": 12,
        "finish_reason": "eos",
    }
    assert runs.generation_outputs_add(run_id=run.pk, secret=run.worker_secret, rows=[row], using="default")
    return GenerationOutput.objects.get(run=run)


@pytest.fixture
def snapshot():
    return TrainingSnapshot.objects.create(name="s", sha256="a" * 64)


def record(snapshot, position, **texts):
    fields = {"completion": "", "chosen": "", "rejected": "", **texts}
    return SnapshotRecord(
        snapshot=snapshot,
        position=position,
        kind="dpo" if fields["chosen"] else "sft",
        messages=[{"role": "user", "content": "q"}],
        source_item_id=texts.pop("source_item_id", 999999),
        content_hash=hashlib.sha256(f"{position}".encode()).hexdigest(),
        **{k: v for k, v in fields.items() if k != "source_item_id"},
    )


@pytest.mark.parametrize("field", ["completion", "chosen", "rejected"])
def test_the_database_refuses_a_snapshot_record_holding_a_generated_output(output, snapshot, field):
    texts = {"completion": "", "chosen": "A human answer.", "rejected": "Another answer."}
    if field == "completion":
        texts = {"completion": output.text}
    else:
        texts[field] = output.text
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic():
        record(snapshot, 0, **texts).save()
    assert not SnapshotRecord.objects.exists()
    record(snapshot, 1, completion="A human answer.").save()  # the trigger refuses outputs only


def test_raw_sql_is_refused_too(output, snapshot):
    columns = (
        "snapshot_id, position, kind, messages, completion, chosen, rejected, source_item_id, content_hash, lineage"
    )
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO training_snapshotrecord ({columns}) VALUES (%s, 0, 'sft', '[]', %s, '', '', 1, %s, '{{}}')",
            [snapshot.pk, output.text, "c" * 64],
        )


def test_a_record_from_a_model_generated_item_is_refused(project, snapshot):
    item = Item.objects.create(
        project=project,
        kind="gold",
        prompt="q",
        responses=[{"text": "Any answer at all", "model": ""}],
        provenance="model_generated",
        split="train",
        content_hash="d" * 64,
    )
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic():
        record(snapshot, 0, completion="Words no output ever said.", source_item_id=item.pk).save()


def test_snapshots_leave_model_generated_items_out_and_say_so(project, admin_user):
    from annotate.models import ItemResult
    from training.services import snapshot_create

    keep = Item.objects.create(project=project, kind="gold", prompt="kept", split="train", content_hash="1" * 64)
    generated = Item.objects.create(
        project=project,
        kind="gold",
        prompt="generated",
        split="train",
        provenance="model_generated",
        content_hash="2" * 64,
    )
    for item in (keep, generated):
        ItemResult.objects.create(
            item=item, kind="gold", status="consensus", payload={"action": "write", "answer": f"a {item.prompt}"}
        )
    snapshot = snapshot_create(name="s", projects=[project], created_by=admin_user, audit=False)
    assert [r.source_item_id for r in snapshot.records.all()] == [keep.pk]
    assert snapshot.filters["skipped"]["model_generated"] == 1


def test_outputs_are_write_once(output, write_once_enforced):
    # PostgreSQL: the app role holds only SELECT and INSERT on a write-once table (its triggers stop the
    # owner); SQLite: the triggers.
    with pytest.raises(DatabaseError, match="write-once|permission denied"), transaction.atomic():
        GenerationOutput.objects.filter(pk=output.pk).update(text="edited")
    with pytest.raises(DatabaseError, match="write-once|permission denied"), transaction.atomic():
        GenerationOutput.objects.filter(pk=output.pk).delete()
    assert GenerationOutput.objects.get(pk=output.pk).text.startswith("Refunds")
    assert GenerationRun.objects.get().output_count == 1
