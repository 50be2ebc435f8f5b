"""Streaming parsers for item imports (JSONL and CSV).

Each parser is a generator over a binary file object: it reads one line (JSONL) or one CSV
record at a time and never holds the whole file. It yields a :class:`ParsedRow` per row with
either a normalized row or the errors that make it unusable, each naming the line and field.

Accepted shapes (JSONL keys, or CSV columns of the same names):

- ``{"prompt", "response"}``                      one candidate response (gold answer)
- ``{"prompt", "chosen", "rejected"}``            a preference pair, kept as two responses
- ``{"messages": [...]}``                         chat turns; a final assistant turn is the response
- ``{"prompt", "responses": [...]}``              0..n responses, strings or ``{text, model}``

plus optional ``metadata`` (object), ``provenance``, ``kind`` (to choose among the project's task
kinds instead of deciding from the row's shape), ``id`` and model labels ``response_model``,
``chosen_model``, ``rejected_model``. In CSV, ``responses``, ``messages`` and ``metadata`` hold JSON.

Limits (documented in the README): a text field holds at most ``MAX_FIELD_CHARS`` characters,
a line (JSONL) or record (CSV) at most ``MAX_LINE_BYTES`` bytes, a row at most
``MAX_RESPONSES`` responses.
"""

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from annotate.models import IMPORTABLE_PROVENANCES, TaskKind

MAX_FIELD_CHARS = 100_000
MAX_LINE_BYTES = 2 * 1024 * 1024
MAX_RESPONSES = 20
MAX_LABEL_CHARS = 200

JSONL_KEYS = (
    "prompt",
    "messages",
    "response",
    "responses",
    "chosen",
    "rejected",
    "metadata",
    "provenance",
    "kind",
    "id",
    "response_model",
    "chosen_model",
    "rejected_model",
)
MESSAGE_ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "csv")
PROVENANCES = tuple(value for value, _ in IMPORTABLE_PROVENANCES)
GOLD, PREFERENCE, RUBRIC = (str(k) for k in (TaskKind.GOLD, TaskKind.PREFERENCE, TaskKind.RUBRIC))


@dataclass
class RowError:
    line: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedRow:
    """One input row: ``row`` is the normalized data when ``errors`` is empty.

    ``start_offset`` and ``end_offset`` delimit the row's bytes in the file (its physical lines, line
    breaks included), so a rejected row can be handed back exactly as it was given.
    """

    line: int
    start_offset: int
    end_offset: int
    row: dict[str, Any] | None = None
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_VERBS = {"is", "must", "has", "contains", "cannot"}


class RowInvalid(Exception):
    """A row cannot be used; a message starting with a verb gets the field (or "the line") as subject."""

    def __init__(self, field: str, message: str):
        if message.split(" ", 1)[0] in _VERBS:
            message = f"{field or 'the line'} {message}"
        super().__init__(message)
        self.field = field
        self.message = message


class FileInvalid(Exception):
    """The file as a whole cannot be read (for example a CSV header without a prompt column)."""

    def __init__(self, error: RowError):
        super().__init__(str(error))
        self.error = error


# --- normalization and hashing -----------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, casefold and collapsed whitespace: the form duplicates are recognised in."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def content_hash(*, prompt: str, messages: list[dict] | None, responses: list[dict]) -> str:
    """sha256 of the normalized prompt (or chat turns) and response texts; model labels do not count."""
    if messages:
        head: Any = [[m["role"], normalize_text(m["content"])] for m in messages]
    else:
        head = normalize_text(prompt)
    body = [normalize_text(r["text"]) for r in responses]
    return hashlib.sha256(json.dumps([head, body], ensure_ascii=False).encode()).hexdigest()


