import io
import json

import pytest

from annotate import importers
from annotate.importers import MAX_FIELD_CHARS, MAX_LINE_BYTES

KINDS = ("gold", "preference", "rubric")
ALLOWED = (
    "prompt, messages, response, responses, chosen, rejected, metadata, provenance, kind, id, "
    "response_model, chosen_model, rejected_model"
)


def jsonl_rows(data: bytes, kinds=KINDS):
    return list(importers.parse(io.BytesIO(data), file_format="jsonl", task_kinds=kinds, default_provenance="human"))


def csv_rows(data: bytes, kinds=KINDS):
    return list(importers.parse(io.BytesIO(data), file_format="csv", task_kinds=kinds, default_provenance="human"))


def one(row, kinds=KINDS):
    """Parse one JSONL row (a dict or raw bytes) and return the ParsedRow."""
    line = row if isinstance(row, bytes) else json.dumps(row).encode()
    (parsed,) = jsonl_rows(line + b"\n", kinds)
    return parsed


def error_of(row, kinds=KINDS) -> str:
    parsed = one(row, kinds)
    assert not parsed.ok, parsed.row
    return str(parsed.errors[0])


# --- the formats people already have -----------------------------------------------------------


def test_prompt_and_response_becomes_one_gold_response():
    row = one({"prompt": "Where is my order?", "response": "On its way.", "response_model": "bot-v1"}).row
    assert row["prompt"] == "Where is my order?"
    assert row["messages"] is None
    assert row["responses"] == [{"text": "On its way.", "model": "bot-v1"}]
    assert row["kind"] == "gold"
    assert row["provenance"] == "human"


def test_chosen_and_rejected_become_two_responses_with_the_preference_kept_in_metadata():
    row = one(
        {"prompt": "Refund?", "chosen": "Yes.", "rejected": "No.", "chosen_model": "a", "rejected_model": "b"}
    ).row
    assert row["responses"] == [{"text": "Yes.", "model": "a"}, {"text": "No.", "model": "b"}]
    assert row["metadata"] == {"source_preference": {"chosen": 0, "rejected": 1}}
    assert row["kind"] == "preference"


