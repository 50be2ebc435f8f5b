"""The whole data path, across the three apps: import → queue → consensus → eval set and training
snapshot → contamination check. Each app has its own detailed tests; this one proves they fit."""

import io
import json

import pytest

from annotate.models import Item, ItemResult
from annotate.services.imports import import_batch_submit
from annotate.services.projects import project_add_members, project_create
from annotate.services.queue import lease_next_for_reviewer
from evalsets.models import EvalRecord
from evalsets.services import evalset_freeze, snapshot_contamination_check
from tests.factories import submit
from training.models import SnapshotRecord
from training.services import snapshot_create, snapshot_is_trainable

pytestmark = pytest.mark.django_db

TOPICS = ["refund", "invoice", "password", "parcel", "upgrade", "address", "coupon", "warranty", "gift card", "receipt"]


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _jsonl(rows: list[dict]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def _rows() -> list[dict]:
    rows = []
    for i, topic in enumerate(TOPICS):
        prompt = f"Customer {i} asks how the {topic} process works for an order placed last week in the shop."
        good = f"Here is exactly how the {topic} process works for your order, step by step, with dates."
        bad = f"No idea about {topic}. Thanks!"
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        reply = f"Ticket {i}: the {topic} desk replies within {i + 2} days, step by step."
        rows.append({"prompt": f"Write the reply for ticket {i} about a {topic}.", "response": reply})
    return rows


def _work_the_queue(project, reviewer) -> int:
    """The reviewer answers every item they are given: accept / prefer the good response."""
    done = 0
    while (lease := lease_next_for_reviewer(project=project, reviewer=reviewer)) is not None:
        item = lease.item
        good = next(i for i, r in enumerate(item.responses) if "step by step" in r["text"])
        position = str(lease.display_order.index(good) + 1)
        data = {"action": "accept", "source": position} if item.kind == "gold" else {"choice": position}
        submit(lease, **data)
        done += 1
    return done


def test_imported_items_flow_through_review_into_a_frozen_eval_set_and_a_clean_snapshot(
    admin_user, alice, bob, django_capture_on_commit_callbacks
):
    project = project_create(
        name="Shop", slug="shop", task_kinds=["gold", "preference"], created_by=admin_user, eval_share="0.500"
    )
    project_add_members(project=project, users=[alice, bob])
    batch = import_batch_submit(project=project, uploaded_by=admin_user, upload=_jsonl(_rows()), filename="s.jsonl")
    assert batch.status == "succeeded", batch.message
    items = Item.objects.filter(project=project)
    assert items.count() == 20 and {"train", "eval"} == set(items.values_list("split", flat=True))

    assert _work_the_queue(project, alice) == 20
    assert _work_the_queue(project, bob) == 20
    assert _work_the_queue(project, alice) == 0  # k=2 reached everywhere: nothing left for anyone
    results = ItemResult.objects.filter(item__project=project)
    assert results.count() == 20 and set(results.values_list("status", flat=True)) == {"consensus"}

    version = evalset_freeze(project=project, user=admin_user, changelog="First eval set.").version
    eval_items = set(items.filter(split="eval").values_list("pk", flat=True))
    assert set(EvalRecord.objects.filter(version=version).values_list("item_id", flat=True)) == eval_items

    snapshot = snapshot_create(name="shop-v1", projects=[project], created_by=admin_user)
    trained_on = set(SnapshotRecord.objects.filter(snapshot=snapshot).values_list("source_item_id", flat=True))
    assert trained_on and not trained_on & eval_items  # an item is in train or in eval, never both
    assert not snapshot_is_trainable(snapshot)  # unchecked
    check = snapshot_contamination_check(snapshot=snapshot)
    assert check.passed, json.dumps(check.report)
    assert snapshot_is_trainable(snapshot)
    assert [v["id"] for v in check.evalset_versions] == [version.pk]


def test_a_snapshot_from_another_project_that_copies_an_eval_prompt_is_blocked(admin_user, alice, bob):
    shop = project_create(
        name="Shop", slug="shop", task_kinds=["gold", "preference"], created_by=admin_user, eval_share="0.500"
    )
    project_add_members(project=shop, users=[alice, bob])
    import_batch_submit(project=shop, uploaded_by=admin_user, upload=_jsonl(_rows()), filename="s.jsonl")
    _work_the_queue(shop, alice)
    _work_the_queue(shop, bob)
    evalset_freeze(project=shop, user=admin_user, changelog="First eval set.")
    leaked = Item.objects.filter(project=shop, split="eval").first()

    # A second project imports the same prompt, re-cased and re-spaced, and it lands in train there.
    copy = project_create(name="Copy", slug="copy", task_kinds=["gold"], created_by=admin_user, eval_share="0.000")
    project_add_members(project=copy, users=[alice, bob])
    row = {"prompt": "  " + leaked.prompt.upper().replace(" ", "   "), "response": leaked.responses[0]["text"]}
    import_batch_submit(project=copy, uploaded_by=admin_user, upload=_jsonl([row]), filename="c.jsonl")
    assert Item.objects.get(project=copy).split == "train"
    _work_the_queue(copy, alice)
    _work_the_queue(copy, bob)

    snapshot = snapshot_create(name="copy-v1", projects=[copy], created_by=admin_user)
    check = snapshot_contamination_check(snapshot=snapshot)
    assert not check.passed
    assert check.report["offending_count"] >= 1
    assert not snapshot_is_trainable(snapshot)