def render_messages(messages: list[dict]) -> str:
    """The chat as plain text, for ``Item.prompt`` and search."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


# --- field checks ------------------------------------------------------------------------------


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RowInvalid(name, f"must be a string, got {_type_name(value)}.")
    if len(value) > MAX_FIELD_CHARS:
        raise RowInvalid(
            name, f"is {len(value):,} characters long; the limit is {MAX_FIELD_CHARS:,}. Shorten or split it."
        )
    if "\x00" in value:
        raise RowInvalid(name, "contains a NUL character (\\u0000), which cannot be stored. Remove it.")
    if not allow_empty and not value.strip():
        raise RowInvalid(name, "is empty. Give some text, or remove the row.")
    return value


def _label(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowInvalid(name, f"must be a string (a model or source label), got {_type_name(value)}.")
    if len(value) > MAX_LABEL_CHARS:
        raise RowInvalid(name, f"is {len(value):,} characters long; the limit is {MAX_LABEL_CHARS}.")
    return value


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowInvalid("messages", f"must be a non-empty list of {{role, content}} turns, got {_type_name(value)}.")
    turns = []
    for i, turn in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise RowInvalid(where, f"must be an object with role and content, got {_type_name(turn)}.")
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            raise RowInvalid(where, f"has unknown keys {', '.join(extra)}; a turn has only role and content.")
        role = turn.get("role")
        if role not in MESSAGE_ROLES:
            raise RowInvalid(f"{where}.role", f"is {role!r}; use one of {', '.join(MESSAGE_ROLES)}.")
        turns.append({"role": role, "content": _text(turn.get("content"), f"{where}.content")})
    if not any(t["role"] == "user" for t in turns):
        raise RowInvalid("messages", "has no user turn; a chat needs at least one message with role 'user'.")
    return turns


def _side(value: Any, name: str) -> str:
    """A chosen/rejected side: a string, or chat turns whose last assistant turn is the answer."""
    if isinstance(value, list):
        answers = [t.get("content") for t in value if isinstance(t, dict) and t.get("role") == "assistant"]
        if not answers:
            raise RowInvalid(name, "is a list without an assistant turn; give the response text or its turns.")
        return _text(answers[-1], name)
    return _text(value, name)


def normalize_row(data: Any, *, default_provenance: str) -> dict[str, Any]:
    """Check one decoded row and return {prompt, messages, responses, metadata, provenance}."""
    if not isinstance(data, dict):
        raise RowInvalid("", f"must be a JSON object, got {_type_name(data)}.")
    unknown = [k for k in data if k not in JSONL_KEYS]
    if unknown:
        raise RowInvalid(
            unknown[0],
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
            f"allowed keys are {', '.join(JSONL_KEYS)}. Put anything else under metadata.",
        )
    has_prompt = data.get("prompt") is not None
    has_messages = data.get("messages") is not None
    if has_prompt and has_messages:
        raise RowInvalid("prompt", "Give either prompt or messages, not both (messages carry the whole chat).")
    if not has_prompt and not has_messages:
        raise RowInvalid("prompt", "is missing: give a prompt (text) or messages (chat turns).")

    messages = _messages(data["messages"]) if has_messages else None
    prompt = render_messages(messages) if messages else _text(data.get("prompt"), "prompt")

    groups = [k for k in ("response", "responses", "chosen") if data.get(k) is not None]
    if data.get("rejected") is not None and "chosen" not in groups:
        raise RowInvalid("chosen", "is missing: rejected needs a chosen response beside it.")
    if len(groups) > 1:
        raise RowInvalid(
            groups[1], f"cannot be combined with {groups[0]}: give one of response, responses, chosen+rejected."
        )

    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise RowInvalid("metadata", f"must be an object, got {_type_name(metadata)}.")
    else:
        dumped = json.dumps(metadata, ensure_ascii=False)
        size = len(dumped)
        if "\\u0000" in dumped:
            raise RowInvalid("metadata", "contains a NUL character (\\u0000), which cannot be stored. Remove it.")
        if size > MAX_FIELD_CHARS:
            raise RowInvalid("metadata", f"is {size:,} characters as JSON; the limit is {MAX_FIELD_CHARS:,}.")
        metadata = dict(metadata)
    if data.get("id") is not None:
        if not isinstance(data["id"], str | int):
            raise RowInvalid("id", f"must be a string or a number, got {_type_name(data['id'])}.")
        metadata["source_id"] = data["id"]

    responses: list[dict] = []
    if "response" in groups:
        responses.append(
            {"text": _text(data["response"], "response"), "model": _label(data.get("response_model"), "response_model")}
        )
    elif "responses" in groups:
        value = data["responses"]
        if not isinstance(value, list):
            raise RowInvalid(
                "responses", f"must be a list of strings or {{text, model}} objects, got {_type_name(value)}."
            )
        if len(value) > MAX_RESPONSES:
            raise RowInvalid("responses", f"has {len(value)} responses; the limit is {MAX_RESPONSES}.")
        for i, r in enumerate(value):
            where = f"responses[{i}]"
            if isinstance(r, dict):
                extra = sorted(set(r) - {"text", "model"})
                if extra:
                    raise RowInvalid(where, f"has unknown keys {', '.join(extra)}; a response has only text and model.")
                responses.append(
                    {"text": _text(r.get("text"), f"{where}.text"), "model": _label(r.get("model"), f"{where}.model")}
                )
            else:
                responses.append({"text": _text(r, where), "model": None})
    elif "chosen" in groups:
        if data.get("rejected") is None:
            raise RowInvalid("rejected", "is missing: chosen needs a rejected response beside it.")
        responses.append(
            {"text": _side(data["chosen"], "chosen"), "model": _label(data.get("chosen_model"), "chosen_model")}
        )
        responses.append(
            {"text": _side(data["rejected"], "rejected"), "model": _label(data.get("rejected_model"), "rejected_model")}
        )
        metadata["source_preference"] = {"chosen": 0, "rejected": 1}
    elif messages and messages[-1]["role"] == "assistant" and len(messages) > 1:
        # The common SFT chat format: the last assistant turn is the answer to the turns before it.
        last = messages.pop()
        prompt = render_messages(messages)
        responses.append({"text": last["content"], "model": None})
        if not any(t["role"] == "user" for t in messages):
            raise RowInvalid("messages", "has no user turn before the final assistant answer.")

    provenance = data.get("provenance") or default_provenance
    if provenance not in PROVENANCES:
        raise RowInvalid("provenance", f"is {provenance!r}; use one of {', '.join(PROVENANCES)}.")

    kind = data.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise RowInvalid("kind", f"must be a string, got {_type_name(kind)}.")

    return {
        "kind": kind or None,
        "prompt": prompt,
        "messages": messages,
        "responses": responses,
        "metadata": metadata,
        "provenance": provenance,
        "content_hash": content_hash(prompt=prompt, messages=messages, responses=responses),
    }


def kind_for(row: dict[str, Any], task_kinds: Iterable[str]) -> str:
    """The row's own ``kind`` when given; else preference when there are ≥2 responses and the project
    does preference; else gold; else rubric."""
    asked = row.get("kind")
    if asked is not None:
        if asked not in task_kinds:
            raise RowInvalid("kind", f"is {asked!r}; this project takes {', '.join(task_kinds)}.")
        if asked == PREFERENCE and len(row["responses"]) < 2:
            raise RowInvalid("kind", "is preference, which needs two or more responses.")
        return asked
    if len(row["responses"]) >= 2 and PREFERENCE in task_kinds:
        return PREFERENCE
    if GOLD in task_kinds:
        return GOLD
    if RUBRIC in task_kinds:
        return RUBRIC
    raise RowInvalid(
        "responses",
        f"has {len(row['responses'])} response(s); this project only takes preference pairs, which need two or more.",
    )


# --- readers -----------------------------------------------------------------------------------


def _decode(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowInvalid(
            "",
            f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start} of the line). "
            "Save the file as UTF-8 and import it again.",
        ) from None


def _physical_lines(fileobj: IO[bytes]) -> Iterator[tuple[int, bytes, bool, int]]:
    """(line number, bytes, too_long, end offset) per physical line; an over-long line is skipped
    in pieces so it is never held whole (its bytes stay in the file, between the offsets)."""
    number = 0
    offset = 0
    first = True
    while True:
        chunk = fileobj.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        offset += len(chunk)
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        first = False
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            head = chunk[:200]
            while chunk and not chunk.endswith(b"\n"):
                chunk = fileobj.readline(MAX_LINE_BYTES)
                offset += len(chunk)
            yield number, head, True, offset
            continue
        yield number, chunk, False, offset


def _json_problem(exc: json.JSONDecodeError, text: str = "") -> str:
    """The decoder's complaint as a clause: some of its messages end in "at", which the column follows."""
    if text.endswith("\n"):
        # The line break that ends the line is not part of the JSON: without it, a string left open
        # reads as unterminated instead of as holding a control character.
        try:
            json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as inner:
            exc = inner
    message = exc.msg.removesuffix(" at")
    if message == "Invalid control character":
        message += " (a tab or line break inside a string; write it as \\t or \\n)"
    return f"{message} at column {exc.colno}"


