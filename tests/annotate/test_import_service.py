import csv
import io
import json
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from annotate import importers
from annotate.models import ImportBatch, Item
from annotate.services import imports

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def run(project, data: bytes, *, mode=ImportBatch.Mode.ALL_OR_NOTHING, file_format="jsonl", provenance="human"):
    batch = imports.import_batch_create(
        project=project,
        uploaded_by=None,
        filename=f"rows.{file_format}",
        upload=io.BytesIO(data),
        mode=mode,
        provenance=provenance,
    )
    return imports.import_batch_run(batch_id=batch.id)


def test_a_clean_file_imports_every_row_with_kind_split_and_provenance(project):
    batch = run(
        project,
        jsonl(
            {"prompt": "Where is my order?", "response": "It ships tomorrow.", "response_model": "m1"},
            {"prompt": "Refund?", "chosen": "Yes, within 30 days.", "rejected": "No."},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"prompt": "Reset password", "responses": ["Click 'forgot'.", {"text": "Call us.", "model": "m2"}]},
        ),
        provenance="production_log",
    )
    assert batch.status == ImportBatch.Status.SUCCEEDED, batch.message
    assert (batch.rows_seen, batch.rows_imported, batch.rows_rejected, batch.duplicates) == (4, 4, 0, 0)
    items = list(Item.objects.filter(project=project).order_by("source_line"))
    assert [i.kind for i in items] == ["gold", "preference", "gold", "preference"]
    assert items[0].responses == [{"text": "It ships tomorrow.", "model": "m1"}]
    assert items[1].metadata == {"source_preference": {"chosen": 0, "rejected": 1}}
    assert items[2].messages == [{"role": "user", "content": "Hi"}]
    assert items[2].responses == [{"text": "Hello!", "model": None}]
    assert {i.provenance for i in items} == {"production_log"}
    assert {i.split for i in items} <= {"train", "eval"}
    assert all(len(i.content_hash) == 64 for i in items)
    assert batch.bytes_read == batch.bytes_total > 0
    assert not Path(batch.stored_path).exists(), "the uploaded copy is removed once imported"


def test_a_csv_file_imports_with_json_columns_and_model_labels(project):
    data = (
        b"prompt,chosen,rejected,chosen_model,rejected_model,metadata,provenance\n"
        b'Cancel my plan?,"Sure, done.",No.,gpt-a,gpt-b,"{""topic"": ""billing""}",distilled\n'
    )
    batch = run(project, data, file_format="csv")
    assert batch.status == ImportBatch.Status.SUCCEEDED, batch.message
    item = Item.objects.get(project=project)
    assert item.responses == [{"text": "Sure, done.", "model": "gpt-a"}, {"text": "No.", "model": "gpt-b"}]
    assert item.metadata["topic"] == "billing"
    assert Item.objects.filter(metadata__topic="billing", responses__1__model="gpt-b").count() == 1, (
        "real JSON, queryable"
    )
    assert item.provenance == "distilled"
    assert item.source_line == 2


def test_one_bad_row_imports_nothing_by_default_and_reports_it_by_line(project):
    batch = run(project, jsonl({"prompt": "ok", "response": "fine"}, {"prompt": "   "}, b"{broken"))
    assert batch.status == ImportBatch.Status.FAILED
    assert Item.objects.filter(project=project).count() == 0
    assert batch.rows_rejected == 2
    assert batch.errors == [
        {"line": 2, "field": "prompt", "message": "prompt is empty. Give some text, or remove the row."},
        {
            "line": 3,
            "field": "",
            "message": "the line is not valid JSON: Expecting property name enclosed in double quotes at column 2.",
        },
    ]
    assert "2 of 3 rows are bad, so nothing was imported" in batch.message


