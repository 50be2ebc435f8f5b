"""The JSON lines PostgreSQL writes for the annotation export parse to exactly the records the Python export
makes: every key, in the same order, with the same values (text with quotes, newlines and non-ASCII, nested
JSON, nulls, timestamps with and without a fraction of a second)."""

import json
from datetime import UTC, datetime

import pytest

from annotate.export_sql import export_lines
from annotate.exports import ExportFilter, export_jsonl, export_records
from annotate.models import Annotation, AnnotationRevision, Item, ItemResult
from annotate.services.adjudication import adjudication_record
from tests import factories

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def reviewed(project, alice, bob, judge):
    pair = factories.make_item(project, "preference", prompt='Say "hi"\n\ttwice — ünïcödé \\ back')
    Item.objects.filter(pk=pair.pk).update(
        messages=[{"role": "user", "content": "Ça va?"}], metadata={"z": 1, "a": [1.5, None, {"deep": "ok"}]}
    )
    for user, choice in ((alice, "1"), (bob, "2")):
        factories.submit(factories.lease_for(project, user, display_order=[0, 1]), choice=choice)
    factories.revise(pair, alice, choice="1", rationale="+1 sure")
    adjudication_record(
        item=pair, adjudicator=judge, payload={"choice": "response", "chosen": 0, "rejected": 1}, reason="Pol\u00edcy"
    )
    gold = factories.make_item(project, "gold")
    for user in (alice, bob):
        factories.submit(factories.lease_for(project, user, display_order=[1, 0]), action="accept", source="1")
    factories.make_item(project, "gold")  # nobody reviewed it
    whole = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    Item.objects.filter(pk=gold.pk).update(created_at=whole)
    Annotation.objects.filter(item=gold).update(created_at=whole)
    AnnotationRevision.objects.filter(annotation__item=gold).update(created_at=whole)
    ItemResult.objects.filter(item=gold).update(agreement=0.5)
    return project


def test_every_line_parses_to_the_python_record_key_for_key(reviewed):
    filters = ExportFilter()
    python = list(export_records(project=reviewed, filters=filters))
    lines = [json.loads(line) for line in export_lines(filters.items(reviewed), 2)]
    assert len(python) == 3 and lines == python
    for ours, theirs in zip(lines, python, strict=True):
        assert list(ours) == list(theirs)
        for a, b in zip(ours["annotations"], theirs["annotations"], strict=True):
            assert list(a) == list(b) and [list(r) for r in a["revisions"]] == [list(r) for r in b["revisions"]]
    assert any(r["created_at"] == "2026-01-02T03:04:05+00:00" for r in lines)
    assert lines[0]["adjudications"][0]["reason"] == "Pol\u00edcy"


@pytest.mark.parametrize(
    "filters",
    [
        ExportFilter(kinds=("gold",)),
        ExportFilter(states=("unreviewed",)),
        ExportFilter(states=("adjudicated", "consensus")),
        ExportFilter(splits=("eval",)),
    ],
)
def test_the_filters_are_the_orms_either_way(reviewed, filters):
    lines = b"".join(export_jsonl(project=reviewed, filters=filters)).decode().splitlines()
    assert [json.loads(line) for line in lines] == list(export_records(project=reviewed, filters=filters))