def _too_long(line: int) -> RowError:
    return RowError(
        line, "", f"the line is longer than {MAX_LINE_BYTES:,} bytes, the limit for one row. Shorten or split it."
    )


def parse_jsonl(fileobj: IO[bytes], *, task_kinds: Iterable[str], default_provenance: str) -> Iterator[ParsedRow]:
    """Yield one ParsedRow per non-blank line of a JSONL file."""
    task_kinds = tuple(task_kinds)
    start = 0
    for number, raw, too_long, end in _physical_lines(fileobj):
        if too_long:
            yield ParsedRow(number, start, end, errors=[_too_long(number)])
            start = end
            continue
        if not raw.strip():
            start = end
            continue
        parsed = ParsedRow(number, start, end)
        start = end
        try:
            decoded = _decode(raw, number)
            try:
                data = json.loads(decoded)
            except json.JSONDecodeError as exc:
                raise RowInvalid("", f"is not valid JSON: {_json_problem(exc, decoded)}.") from None
            row = normalize_row(data, default_provenance=default_provenance)
            row["kind"] = kind_for(row, task_kinds)
            parsed.row = row
        except RowInvalid as exc:
            parsed.errors.append(RowError(number, exc.field, exc.message))
        yield parsed


CSV_JSON_COLUMNS = ("responses", "messages", "metadata")


