"""No CSV that Goldset writes can start a spreadsheet formula in any cell.

The test finds the CSV outputs itself, so a new one cannot slip past it:

- every URL pattern of the project (Django's admin aside) is requested with GET as an admin, each
  path argument filled with the ids of the hostile data made here; every response that is CSV (by
  content type, or a ``.csv`` file name) is read cell by cell;
- every management command of Goldset's apps must be listed below, either with a run that collects
  the files it writes, or with the reason it writes none;
- and no module but ``config/csvwriter.py`` may call ``csv.writer`` or ``csv.DictWriter``.

The hostile data: usernames Django accepts (``@cmd``, ``-2+3``, ``+1+1``) and one it would refuse
but a shell can create, item text and rejected rows starting with ``=``, ``+``, ``-``, ``@``, tab
and carriage return. One CSV is exempt, and checked for the opposite: the rejected-rows file of a
CSV import holds the uploader's own lines byte for byte (to fix and import again); the errors that
explain them are a separate CSV, which is checked.
"""

import ast
import csv
import io
import itertools
import re
from pathlib import Path

import pytest
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.management import CommandError, call_command, get_commands
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from annotate.models import ImportBatch, Item, ItemResult
from annotate.services import imports
from annotate.services.projects import project_add_members
from config.csvwriter import FORMULA_STARTS
from tests.factories import annotate, make_item, pref

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
GOLDSET_APPS = ("annotate", "evalsets", "training", "config", "judging")
VALID_HOSTILE_NAMES = ["@cmd", "-2+3", "+1+1"]
HOSTILE_NAMES = [*VALID_HOSTILE_NAMES, "=1+1"]  # the last one only a shell or a script can create
HOSTILE_TEXT = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(1)", "\t=1+1", "\r=1+1"]
# A cell a spreadsheet reads as a number is a value, not a formula (negative kappas are real figures).
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?")

# The one CSV handed out verbatim: the uploader's own lines (see the module docstring).
VERBATIM = {"annotate:import-rejected"}

# Every Goldset management command: how to run it here, or why it writes no CSV.
NO_CSV = {
    "demo": "runs the local demo server and worker; writes no file",
    "seed_demo": "seeds the demo project through the import service; writes no file of its own",
    "ensure_trainer_role": "creates database roles (the old name of ensure_db_roles); writes no file",
    "ensure_db_roles": "creates database roles and grants; writes no file",
    "verify_evalsets": "recomputes hashes and stores verdicts in the database; writes no file",
    "merge_adapter": "writes model weights and a tokenizer, no CSV",
}


def formula_cells(rows: list[list[str]]) -> list[str]:
    return [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(cell)]


def hostile_csv_upload() -> tuple[bytes, bytes]:
    """A CSV upload with hostile cells, and the bytes its rejected-rows file must hold."""
    header = b"prompt,response\r\n"
    good = b'"+1+1","=1+1"\r\n'
    bad = (
        b'"=HYPERLINK(""http://evil"",""x"")",ok,extra\r\n'  # three columns: rejected
        b'"@SUM(1)",ok,extra\r\n'
        b'"-2+3","\tx",too,many\r\n'
        b'"\r=1+1","caf\xe9"\r\n'  # not UTF-8: rejected
    )
    return header + good + bad, header + bad