def test_chosen_and_rejected_as_chat_turns_take_the_last_assistant_turn():
    row = one(
        {
            "prompt": "Refund?",
            "chosen": [{"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }
    ).row
    assert [r["text"] for r in row["responses"]] == ["Yes.", "No."]


def test_messages_with_a_final_assistant_turn_split_into_chat_and_answer():
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Order 12?"},
        {"role": "assistant", "content": "Shipped."},
    ]
    row = one({"messages": turns}).row
    assert row["messages"] == turns[:-1]
    assert row["responses"] == [{"text": "Shipped.", "model": None}]
    assert row["prompt"] == "system: Be brief.\n\nuser: Hi\n\nassistant: Hello.\n\nuser: Order 12?"


def test_prompt_with_a_list_of_responses_keeps_labels_and_order():
    row = one({"prompt": "Q", "responses": ["a", {"text": "b", "model": "m"}, {"text": "c"}]}).row
    assert row["responses"] == [{"text": "a", "model": None}, {"text": "b", "model": "m"}, {"text": "c", "model": None}]


def test_metadata_provenance_and_id_are_kept():
    row = one({"prompt": "Q", "metadata": {"topic": "refunds"}, "provenance": "distilled", "id": "abc-1"}).row
    assert row["metadata"] == {"topic": "refunds", "source_id": "abc-1"}
    assert row["provenance"] == "distilled"


def test_html_and_script_are_stored_exactly_as_given():
    text = "<script>alert('x')</script> & <b>bold</b>"
    assert one({"prompt": text, "response": text}).row["prompt"] == text


def test_the_kind_follows_the_project_and_the_row_shape():
    pair = {"prompt": "Q", "responses": ["a", "b"]}
    single = {"prompt": "Q", "response": "a"}
    assert one(pair, ("gold", "preference")).row["kind"] == "preference"
    assert one(pair, ("gold",)).row["kind"] == "gold"
    assert one(single, ("preference", "rubric")).row["kind"] == "rubric"
    assert one(pair, ("rubric",)).row["kind"] == "rubric"
    assert error_of(single, ("preference",)) == (
        "line 1: responses has 1 response(s); this project only takes preference pairs, which need two or more."
    )


def test_a_row_may_choose_its_kind_among_the_projects_kinds():
    assert one({"prompt": "Q", "responses": ["a", "b"], "kind": "rubric"}).row["kind"] == "rubric"
    assert error_of({"prompt": "Q", "response": "a", "kind": "rubric"}, ("gold",)) == (
        "line 1: kind is 'rubric'; this project takes gold."
    )
    assert error_of({"prompt": "Q", "response": "a", "kind": "preference"}) == (
        "line 1: kind is preference, which needs two or more responses."
    )


def test_a_csv_file_reads_every_column_and_multiline_quoted_fields():
    data = (
        b"prompt,response,responses,metadata,provenance,response_model\n"
        b'"line one\nline two",answer,,"{""k"": 1}",production_log,m1\n'
        b'Q2,,"[""x"", ""y""]",,,\n'
    )
    first, second = csv_rows(data)
    assert first.line == 2 and second.line == 4
    assert first.row["prompt"] == "line one\nline two"
    assert first.row["responses"] == [{"text": "answer", "model": "m1"}]
    assert first.row["metadata"] == {"k": 1}
    assert first.row["provenance"] == "production_log"
    assert second.row["responses"] == [{"text": "x", "model": None}, {"text": "y", "model": None}]


def test_a_csv_file_with_messages_as_json_and_a_byte_order_mark():
    turns = json.dumps([{"role": "user", "content": "Hi"}]).replace('"', '""')
    (parsed,) = csv_rows(b"\xef\xbb\xbfmessages,response\n" + f'"{turns}",Hello\n'.encode())
    assert parsed.row["messages"] == [{"role": "user", "content": "Hi"}]


def test_blank_lines_are_skipped_but_line_numbers_stay_true():
    rows = jsonl_rows(b'{"prompt": "a"}\n\n   \n{"prompt": "b"}\n')
    assert [r.line for r in rows] == [1, 4]


# --- content hash ------------------------------------------------------------------------------


def test_the_content_hash_ignores_case_whitespace_unicode_width_and_model_labels():
    a = one({"prompt": "Refund  POLICY?", "response": "30 days", "response_model": "x"}).row
    b = one({"prompt": " refund policy？", "response": "30\tdays"}).row  # full-width question mark
    assert a["content_hash"] == b["content_hash"]
    c = one({"prompt": "Refund policy?", "response": "31 days"}).row
    assert c["content_hash"] != a["content_hash"]


def test_the_content_hash_tells_chat_roles_apart():
    a = one({"messages": [{"role": "user", "content": "hi"}]}).row
    b = one({"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}]}).row
    assert a["content_hash"] != b["content_hash"]


# --- bad input, each with its exact message ----------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            b"{not json",
            "line 1: the line is not valid JSON: Expecting property name enclosed in double quotes at column 2.",
        ),
        (
            b'{"prompt": "a\tb"}',
            "line 1: the line is not valid JSON: Invalid control character (a tab or line break inside a string; "
            "write it as \\t or \\n) at column 14.",
        ),
        (
            b'{"prompt": "never closed}',
            "line 1: the line is not valid JSON: Unterminated string starting at column 12.",
        ),
        (b'{"prompt": "a"} {"prompt": "b"}', "line 1: the line is not valid JSON: Extra data at column 17."),
        (b"[1, 2]", "line 1: the line must be a JSON object, got a list."),
        ({"prompt": ""}, "line 1: prompt is empty. Give some text, or remove the row."),
        ({"prompt": " \n\t "}, "line 1: prompt is empty. Give some text, or remove the row."),
        ({"response": "a"}, "line 1: prompt is missing: give a prompt (text) or messages (chat turns)."),
        ({"prompt": 42}, "line 1: prompt must be a string, got a number."),
        ({"prompt": "Q", "response": ["a"]}, "line 1: response must be a string, got a list."),
        (
            {"prompt": "Q", "responses": "a"},
            "line 1: responses must be a list of strings or {text, model} objects, got a string.",
        ),
        (
            {"prompt": "Q", "responses": [{"text": "a", "score": 1}]},
            "line 1: responses[0] has unknown keys score; a response has only text and model.",
        ),
        ({"prompt": "Q", "responses": ["a", ""]}, "line 1: responses[1] is empty. Give some text, or remove the row."),
        ({"prompt": "Q", "metadata": "x"}, "line 1: metadata must be an object, got a string."),
        (
            {"prompt": "Q", "response_model": 3, "response": "a"},
            "line 1: response_model must be a string (a model or source label), got a number.",
        ),
        (
            {"prompt": "Q", "provenance": "scraped"},
            "line 1: provenance is 'scraped'; use one of human, production_log, distilled, self_generated, "
            "llm_judged, rule_based.",
        ),
        ({"prompt": "Q", "chosen": "a"}, "line 1: rejected is missing: chosen needs a rejected response beside it."),
        ({"prompt": "Q", "rejected": "a"}, "line 1: chosen is missing: rejected needs a chosen response beside it."),
        (
            {"prompt": "Q", "response": "a", "responses": ["b"]},
            "line 1: responses cannot be combined with response: give one of response, responses, chosen+rejected.",
        ),
        (
            {"prompt": "Q", "messages": [{"role": "user", "content": "Q"}]},
            "line 1: Give either prompt or messages, not both (messages carry the whole chat).",
        ),
        (
            {"prompt": "Q", "answer": "a", "score": 1},
            f"line 1: unknown keys 'answer', 'score'; allowed keys are {ALLOWED}. Put anything else under metadata.",
        ),
        (
            {"prompt": "Q", "<script>": 1},
            f"line 1: unknown key '<script>'; allowed keys are {ALLOWED}. Put anything else under metadata.",
        ),
        ({"messages": []}, "line 1: messages must be a non-empty list of {role, content} turns, got a list."),
        (
            {"messages": [{"role": "system", "content": "Be kind."}]},
            "line 1: messages has no user turn; a chat needs at least one message with role 'user'.",
        ),
        (
            {"messages": [{"role": "bot", "content": "Q"}]},
            "line 1: messages[0].role is 'bot'; use one of system, user, assistant.",
        ),
        (
            {"messages": [{"role": "user", "content": "Q", "name": "x"}]},
            "line 1: messages[0] has unknown keys name; a turn has only role and content.",
        ),
        ({"messages": ["hi"]}, "line 1: messages[0] must be an object with role and content, got a string."),
        (
            {"prompt": "Q\u0000"},
            "line 1: prompt contains a NUL character (\\u0000), which cannot be stored. Remove it.",
        ),
        ({"prompt": "Q", "responses": ["a"] * 21}, "line 1: responses has 21 responses; the limit is 20."),
        (
            {"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
            "line 1: chosen is a list without an assistant turn; give the response text or its turns.",
        ),
    ],
)
def test_each_bad_row_gets_an_exact_message_naming_line_and_field(row, message):
    assert error_of(row) == message


def test_a_text_field_over_the_limit_is_refused_with_its_length():
    message = error_of({"prompt": "Q", "response": "x" * (MAX_FIELD_CHARS + 1)})
    assert message == "line 1: response is 100,001 characters long; the limit is 100,000. Shorten or split it."
    assert one({"prompt": "x" * MAX_FIELD_CHARS}).ok, "exactly the limit is fine"


def test_a_line_over_the_byte_limit_is_refused_without_being_held_whole():
    big = json.dumps({"prompt": "x" * (MAX_LINE_BYTES + 10)}).encode()
    rows = jsonl_rows(big + b'\n{"prompt": "after"}\n')
    assert (
        str(rows[0].errors[0])
        == "line 1: the line is longer than 2,097,152 bytes, the limit for one row. Shorten or split it."
    )
    assert (rows[0].start_offset, rows[0].end_offset) == (0, len(big) + 1), "its bytes stay in the file"
    assert rows[1].line == 2 and rows[1].ok and rows[1].start_offset == len(big) + 1


def test_non_utf8_bytes_are_reported_with_line_and_byte_offset():
    rows = jsonl_rows(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    assert rows[0].ok
    assert str(rows[1].errors[0]) == (
        "line 2: the line is not valid UTF-8 (byte 0xe9 at byte offset 15 of the line). "
        "Save the file as UTF-8 and import it again."
    )


def test_csv_errors_name_the_line_where_the_record_starts():
    data = b'prompt,response\n"two\nlines",\n,empty\nq,caf\xe9\nq,"a",extra\n'
    rows = csv_rows(data)
    assert [r.line for r in rows] == [2, 4, 5, 6]
    assert rows[0].ok
    assert str(rows[1].errors[0]) == "line 4: prompt is empty. Give some text, or remove the row."
    assert str(rows[2].errors[0]) == (
        "line 5: the line is not valid UTF-8 (byte 0xe9 at byte offset 5 of the line). "
        "Save the file as UTF-8 and import it again."
    )
    assert str(rows[3].errors[0]) == "line 6: the record has 3 columns but the header has 2; check the quoting."


def test_a_csv_record_over_the_byte_limit_is_refused():
    long_cell = "x" * (MAX_LINE_BYTES // 2)
    data = f'prompt,response\n"{long_cell}\n{long_cell}\n{long_cell}",a\nnext,b\n'.encode()
    first, second = csv_rows(data)
    assert str(first.errors[0]) == (
        "line 2: the record is longer than 2,097,152 bytes, the limit for one row. Shorten or split it."
    )
    assert second.line == 5 and second.ok


def test_a_csv_json_column_that_is_not_json_is_named():
    (row,) = csv_rows(b"prompt,metadata\nQ,{oops}\n")
    assert (
        str(row.errors[0])
        == "line 2: metadata is not valid JSON: Expecting property name enclosed in double quotes at column 2."
    )


def test_a_csv_header_without_prompt_or_messages_fails_the_whole_file():
    with pytest.raises(importers.FileInvalid) as caught:
        csv_rows(b"question,answer\nq,a\n")
    assert str(caught.value) == "line 1: the CSV header has no prompt or messages column (found: question, answer)."


def test_a_csv_header_with_unknown_columns_lists_the_allowed_ones():
    with pytest.raises(importers.FileInvalid) as caught:
        csv_rows(b"prompt,answer\nq,a\n")
    assert str(caught.value) == f"line 1: unknown column 'answer' in the header; allowed columns are {ALLOWED}."


def test_the_parser_reads_line_by_line_and_never_the_whole_file():
    class OnlyReadline(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the whole file was read")

    data = b"".join(json.dumps({"prompt": f"q{i}"}).encode() + b"\n" for i in range(100))
    rows = importers.parse(OnlyReadline(data), file_format="jsonl", task_kinds=KINDS, default_provenance="human")
    first = next(rows)
    assert first.line == 1 and first.end_offset == len(b'{"prompt": "q0"}\n')
    assert sum(1 for _ in rows) == 99


def test_the_format_is_guessed_from_the_file_name_or_explained():
    assert importers.guess_format("Data.JSONL") == "jsonl"
    assert importers.guess_format("data.csv") == "csv"
    with pytest.raises(ValueError, match=r"Cannot tell the format of 'data.xlsx': name it .jsonl or .csv"):
        importers.guess_format("data.xlsx")