def errors_report(batch) -> list[list[str]]:
    with open(importers.rejected_errors_path(batch.rejected_path), newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_skip_bad_imports_the_good_rows_and_hands_back_the_bad_ones(project):
    batch = run(
        project,
        jsonl({"prompt": "ok", "response": "fine"}, {"prompt": "x", "colour": "red"}, {"prompt": "two"}),
        mode=ImportBatch.Mode.SKIP_BAD,
    )
    assert batch.status == ImportBatch.Status.SUCCEEDED
    assert (batch.rows_imported, batch.rows_rejected) == (2, 1)
    assert Path(batch.rejected_path).read_bytes() == b'{"prompt": "x", "colour": "red"}\n'
    header, error = errors_report(batch)
    assert header == ["line", "rejected_file_line", "field", "error"]
    assert error[:3] == ["2", "1", "colour"]
    assert error[3].startswith("unknown key 'colour'; allowed keys are prompt, messages,")


def test_skip_bad_on_csv_hands_back_the_header_and_the_bad_records_as_they_were(project):
    data = b'prompt,response\r\nfine,ok\r\n,empty prompt\r\n"multi\r\nline","{""x"": 1}",extra\r\n'
    batch = run(project, data, mode=ImportBatch.Mode.SKIP_BAD, file_format="csv")
    assert Path(batch.rejected_path).read_bytes() == (
        b'prompt,response\r\n,empty prompt\r\n"multi\r\nline","{""x"": 1}",extra\r\n'
    )
    assert errors_report(batch)[1:] == [
        ["3", "2", "prompt", "prompt is empty. Give some text, or remove the row."],
        ["4", "3", "", "the record has 3 columns but the header has 2; check the quoting."],
    ]


def test_duplicates_within_the_file_and_against_the_project_are_reported_not_doubled(project):
    first = run(project, jsonl({"prompt": "Refund policy?", "response": "30 days."}))
    assert first.rows_imported == 1
    original = Item.objects.get(project=project)
    batch = run(
        project,
        jsonl(
            {"prompt": "  REFUND   policy? ", "response": "30 days."},  # same after normalization
            {"prompt": "Order status?", "response": "Shipped."},
            {"prompt": "order STATUS?", "response": "shipped."},
        ),
    )
    assert batch.status == ImportBatch.Status.SUCCEEDED
    assert (batch.rows_imported, batch.duplicates, batch.near_duplicates) == (1, 2, 2)
    assert Item.objects.filter(project=project).count() == 2
    dups = [e for e in batch.errors if e.get("kind") == "duplicate"]
    assert dups == [
        {
            "line": 1,
            "field": "",
            "message": f"Already in the project as item {original.id} (near duplicate: the same after normalizing "
            "case, spacing and Unicode); not imported again.",
            "kind": "duplicate",
            "match": "near",
        },
        {
            "line": 3,
            "field": "",
            "message": "Near duplicate of line 2 in this file (the same after normalizing case, spacing and "
            "Unicode); imported once.",
            "kind": "duplicate",
            "match": "near",
        },
    ]


def test_duplicates_are_found_across_chunks(project):
    rows = [{"prompt": f"q{i % 7}", "response": "a"} for i in range(30)]
    batch = imports.import_batch_create(
        project=project, uploaded_by=None, filename="d.jsonl", upload=io.BytesIO(jsonl(*rows))
    )
    ImportBatch.objects.filter(pk=batch.pk).update(status=ImportBatch.Status.RUNNING)
    imports.import_file_run(batch=batch, fileobj=io.BytesIO(jsonl(*rows)), chunk_rows=4)
    assert (batch.rows_imported, batch.duplicates) == (7, 23)
    assert Item.objects.filter(project=project).count() == 7


def test_a_reimport_never_moves_an_item_between_splits(project):
    rows = [{"prompt": f"Question {i}", "response": f"Answer {i}"} for i in range(200)]
    run(project, jsonl(*rows))
    before = dict(Item.objects.values_list("content_hash", "split"))
    assert set(before.values()) == {"train", "eval"}
    Item.objects.all().delete()
    project.eval_share = Decimal("0.2")
    project.save()
    run(project, jsonl(*reversed(rows)))  # another order, another batch
    assert dict(Item.objects.values_list("content_hash", "split")) == before


def test_the_split_depends_only_on_seed_stratum_and_content_hash():
    kwargs = {"split_seed": 7, "stratum": "gold", "content_hash": "ab" * 32, "eval_share": 0.5}
    assert len({imports.split_for(**kwargs) for _ in range(5)}) == 1
    draws = {imports.split_for(**{**kwargs, "split_seed": s}) for s in range(40)}
    assert draws == {"train", "eval"}, "another seed gives another draw"


def test_each_stratum_gets_the_eval_share_within_tolerance(project):
    rows = [{"prompt": f"gold {i}", "response": "a"} for i in range(600)]
    rows += [{"prompt": f"pair {i}", "chosen": "a", "rejected": "b"} for i in range(600)]
    batch = run(project, jsonl(*rows))
    assert "Warning" not in batch.message
    for kind in ("gold", "preference"):
        qs = Item.objects.filter(project=project, kind=kind)
        share = qs.filter(split="eval").count() / qs.count()
        assert abs(share - 0.2) <= imports.split_tolerance(n=600, share=0.2), (kind, share)


def test_llm_judged_rows_always_go_to_train(project):
    rows = [{"prompt": f"judged {i}", "response": "a", "provenance": "llm_judged"} for i in range(50)]
    run(project, jsonl(*rows))
    assert set(Item.objects.values_list("split", flat=True)) == {"train"}


def test_a_failure_while_writing_rolls_everything_back(project, monkeypatch):
    calls = []
    real = imports._Inserter.__call__

    def failing(self, fresh):
        calls.append(len(fresh))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(self, fresh)

    monkeypatch.setattr(imports._Inserter, "__call__", failing)
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(10)]
    batch = imports.import_batch_create(project=project, uploaded_by=None, filename="d.jsonl", upload=io.BytesIO(b""))
    imports.import_file_run(batch=batch, fileobj=io.BytesIO(jsonl(*rows)), chunk_rows=4)
    assert batch.status == ImportBatch.Status.FAILED
    assert "disk full" in batch.message and "nothing imported" in batch.message
    assert Item.objects.filter(project=project).count() == 0


