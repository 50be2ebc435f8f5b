"""The agreement report's figures stay exactly what the ORM reader computed.

Two references: the report of a mixed project pinned in ``data/report_reference.json`` (written by
the code as it was before the report streamed its rows, compute included), and the ORM reader
itself (``report_reference.py``) run beside the current one on the same data.
"""

import json
from pathlib import Path

import pytest

from annotate.models import Annotation
from annotate.reports import report_build, report_rubric_version
from annotate.services.projects import project_create
from tests.annotate import report_dataset
from tests.annotate.report_reference import report_build_reference
from tests.factories import annotate, make_item, pref, scores

GOLDEN = Path(__file__).parent / "data" / "report_reference.json"
N_BOOT, SEED = 200, 3


@pytest.fixture
def mixed(project, alice, bob):
    made = report_dataset.build(project)
    # Another project's annotations must not leak in.
    other = project_create(name="Other", slug="other", task_kinds=["rubric", "preference"])
    for _ in range(3):
        item = make_item(other, "preference")
        annotate(item, alice, pref(chosen=0, rejected=1))
        annotate(item, bob, pref("tie"))
    annotate(make_item(other, "rubric"), alice, scores(helpful=2), version=made["v2"])
    return made


def normalized(report: dict, made: dict) -> dict:
    """The report without what differs between runs: its timestamp and database ids."""
    position = {item.pk: i for i, item in enumerate(made["items"])}
    versions = {made["v1"].pk: "v1", made["v2"].pk: "v2"}
    report = json.loads(json.dumps(report))
    report.pop("generated_at", None)
    for section in report["sections"]:
        for example in section.get("rankings", {}).get("examples", []):
            example["item_id"] = position[example["item_id"]]
        if section.get("rubric_version"):
            section["rubric_version"]["id"] = versions[section["rubric_version"]["id"]]
    return report


def test_the_mixed_project_covers_what_the_report_reads(project, mixed):
    kinds = set(Annotation.objects.filter(item__project=project).values_list("kind", flat=True))
    assert kinds == {"gold", "preference", "rubric"}
    assert Annotation.objects.filter(item__project=project, revision=2).count() == 7
    assert Annotation.objects.filter(item__project=project, rubric_version=mixed["v1"]).exists()
    days = {a.updated_at.date() for a in Annotation.objects.filter(item__project=project)}
    assert len(days) > 40


def test_the_report_of_a_mixed_project_is_the_pinned_one(project, mixed):
    report = report_build(project=project, n_boot=N_BOOT, seed=SEED)
    assert normalized(report, mixed) == json.loads(GOLDEN.read_text())


def test_the_report_of_a_mixed_project_is_the_orm_readers(project, mixed):
    expected = report_build_reference(
        project=project, version=report_rubric_version(project=project), n_boot=N_BOOT, seed=SEED
    )
    report = report_build(project=project, n_boot=N_BOOT, seed=SEED)
    report.pop("generated_at")
    assert report == expected


def test_a_report_for_an_older_rubric_version_is_the_orm_readers(project, mixed):
    report = report_build(project=project, rubric_version=mixed["v1"], n_boot=N_BOOT, seed=SEED)
    report.pop("generated_at")
    assert report == report_build_reference(project=project, version=mixed["v1"], n_boot=N_BOOT, seed=SEED)
    rubric = next(s for s in report["sections"] if s["kind"] == "rubric")
    assert [v["key"] for v in rubric["variables"]] == ["helpful", "tone"]
