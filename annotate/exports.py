"""Annotation exports: every reviewer's annotations of a project's items, with their revisions, the item's
consensus result and any adjudication, streamed as JSONL (one item per line) or CSV (one annotation per row).

The API (``GET /api/v1/projects/<slug>/annotations/export``) and the project page's export buttons both
stream JSONL from ``export_jsonl``: on PostgreSQL the database writes each line (``annotate/export_sql.py``)
and keeps it stored until a change outdates it (``annotate/export_cache.py``), a page of items at a time;
elsewhere, and for CSV, ``export_records`` reads in keyset chunks of items
(and their annotations, revisions and adjudications in one query each per chunk). Either way memory stays
flat however large the project. Callers check permission first (admins only: an export names every
reviewer and their answers).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q

from annotate.models import Adjudication, Annotation, AnnotationRevision, Item, Project
from config import csvwriter

CHUNK_ITEMS = 1000
# Items per statement when PostgreSQL writes the lines: large enough that a page's fixed cost is small.
PAGE_ITEMS = 2000
FLUSH_BYTES = 256 * 1024
UNREVIEWED = "unreviewed"
# Built once: json.dumps with options builds a new encoder on every call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class ExportFilter:
    """Which items an export covers. ``since``/``until``: when the item's result last changed (an item nobody
    has reviewed has no result, so a date filter leaves it out)."""

    kinds: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    extra: dict = field(default_factory=dict)

    def items(self, project: Project):
        items = Item.objects.filter(project=project)
        if self.kinds:
            items = items.filter(kind__in=self.kinds)
        if self.splits:
            items = items.filter(split__in=self.splits)
        if self.states:
            wanted = Q(result__status__in=[s for s in self.states if s != UNREVIEWED])
            if UNREVIEWED in self.states:
                wanted |= Q(result__isnull=True)
            items = items.filter(wanted)
        if self.since is not None:
            items = items.filter(result__updated_at__gte=self.since)
        if self.until is not None:
            items = items.filter(result__updated_at__lt=self.until)
        return items


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


ITEM_COLUMNS = (
    "id",
    "kind",
    "split",
    "provenance",
    "prompt",
    "messages",
    "responses",
    "metadata",
    "import_batch_id",
    "source_line",
    "is_check",
    "created_at",
    "result__status",
    "result__payload",
    "result__agreement",
    "result__reviewer_ids",
    "result__rubric_version_id",
    "result__decided_at",
    "result__updated_at",
)


def export_records(*, project: Project, filters: ExportFilter = ExportFilter()) -> Iterator[dict[str, Any]]:
    """Every matching item of the project as one record, in item id order (see the module docstring)."""
    items = filters.items(project).order_by("id").values_list(*ITEM_COLUMNS)
    after = 0
    usernames: dict[int, str] = {}
    while True:
        chunk = list(items.filter(id__gt=after)[:CHUNK_ITEMS])
        if not chunk:
            return
        lo, hi = chunk[0][0], chunk[-1][0]
        after = hi
        # Annotations by a range of item ids (the (item, reviewer) index), their revisions by annotation id
        # (the (annotation, number) index): each table is read from an index, never scanned per chunk.
        annotations: dict[int, list] = defaultdict(list)
        adjudications: dict[int, list] = defaultdict(list)
        rows = list(
            Annotation.objects.filter(item_id__gte=lo, item_id__lte=hi, item__project=project)
            .order_by("item_id", "reviewer_id")
            .values_list(
                "id",
                "item_id",
                "reviewer_id",
                "revision",
                "payload",
                "rubric_version_id",
                "display_order",
                "duration_ms",
                "created_at",
                "updated_at",
            )
        )
        revisions: dict[int, list] = defaultdict(list)
        if rows:
            for annotation_id, number, payload, version_id, created in (
                AnnotationRevision.objects.filter(annotation_id__in=[row[0] for row in rows])
                .order_by("annotation_id", "number")
                .values_list("annotation_id", "number", "payload", "rubric_version_id", "created_at")
            ):
                revisions[annotation_id].append(
                    {"number": number, "payload": payload, "rubric_version_id": version_id, "created_at": _iso(created)}
                )
        missing = {row[2] for row in rows} - usernames.keys()
        if missing:
            usernames.update(get_user_model().objects.filter(pk__in=missing).values_list("pk", "username"))
        for row in rows:
            annotation_id, item_id, reviewer_id, revision, payload, version_id, order, duration, created, updated = row
            annotations[item_id].append(
                {
                    "reviewer": usernames[reviewer_id],
                    "revision": revision,
                    "payload": payload,
                    "rubric_version_id": version_id,
                    "display_order": order,
                    "duration_ms": duration,
                    "created_at": _iso(created),
                    "updated_at": _iso(updated),
                    "revisions": revisions.get(annotation_id, []),
                }
            )
        for item_id, adjudicator, payload, reason, created in (
            Adjudication.objects.filter(item_id__gte=lo, item_id__lte=hi, item__project=project)
            .order_by("item_id", "created_at", "id")
            .values_list("item_id", "adjudicator__username", "payload", "reason", "created_at")
        ):
            adjudications[item_id].append(
                {"adjudicator": adjudicator, "payload": payload, "reason": reason, "created_at": _iso(created)}
            )
        for row in chunk:
            (item_id, kind, split, provenance, prompt, messages, responses, metadata, batch_id, line, is_check,
             created, status, payload, agreement, reviewer_ids, version_id, decided, updated) = row  # fmt: skip
            yield {
                "item_id": item_id,
                "kind": kind,
                "split": split,
                "provenance": provenance,
                "prompt": prompt,
                "messages": messages,
                "responses": responses,
                "metadata": metadata,
                "import_batch_id": batch_id,
                "source_line": line,
                "is_check": is_check,
                "created_at": _iso(created),
                "state": status or UNREVIEWED,
                "result": None
                if status is None
                else {
                    "status": status,
                    "payload": payload,
                    "agreement": agreement,
                    "reviewer_ids": reviewer_ids,
                    "rubric_version_id": version_id,
                    "decided_at": _iso(decided),
                    "updated_at": _iso(updated),
                },
                "annotations": annotations.get(item_id, []),
                "adjudications": adjudications.get(item_id, []),
            }


def export_jsonl(*, project: Project, filters: ExportFilter = ExportFilter()) -> Iterator[bytes]:
    """The export as JSONL in pieces of about ``FLUSH_BYTES``: lines written by PostgreSQL there, else by Python."""
    if connection.vendor != "postgresql":
        yield from jsonl_chunks(export_records(project=project, filters=filters))
        return
    from annotate.export_sql import export_lines

    buffer: list[bytes] = []
    size = 0
    for line in export_lines(filters.items(project), PAGE_ITEMS):
        buffer.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            buffer.append(b"")
            yield b"\n".join(buffer)
            buffer, size = [], 0
    if buffer:
        buffer.append(b"")
        yield b"\n".join(buffer)


def jsonl_chunks(records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """Records as JSONL, in pieces of about ``FLUSH_BYTES`` (one write per piece, not per line)."""
    buffer: list[str] = []
    size = 0
    for record in records:
        line = _encode(record)
        buffer.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            buffer.append("")
            yield "\n".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        buffer.append("")
        yield "\n".join(buffer).encode()


# --- CSV ------------------------------------------------------------------------------------------------

CSV_HEADER = (
    "item_id",
    "kind",
    "split",
    "provenance",
    "state",
    "prompt",
    "reviewer",
    "revision",
    "payload",
    "rubric_version_id",
    "annotated_at",
    "result_payload",
    "adjudicated",
)


class _Lines:
    """A file-like sink that hands back what was written since the last take."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts, self.size = [], 0
        return text


def csv_chunks(records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """Records as CSV, one row per annotation (an item nobody reviewed gets one row without a reviewer)."""
    sink = _Lines()
    writer = csvwriter.writer(sink)
    writer.writerow(CSV_HEADER)
    for record in records:
        result = record["result"] or {}
        common = (record["item_id"], record["kind"], record["split"], record["provenance"], record["state"])
        tail = (
            _encode(result["payload"]) if result.get("payload") is not None else "",
            record["state"] == "adjudicated",
        )
        if not record["annotations"]:
            writer.writerow((*common, record["prompt"], "", "", "", "", "", *tail))
        for a in record["annotations"]:
            writer.writerow(
                (
                    *common,
                    record["prompt"],
                    a["reviewer"],
                    a["revision"],
                    _encode(a["payload"]),
                    a["rubric_version_id"],
                    a["updated_at"],
                    *tail,
                )  # fmt: skip
            )
        if sink.size >= FLUSH_BYTES:
            yield sink.take().encode()
    rest = sink.take()
    if rest:
        yield rest.encode()