def test_an_unexpected_failure_marks_the_batch_failed_instead_of_leaving_it_running(project, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(imports.importers, "parse", broken)
    batch = run(project, jsonl({"prompt": "a", "response": "b"}))
    assert batch.status == ImportBatch.Status.FAILED
    assert batch.message == "The import failed ('boom'); nothing imported."
    assert batch.finished_at is not None


def test_a_duplicate_the_lookup_missed_is_never_inserted_twice(project, monkeypatch):
    from django.db import connection

    run(project, jsonl({"prompt": "Refund policy?", "response": "30 days."}))
    # As if a concurrent import committed this content between the lookup and the insert.
    monkeypatch.setattr(imports, "_known_items", lambda project_id, hashes: {})
    batch = run(
        project,
        jsonl({"prompt": "New question", "response": "a"}, {"prompt": "refund policy?", "response": "30 days."}),
    )
    if connection.vendor == "postgresql":
        # INSERT ... ON CONFLICT DO NOTHING: the unique index skips it and it is reported.
        assert batch.status == ImportBatch.Status.SUCCEEDED
        assert (batch.rows_imported, batch.duplicates) == (1, 1)
        assert batch.errors[-1]["message"] == "Already in the project (same normalized content); not imported again."
        assert Item.objects.filter(project=project).count() == 2
    else:
        # executemany: the unique constraint refuses it and the whole write rolls back.
        assert batch.status == ImportBatch.Status.FAILED
        assert batch.message.startswith("Another import added some of the same items while this one ran")
        assert Item.objects.filter(project=project).count() == 1


def test_a_file_without_rows_fails_with_a_clear_message(project):
    batch = run(project, b"\n\n")
    assert batch.status == ImportBatch.Status.FAILED
    assert batch.message == "The file has no rows: nothing imported."


def test_a_csv_without_prompt_column_fails_before_reading_rows(project):
    batch = run(project, b"question,answer\nq,a\n", file_format="csv")
    assert batch.status == ImportBatch.Status.FAILED
    assert batch.errors[0]["message"] == "the CSV header has no prompt or messages column (found: question, answer)."


def test_a_batch_already_claimed_is_not_imported_twice(project):
    batch = imports.import_batch_create(
        project=project,
        uploaded_by=None,
        filename="a.jsonl",
        upload=io.BytesIO(jsonl({"prompt": "a", "response": "b"})),
    )
    imports.import_batch_run(batch_id=batch.id)
    again = imports.import_batch_run(batch_id=batch.id)
    assert again.status == ImportBatch.Status.SUCCEEDED
    assert Item.objects.filter(project=project).count() == 1


def _generate(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"How do I return order {i}?", "response": f"Use the form for order {i}."}))
            f.write("\n")