class _CsvSource:
    """Text lines for csv.reader, decoded one physical line at a time, remembering bad bytes."""

    def __init__(self, fileobj: IO[bytes]):
        self.lines = _physical_lines(fileobj)
        self.line = 0
        self.offset = 0
        self.bad: dict[int, str] = {}

    def __iter__(self):
        return self

    def __next__(self) -> str:
        number, raw, too_long, end = next(self.lines)
        self.line = number
        self.offset = end
        if too_long:
            self.bad[number] = _too_long(number).message
            text = "\n"
        else:
            try:
                text = _decode(raw, number)
            except RowInvalid as exc:
                self.bad[number] = exc.message
                text = raw.decode("utf-8", "replace")
        return text


def _csv_row(values: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue
        if key in CSV_JSON_COLUMNS:
            try:
                data[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise RowInvalid(key, f"is not valid JSON: {_json_problem(exc)}.") from None
        else:
            data[key] = value
    if "prompt" in values and values.get("prompt", "") == "" and "messages" not in data:
        data["prompt"] = ""
    return data


def parse_csv(fileobj: IO[bytes], *, task_kinds: Iterable[str], default_provenance: str) -> Iterator[ParsedRow]:
    """Yield one ParsedRow per CSV record; the first line is the header."""
    task_kinds = tuple(task_kinds)
    source = _CsvSource(fileobj)
    # Above the row limit, so an over-long record gets this module's message, not csv's.
    csv.field_size_limit(MAX_LINE_BYTES * 2)
    reader = csv.reader(source)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:  # a header csv cannot read (a lone carriage return, say)
        raise FileInvalid(RowError(source.line or 1, "", f"the CSV header is not valid CSV: {exc}.")) from None
    header = [h.strip() for h in header]
    if source.bad:
        raise FileInvalid(RowError(1, "", source.bad[1]))
    if "prompt" not in header and "messages" not in header:
        raise FileInvalid(
            RowError(
                1, "", f"the CSV header has no prompt or messages column (found: {', '.join(header) or 'nothing'})."
            )
        )
    unknown = [h for h in header if h not in JSONL_KEYS]
    if unknown:
        raise FileInvalid(
            RowError(
                1,
                unknown[0],
                f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(repr(h) for h in unknown)} in the header; "
                f"allowed columns are {', '.join(JSONL_KEYS)}.",
            )
        )
    start = source.line + 1
    start_offset = source.offset
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield ParsedRow(
                start, start_offset, source.offset, errors=[RowError(start, "", f"the record is not valid CSV: {exc}.")]
            )
            start, start_offset = source.line + 1, source.offset
            continue
        number, begin, end = start, start_offset, source.offset
        lines = range(start, source.line + 1)
        start, start_offset = source.line + 1, source.offset
        if not values or all(v.strip() == "" for v in values):
            continue
        parsed = ParsedRow(number, begin, end)
        bad = [source.bad.pop(n) for n in lines if n in source.bad]
        if end - begin > MAX_LINE_BYTES:
            bad.insert(
                0, f"the record is longer than {MAX_LINE_BYTES:,} bytes, the limit for one row. Shorten or split it."
            )
        if bad:
            parsed.errors.append(RowError(number, "", bad[0]))
            yield parsed
            continue
        if len(values) != len(header):
            parsed.errors.append(
                RowError(
                    number,
                    "",
                    f"the record has {len(values)} columns but the header has {len(header)}; check the quoting.",
                )
            )
            yield parsed
            continue
        try:
            data = _csv_row(dict(zip(header, values, strict=True)))
            row = normalize_row(data, default_provenance=default_provenance)
            row["kind"] = kind_for(row, task_kinds)
            parsed.row = row
        except RowInvalid as exc:
            parsed.errors.append(RowError(number, exc.field, exc.message))
        yield parsed


def parse(
    fileobj: IO[bytes], *, file_format: str, task_kinds: Iterable[str], default_provenance: str
) -> Iterator[ParsedRow]:
    """Rows of a JSONL or CSV file, streamed."""
    if file_format == "jsonl":
        return parse_jsonl(fileobj, task_kinds=task_kinds, default_provenance=default_provenance)
    if file_format == "csv":
        return parse_csv(fileobj, task_kinds=task_kinds, default_provenance=default_provenance)
    raise ValueError(f"Unknown format {file_format!r}: use one of {', '.join(FORMATS)}.")


def guess_format(filename: str) -> str:
    """jsonl or csv from the file name, or a ValueError that says how to choose."""
    name = filename.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise ValueError(f"Cannot tell the format of {filename!r}: name it .jsonl or .csv, or choose the format.")


def rejected_errors_path(rejected_path: str) -> Path | None:
    """Where the error report of a rejected-rows file lives (beside it), or None when there is none."""
    if not rejected_path:
        return None
    path = Path(rejected_path)
    return path.with_name(path.name.split("-rejected.", 1)[0] + "-errors.csv")