@pytest.fixture
def hostile(project, admin_user, django_user_model, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    validate = UnicodeUsernameValidator()
    for name in VALID_HOSTILE_NAMES:
        validate(name)  # Django's own rule for usernames accepts each of them
    users = [django_user_model.objects.create_user(username=name, password="pw") for name in HOSTILE_NAMES]
    from annotate.services.projects import user_grant_role

    for user in users:
        user_grant_role(user=user, role="reviewer")
    project_add_members(project=project, users=users)

    # Preferences by the hostile reviewers: their names land in kappa, bias and left-pick rows.
    for i, text in enumerate(HOSTILE_TEXT * 2):
        item = make_item(project, "preference", prompt=text)
        for j, user in enumerate(users):
            order = [0, 1] if (i + j) % 2 else [1, 0]
            annotate(item, user, pref(chosen=order[0], rejected=order[1]), display_order=order)

    # Imports with rejected rows: a JSONL one whose errors name hostile keys, a CSV one with hostile cells.
    jsonl = imports.sample_bytes([{"prompt": f"ok {i}", text: 1} for i, text in enumerate(HOSTILE_TEXT)])
    batches = [_import(project, admin_user, "hostile.jsonl", jsonl)]
    upload, rejected = hostile_csv_upload()
    batches.append(_import(project, admin_user, "hostile.csv", upload))
    assert all(b.rejected_path for b in batches), [b.message for b in batches]

    version = _freeze_one(project, admin_user, users[:2])
    from training.models import TrainingJob, TrainingSnapshot

    snapshot = TrainingSnapshot.objects.create(name="=HYPERLINK(1)", sha256="e" * 64)
    job = TrainingJob.objects.create(snapshot=snapshot, base_model="@model", method="sft", config={})
    return {
        "users": users,
        "batches": batches,
        "csv_batch": batches[1],
        "csv_rejected": rejected,
        "version": version,
        "snapshot": snapshot,
        "job": job,
        "item": Item.objects.filter(project=project).first(),
    }


def _import(project, admin_user, name: str, data: bytes) -> ImportBatch:
    batch = imports.import_batch_create(
        project=project, uploaded_by=admin_user, filename=name, upload=io.BytesIO(data), mode=ImportBatch.Mode.SKIP_BAD
    )
    return imports.import_batch_run(batch_id=batch.id)


def _freeze_one(project, admin_user, reviewers):
    from evalsets.services import evalset_freeze

    payload = {"action": "write", "answer": "-2+3 is the answer", "source_index": None, "reason": ""}
    item = make_item(project, "gold", prompt="=1+1 asks the eval item", split="eval")
    for reviewer in reviewers:
        annotate(item, reviewer, payload)
    ItemResult.objects.create(
        item=item,
        kind="gold",
        status="consensus",
        payload=payload,
        agreement=1.0,
        reviewer_ids=[r.pk for r in reviewers],
    )
    return evalset_freeze(project=project, user=admin_user, changelog="@first").version


# --- URLs -------------------------------------------------------------------------------------------


def _patterns(resolvers, namespace=None):
    for entry in resolvers:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                continue  # Django's admin site writes no CSV
            yield from _patterns(entry.url_patterns, entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            yield namespace, entry


def _argument_values(data, project) -> dict[str, list]:
    from evalsets.export import FORMATS

    return {
        "slug": [project.slug],
        "batch_id": [b.id for b in data["batches"]],
        "evalsets:fmt": list(FORMATS),
        "annotate:fmt": ["jsonl", "csv"],
        "snapshot_id": [data["snapshot"].id],
        "other_id": [data["snapshot"].id],
        "run_id": [1],
        "flag_id": [1],  # a contamination check's progress fragment, never CSV
        "audit_id": [a.id for a in data["snapshot"].audits.all()] or [1],
        "job_id": [data["job"].id],
        "preflight_id": [1],  # a preflight page, never CSV: a missing one answers 404
        "item_id": [data["item"].id],
        "evalsets:version_id": [data["version"].id],
        # Path arguments whose objects these data do not need: a missing one answers 404, never CSV.
        "annotate:version_id": [1],
        "rubric_id": [1],
        "lease_id": [1],
        "username": ["nobody"],
        "token_id": [1],
        "import_id": [b.id for b in data["batches"]],
        "api:version_id": [1],
        "comparison_id": [1],
        "evalset_version_id": [data["version"].id],
        "api:layout": list(FORMATS),
        "api:path": ["manifest.json"],
    }


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _is_csv(response, url: str) -> bool:
    disposition = response.get("Content-Disposition", "")
    return (
        response.get("Content-Type", "").startswith("text/csv")
        or '.csv"' in disposition
        or url.split("?")[0].endswith(".csv")
    )


def test_no_csv_download_has_a_cell_that_starts_a_formula(client, project, admin_user, hostile):
    client.force_login(admin_user)
    # The report page makes its report with a POST (a GET only reads one); make it, so report.csv has content.
    assert client.post(reverse("annotate:report-compute", args=[project.slug])).status_code == 302
    values = _argument_values(hostile, project)
    found: dict[str, list[str]] = {}
    for namespace, pattern in _patterns(get_resolver().url_patterns):
        names = list(pattern.pattern.converters)
        missing = [n for n in names if f"{namespace}:{n}" not in values and n not in values]
        assert not missing, f"{namespace}:{pattern.name} takes {missing}: give this test values for them"
        choices = [values.get(f"{namespace}:{n}", values.get(n)) for n in names]
        for combination in itertools.product(*choices):
            name = f"{namespace}:{pattern.name}" if namespace else pattern.name
            if pattern.name is None:  # a catch-all without a name (unknown API paths): its own literal path
                assert not names, f"{pattern.pattern} has no name: name it so this test can reverse it"
                name, url = str(pattern.pattern), "/" + str(pattern.pattern).strip("^$")
            else:
                url = reverse(name, kwargs=dict(zip(names, combination, strict=True)))
            response = client.get(url)
            if not _is_csv(response, url):
                continue
            found.setdefault(name, []).append(url)
            body = _body(response)
            if name in VERBATIM:
                batch = next(b for b in hostile["batches"] if str(b.id) in url)
                if batch.file_format == "csv":
                    assert body == hostile["csv_rejected"], "the rejected rows, byte for byte as uploaded"
                continue
            assert response["Content-Type"] == "text/csv; charset=utf-8", url
            rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
            assert rows, url
            assert formula_cells(rows) == [], url

    # The enumeration reached the CSVs that carry hostile data, and the names came through defused.
    assert {
        "annotate:report-csv",
        "annotate:import-rejected-errors",
        "annotate:import-rejected",
        "annotate:annotation-export",
    } <= set(found)
    report = client.get(reverse("annotate:report-csv", kwargs={"slug": project.slug})).content.decode()
    cells = {cell for row in csv.reader(io.StringIO(report)) for cell in row}
    assert {"'" + name for name in HOSTILE_NAMES} <= cells
    errors = _body(client.get(found["annotate:import-rejected-errors"][0])).decode()
    assert '\'=HYPERLINK("http://evil","x")' in {c for row in csv.reader(io.StringIO(errors)) for c in row}


# --- management commands ----------------------------------------------------------------------------


def _run_import_items(tmp_path, hostile) -> list[Path]:
    upload, _ = hostile_csv_upload()
    tmp_path.mkdir()
    source = tmp_path / "rows.csv"
    source.write_bytes(upload.replace(b'"+1+1"', b'"+2+2"'))  # a good row the fixture has not imported yet
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CommandError, match="Partly imported"):  # exit status 2
        call_command("import_items", "support", str(source), "--skip-bad", "--rejected-out", str(out / "bad.csv"))
    return sorted(out.iterdir())


def _run_export_evalset(tmp_path, hostile) -> list[Path]:
    out = tmp_path / "export"
    call_command("export_evalset", str(hostile["version"].id), "--all-formats", "--out", str(out), stdout=io.StringIO())
    return sorted(out.iterdir())


RUNS = {"import_items": _run_import_items, "export_evalset": _run_export_evalset}


def test_every_command_is_known_and_no_file_it_writes_has_a_formula_cell(tmp_path, hostile):
    commands = {name for name, app in get_commands().items() if app in GOLDSET_APPS}
    unknown = commands - set(RUNS) - set(NO_CSV)
    assert not unknown, f"new management commands {sorted(unknown)}: add a run (or the reason it writes no CSV) here"
    written = {name: run(tmp_path / name, hostile) for name, run in RUNS.items()}

    csv_files = [p for paths in written.values() for p in paths if p.suffix == ".csv"]
    assert [p.name for p in csv_files] == ["bad-errors.csv", "bad.csv"]
    verbatim = tmp_path / "import_items" / "out" / "bad.csv"
    upload, rejected = hostile_csv_upload()
    assert verbatim.read_bytes() == rejected, "the rejected rows, byte for byte as in the file"
    for path in csv_files:
        if path != verbatim:
            rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
            assert len(rows) > 1 and formula_cells(rows) == [], path
    assert written["export_evalset"], "the export wrote its files"


# --- the source -------------------------------------------------------------------------------------


def test_only_the_csv_writer_module_writes_csv():
    offenders = []
    for app in GOLDSET_APPS:
        for path in (ROOT / app).rglob("*.py"):
            if path == ROOT / "config" / "csvwriter.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in {"writer", "DictWriter"}
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "csv"
                ) or (
                    isinstance(node, ast.ImportFrom)
                    and node.module == "csv"
                    and {a.name for a in node.names} & {"writer", "DictWriter"}
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], "write CSV through config.csvwriter, which defuses formula cells"
