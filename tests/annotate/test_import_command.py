import csv
import json

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Item

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_the_command_imports_a_file_and_prints_a_summary(project, tmp_path, capsys):
    path = write(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    call_command("import_items", "support", str(path), "--provenance", "distilled")
    out = capsys.readouterr().out
    assert "rows.jsonl → support: 2 rows read, 2 imported, 0 rejected, 0 duplicates." in out
    assert set(Item.objects.values_list("provenance", flat=True)) == {"distilled"}
    assert path.exists(), "the user's own file is left in place"


def test_the_command_fails_and_imports_nothing_when_a_row_is_bad(project, tmp_path, capsys):
    path = write(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}, "{oops"])
    with pytest.raises(CommandError, match="Nothing imported.") as caught:
        call_command("import_items", "support", str(path))
    assert caught.value.returncode == 1
    out = capsys.readouterr().out
    assert "  error line 2: the line is not valid JSON: Expecting property name enclosed in double quotes" in out
    assert Item.objects.count() == 0


def test_skip_bad_imports_the_rest_exits_non_zero_and_writes_the_rejected_rows(project, tmp_path, capsys):
    path = write(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": ""}])
    rejected = tmp_path / "rejected.jsonl"
    with pytest.raises(CommandError, match="Partly imported: 1 rows rejected.") as caught:
        call_command("import_items", "support", str(path), "--skip-bad", "--rejected-out", str(rejected))
    assert caught.value.returncode == 2
    assert Item.objects.count() == 1
    assert rejected.read_bytes() == b'{"prompt": ""}\n'
    errors = list(csv.reader((tmp_path / "rejected-errors.csv").open(newline="")))
    assert errors == [
        ["line", "rejected_file_line", "field", "error"],
        ["2", "1", "prompt", "prompt is empty. Give some text, or remove the row."],
    ]


def test_the_command_names_unknown_projects_and_formats(project, tmp_path):
    path = write(tmp_path / "rows.txt", [{"prompt": "a"}])
    with pytest.raises(CommandError, match=r"No project with slug 'nope' \(projects: support\)."):
        call_command("import_items", "nope", str(path))
    with pytest.raises(CommandError, match="Cannot tell the format of 'rows.txt'"):
        call_command("import_items", "support", str(path))
    call_command("import_items", "support", str(path), "--format", "jsonl")
    assert Item.objects.count() == 1


def test_exit_status_is_0_when_rows_were_imported_even_if_some_were_already_there(project, tmp_path, capsys):
    call_command("import_items", "support", str(write(tmp_path / "a.jsonl", [{"prompt": "a", "response": "b"}])))
    path = write(tmp_path / "b.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "new", "response": "row"}])
    call_command("import_items", "support", str(path))  # no CommandError: exit status 0
    assert "2 rows read, 1 imported, 0 rejected, 1 duplicates (1 exact, 0 near)." in capsys.readouterr().out
    assert Item.objects.count() == 2


def test_exit_status_is_1_when_every_row_is_already_in_the_project(project, tmp_path, capsys):
    path = write(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    call_command("import_items", "support", str(path))
    capsys.readouterr()
    with pytest.raises(CommandError, match="Nothing imported: every row is already in the project.") as caught:
        call_command("import_items", "support", str(path))
    assert caught.value.returncode == 1
    out = capsys.readouterr().out
    first = Item.objects.get(prompt="a")
    assert f"  duplicate line 1: Already in the project as item {first.id} (exact duplicate)" in out


def test_exit_status_is_1_when_skip_bad_finds_no_good_row(project, tmp_path):
    path = write(tmp_path / "rows.jsonl", [{"prompt": ""}, "{oops"])
    with pytest.raises(CommandError, match="Nothing imported: 2 rows rejected, 0 already in the project.") as caught:
        call_command("import_items", "support", str(path), "--skip-bad")
    assert caught.value.returncode == 1