def _peak_during_import(project, path: Path) -> int:
    batch = imports.import_batch_create(project=project, uploaded_by=None, filename=path.name, path=path)
    tracemalloc.start()
    try:
        imports.import_batch_run(batch_id=batch.id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    batch.refresh_from_db()
    assert batch.status == ImportBatch.Status.SUCCEEDED, batch.message
    return peak


@pytest.mark.slow
def test_a_100k_row_import_streams_in_bounded_memory(project, tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _generate(small, 10_000)
    _generate(big, 100_000)
    peak_small = _peak_during_import(project, small)
    Item.objects.all().delete()
    peak_big = _peak_during_import(project, big)
    assert Item.objects.count() == 100_000
    # Ten times the rows must not mean ten times the memory: the file, hashes and items are streamed.
    assert peak_big < 1.5 * peak_small, (peak_small, peak_big)
    assert peak_big < 30 * 1024 * 1024


@pytest.mark.postgres
def test_copy_writes_real_jsonb_on_postgresql(project):
    from django.db import connection

    run(project, jsonl({"prompt": "Q", "chosen": "a", "rejected": "b", "metadata": {"topic": "refunds"}}))
    with connection.cursor() as cursor:
        cursor.execute("SELECT jsonb_typeof(responses), jsonb_typeof(metadata), messages IS NULL FROM annotate_item")
        assert cursor.fetchall() == [("array", "object", True)]


# --- the rejected rows, byte for byte -------------------------------------------------------------


def assert_same_bytes(got: bytes, expected: bytes) -> None:
    """Equality of multi-megabyte files, reported by the first differing offset (a diff would take minutes)."""
    if got != expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got), len(expected))
        )
        raise AssertionError(f"{len(got):,} bytes, expected {len(expected):,}; first difference at offset {at:,}")


def test_the_rejected_rows_file_holds_each_bad_lines_original_bytes_and_can_be_fixed_and_imported(project):
    from annotate.importers import MAX_LINE_BYTES

    bad_utf8 = b'{"prompt": "caf\xe9 au lait", "response": "ok"}\r\n'
    too_long = b'{"prompt": "' + b"x" * (MAX_LINE_BYTES + 10) + b'", "response": "ok"}\n'
    formula = b'{"prompt": "=HYPERLINK(\\"http://evil\\",\\"x\\")", "colour": "red"}\n'
    control = b'{"prompt": "tab\there", "response": "ok"}'  # the last line, without a line break
    data = b'{"prompt": "fine", "response": "ok"}\n' + bad_utf8 + b"\n" + too_long + formula + control
    batch = run(project, data, mode=ImportBatch.Mode.SKIP_BAD)

    assert (batch.rows_imported, batch.rows_rejected) == (1, 4)
    assert_same_bytes(Path(batch.rejected_path).read_bytes(), bad_utf8 + too_long + formula + control)
    assert [row[:3] for row in errors_report(batch)[1:]] == [
        ["2", "1", ""],
        ["4", "2", ""],
        ["5", "3", "colour"],
        ["6", "4", ""],
    ]

    fixed = (
        Path(batch.rejected_path)
        .read_bytes()
        .replace(b"caf\xe9", "café".encode())
        .replace(b"x" * (MAX_LINE_BYTES + 10), b"shorter")
        .replace(b', "colour": "red"', b', "response": "ok"')
        .replace(b"\t", b"\\t")
    )
    again = run(project, fixed)
    assert again.status == ImportBatch.Status.SUCCEEDED, again.errors
    assert again.rows_imported == 4
    assert Item.objects.get(project=project, prompt="café au lait")
    assert Item.objects.get(project=project, prompt='=HYPERLINK("http://evil","x")'), "stored as given"


