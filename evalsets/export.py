"""Eval set exports: streamed JSONL in several layouts, plus a manifest.

Every layout is a pure function of the frozen records, written with a fixed key order, so exporting
the same version twice gives byte-identical files. The ``goldset`` layout is the canonical form:
its sha256 is the version's sha256.

Layouts:

- ``goldset``: every field of every record, keys sorted (the canonical form).
- ``prompt-completion``: ``{"prompt", "completion"}`` for TRL's SFTTrainer and ``datasets``; the
  completion is the gold answer, or the chosen response of a preference pair.
- ``messages``: ``{"messages": [...prompt turns, assistant turn]}`` (TRL conversational SFT).
- ``preference``: ``{"prompt", "chosen", "rejected"}`` for TRL's DPOTrainer.
- ``openai-sft``: OpenAI fine-tuning chat JSONL, ``{"messages": [...]}``.
- ``openai-dpo``: OpenAI preference fine-tuning JSONL, ``{"input": {"messages"}, "preferred_output",
  "non_preferred_output"}``.

Records a layout has no place for (a rubric-only record in ``preference``) are skipped and counted.
A version is offered only the layouts its records can fill (``layouts_for``): a gold-only version has
no preference pairs, so it has no ``preference`` or ``openai-dpo`` file, rather than an empty one that
``datasets.load_dataset`` cannot read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CANONICAL_FIELDS = (
    "position",
    "item_id",
    "kind",
    "prompt",
    "messages",
    "reference",
    "response",
    "chosen",
    "rejected",
    "rubric_scores",
    "rubric_version_id",
    "reviewer_ids",
    "agreement",
    "agreeing_reviews",
    "adjudicated",
    "provenance",
)
FLUSH_BYTES = 256 * 1024
# Built once: json.dumps with options builds a new encoder on every call, a third of an export's time.
_canonical = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def canonical_line(record: dict[str, Any]) -> str:
    """One record as its canonical JSON line (keys sorted, no spaces, UTF-8 text kept as is)."""
    if len(record) != len(CANONICAL_FIELDS):
        record = {k: record[k] for k in CANONICAL_FIELDS}
    return _canonical(record)


def record_content_hash(record: dict[str, Any]) -> str:
    """sha256 of a record's content without its position, so a diff sees moved records as unchanged."""
    body = {k: record[k] for k in CANONICAL_FIELDS if k != "position"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _dumps(obj: Any) -> str:
    return _compact(obj)


def prompt_turns(record: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt as chat turns, each exactly {"role", "content"} (same key order on every database)."""
    if record["messages"]:
        return [{"role": str(t.get("role", "user")), "content": str(t.get("content", ""))} for t in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}]


def _target(record: dict[str, Any]) -> str:
    return record["reference"] or record["chosen"]


def _goldset(record):
    return canonical_line(record)


def _prompt_completion(record):
    if not _target(record):
        return None
    return _dumps({"prompt": record["prompt"], "completion": _target(record)})


def _messages(record):
    if not _target(record):
        return None
    return _dumps({"messages": [*prompt_turns(record), {"role": "assistant", "content": _target(record)}]})


def _preference(record):
    if not (record["chosen"] and record["rejected"]):
        return None
    return _dumps({"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]})


def _openai_dpo(record):
    if not (record["chosen"] and record["rejected"]):
        return None
    return _dumps(
        {
            "input": {"messages": prompt_turns(record)},
            "preferred_output": [{"role": "assistant", "content": record["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": record["rejected"]}],
        }
    )


FORMATS: dict[str, tuple[str, Callable[[dict], str | None]]] = {
    "goldset": ("Canonical JSONL (every field)", _goldset),
    "prompt-completion": ("TRL / datasets: prompt, completion", _prompt_completion),
    "messages": ("TRL / datasets: messages", _messages),
    "preference": ("TRL / datasets: prompt, chosen, rejected", _preference),
    "openai-sft": ("OpenAI fine-tuning: messages", _messages),
    "openai-dpo": ("OpenAI preference fine-tuning", _openai_dpo),
}


# The record kinds that give each layout a line: gold records carry a reference, preference records
# a chosen and a rejected response, rubric records neither (tests check this against the renderers).
FILLED_BY: dict[str, frozenset[str]] = {
    "goldset": frozenset({"gold", "preference", "rubric"}),
    "prompt-completion": frozenset({"gold", "preference"}),
    "messages": frozenset({"gold", "preference"}),
    "preference": frozenset({"preference"}),
    "openai-sft": frozenset({"gold", "preference"}),
    "openai-dpo": frozenset({"preference"}),
}
_NEEDS = {
    frozenset({"gold", "preference"}): "gold answers or preference pairs",
    frozenset({"preference"}): "preference pairs (a chosen and a rejected response)",
}


def layouts_for(counts: dict[str, int]) -> list[str]:
    """The layouts a version with these record counts by kind can fill, in the order of FORMATS."""
    return [fmt for fmt in FORMATS if any(counts.get(kind, 0) for kind in FILLED_BY[fmt])]


def layout_unavailable(fmt: str, *, name: str, counts: dict[str, int]) -> str:
    """Why ``fmt`` cannot be exported for this version ("" when it can), in words that say what to use."""
    format_check(fmt)
    fillable = layouts_for(counts)
    if fmt in fillable:
        return ""
    return (
        f"{name} has no {_NEEDS.get(FILLED_BY[fmt], 'records')}, so it has nothing to export as {fmt!r}. "
        f"Layouts it can fill: {', '.join(fillable)}."
    )


def format_check(fmt: str) -> Callable[[dict], str | None]:
    try:
        return FORMATS[fmt][1]
    except KeyError:
        raise ValueError(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.") from None


class Tally:
    """Counts and the running sha256 of what an export wrote."""

    def __init__(self):
        self.records = 0
        self.skipped = 0
        self.bytes = 0
        self._sha = hashlib.sha256()

    def feed(self, chunk: bytes) -> bytes:
        self._sha.update(chunk)
        self.bytes += len(chunk)
        return chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def iter_export(records: Iterator[dict[str, Any]], fmt: str, tally: Tally | None = None) -> Iterator[bytes]:
    """Stream one layout as bytes chunks of about FLUSH_BYTES; records must come in position order."""
    render = format_check(fmt)
    tally = tally or Tally()
    buffer: list[str] = []
    size = 0
    for record in records:
        line = render(record)
        if line is None:
            tally.skipped += 1
            continue
        tally.records += 1
        buffer.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            buffer.append("")
            yield tally.feed("\n".join(buffer).encode())
            buffer, size = [], 0
    if buffer:
        buffer.append("")
        yield tally.feed("\n".join(buffer).encode())


def manifest_bytes(*, version_info: dict[str, Any], fmt: str, filename: str, tally: Tally) -> bytes:
    """manifest.json for one exported file; nothing in it depends on when the export ran."""
    manifest = {
        **{k: version_info[k] for k in ("evalset", "project", "version", "version_sha256")},
        "format": fmt,
        "file": filename,
        "sha256": tally.sha256,
        "bytes": tally.bytes,
        "records": tally.records,
        "skipped": tally.skipped,
        "counts": version_info["counts"],
        "rubric_versions": version_info["rubric_versions"],
        "created": version_info["created"],
        "frozen_by": version_info["frozen_by"],
    }
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode()


def write_export(
    records: Iterator[dict[str, Any]], *, version_info: dict[str, Any], fmt: str, directory: Path
) -> tuple[Path, Path]:
    """Write ``<evalset>.<fmt>.jsonl`` and its ``.manifest.json`` into ``directory``; return both paths.

    The data file is written to a temporary name and renamed when complete, so a failed export
    never leaves a file that looks finished.
    """
    directory.mkdir(parents=True, exist_ok=True)
    filename = f"{version_info['evalset']}.{fmt}.jsonl"
    data_path = directory / filename
    manifest_path = directory / f"{version_info['evalset']}.{fmt}.manifest.json"
    partial = data_path.with_suffix(".jsonl.partial")
    tally = Tally()
    with partial.open("wb") as out:
        for chunk in iter_export(records, fmt, tally):
            out.write(chunk)
    partial.replace(data_path)
    manifest_path.write_bytes(manifest_bytes(version_info=version_info, fmt=fmt, filename=filename, tally=tally))
    return data_path, manifest_path