def test_a_rejected_csv_keeps_the_upload_header_its_byte_order_mark_and_bad_bytes(project):
    from annotate.importers import MAX_LINE_BYTES

    header = b"\xef\xbb\xbfprompt,response\r\n"
    bad_utf8 = b"caf\xe9,ok\r\n"
    formula = b'"=HYPERLINK(""http://evil"",""x"")",ok,extra\r\n'  # three columns: rejected
    long_record = b'"' + b"y" * (MAX_LINE_BYTES // 2) + b"\n" + b"y" * (MAX_LINE_BYTES // 2) + b'",ok\n'
    data = header + b"good,ok\r\n" + bad_utf8 + formula + long_record + b"last,ok\r\n"
    batch = run(project, data, mode=ImportBatch.Mode.SKIP_BAD, file_format="csv")

    assert (batch.rows_imported, batch.rows_rejected) == (2, 3)
    assert_same_bytes(Path(batch.rejected_path).read_bytes(), header + bad_utf8 + formula + long_record)
    assert [row[:3] for row in errors_report(batch)[1:]] == [["3", "2", ""], ["4", "3", ""], ["5", "4", ""]]


def test_an_all_or_nothing_import_also_hands_back_its_bad_rows(project):
    data = jsonl({"prompt": "ok", "response": "fine"}, b'{"prompt": "\xff"}')
    batch = run(project, data)
    assert batch.status == ImportBatch.Status.FAILED and Item.objects.count() == 0
    assert Path(batch.rejected_path).read_bytes() == b'{"prompt": "\xff"}\n'


# --- duplicates: exact or near, in the file or in the project -------------------------------------


def test_exact_and_near_duplicates_are_counted_and_reported_separately(project):
    run(project, jsonl({"prompt": "Where is my parcel?", "response": "On its way."}))
    stored = Item.objects.get(project=project)
    batch = run(
        project,
        jsonl(
            {"prompt": "Can I pay by card?", "response": "Yes."},
            {"prompt": "Can I pay by card?", "response": "Yes.", "response_model": "other"},  # labels do not count
            {"prompt": "can I pay  by CARD?", "response": "yes."},
            {"prompt": "Where is my parcel?", "response": "On its way."},
            {"prompt": "WHERE is my parcel?", "response": "On its way."},
        ),
    )
    assert (batch.rows_imported, batch.duplicates, batch.near_duplicates) == (1, 4, 2)
    by_line = {e["line"]: (e["match"], e["message"]) for e in batch.errors if e.get("kind") == "duplicate"}
    assert by_line == {
        2: ("exact", "Exact duplicate of line 1 in this file; imported once."),
        3: (
            "near",
            "Near duplicate of line 1 in this file (the same after normalizing case, spacing and Unicode); "
            "imported once.",
        ),
        4: ("exact", f"Already in the project as item {stored.id} (exact duplicate); not imported again."),
        5: (
            "near",
            f"Already in the project as item {stored.id} (near duplicate: the same after normalizing case, spacing "
            "and Unicode); not imported again.",
        ),
    }
    assert "4 duplicates not imported again (2 exact, 2 near" in batch.message


def test_a_reimport_names_the_project_item_each_row_already_is(project):
    """Even a row that repeats an earlier line of the file: that line was not imported this time either."""
    rows = [{"prompt": f"Question {i}", "response": "a"} for i in range(5)] + [
        {"prompt": "Question 1", "response": "a"}
    ]
    first = run(project, jsonl(*rows))
    assert first.rows_imported == 5
    ids = {item.prompt: item.id for item in Item.objects.filter(project=project)}

    again = run(project, jsonl(*rows))
    assert (again.status, again.rows_imported, again.duplicates) == (ImportBatch.Status.SUCCEEDED, 0, 6)
    messages = [e["message"] for e in again.errors]
    expected = [
        f"Already in the project as item {ids[r['prompt']]} (exact duplicate); not imported again." for r in rows
    ]
    assert messages == expected


def test_repeats_across_chunks_point_at_the_first_line_of_the_file(project):
    rows = [{"prompt": f"q{i % 3}", "response": "a"} for i in range(8)]
    batch = imports.import_batch_create(
        project=project, uploaded_by=None, filename="d.jsonl", upload=io.BytesIO(jsonl(*rows))
    )
    imports.import_file_run(batch=batch, fileobj=io.BytesIO(jsonl(*rows)), chunk_rows=2)
    assert (batch.rows_imported, batch.duplicates, batch.near_duplicates) == (3, 5, 0)
    assert [e["message"] for e in batch.errors] == [
        f"Exact duplicate of line {line % 3 + 1} in this file; imported once." for line in range(3, 8)
    ]
