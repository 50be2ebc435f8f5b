"""The agreement report's input: every annotation of a project as numpy arrays, read in chunks.

On PostgreSQL, rubric reviews are read grouped by payload, a slice of the item ids at a time (see
"rubric reviews, one group per distinct payload" below): per distinct payload, the items, reviewers
and review days (UTC days since the epoch) as int8 arrays, the payload coded once in Python. The
other kinds stream through a server-side cursor: SQL packs each row into a fixed-width binary record
holding only what the report uses: the item, the reviewer, the review day and small integers taken
out of the JSON in SQL (the preference choice and display position, the gold action). numpy puts
both into columns of arrays allocated once (from the planner's row estimate, grown if that was low),
so the worker holds a few bytes per annotation instead of Python objects, and the progress moves
with every slice and chunk.

``read`` takes a rubric sink, as ``report_build`` passes one: the rubric reviews are then handed to
it one slice of items at a time, in item order, each slice's rows ordered by (item, reviewer), and
never held all at once (the report sums them as they come, see ``annotate.reports.RubricSums``). The
other kinds are read first, so that a slice can tell which of its items were already counted.

SQL codes only the payload shapes the app writes. A row holding anything else (a score sent as 4.0
for the level 4, a preference without a choice, a display order that is not a list) is marked, read
again with its payload and coded in Python by the rules the report has always applied
(``RowCoder``); so are all rows on SQLite (the embedded demo), where there is no server-side cursor
to gain from.

In a Celery worker the reads run on a connection of their own, in one read-only REPEATABLE READ
snapshot, so the progress the caller writes on the default connection is seen at once. Inside a
transaction (a report computed inline during a request) they run in that transaction.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth import get_user_model
from django.db import connections, router
from django.db.models import Count
from psycopg.adapt import Loader
from psycopg.pq import Format

from annotate.consensus import gold_category, preference_category
from annotate.models import Annotation, Item, ItemResult, Project, RubricVersion, TaskKind

KIND_CODE = {TaskKind.GOLD.value: 0, TaskKind.PREFERENCE.value: 1, TaskKind.RUBRIC.value: 2}
OTHER_KIND = 3
# Bits of ``flags`` above the kind (bits 0-1).
COUNTED = 4  # rubric: made under the rubric version the report covers
EXOTIC = 8  # SQL could not code the row: Python codes it from the payload
RESPONSE = 16  # preference: the choice is "response"
LEFT = 32  # preference: the response shown on the left (display position 0) was chosen
ANSWER = 64  # gold: an edited or written answer that is not empty
NONE = int(np.iinfo(np.int32).min)  # a chosen/rejected index that is not an integer
UNCODED = -2  # a code SQL could not decide
RESPONSE_CHOSEN = -1  # preference category "response:<chosen>"
PREFERENCE_LABELS = ("tie", "both_bad", "response:None")
GOLD_LABELS = ("accept", "edit", "write", "unusable")
LEVEL_OF_MEASUREMENT = {"nominal": "nominal", "binary": "nominal", "ordinal": "ordinal", "interval": "interval"}
# Rows per FETCH and rubric reviews per slice: a slice's arrays, and what the report computes from
# them, take about 10 MB; one progress update per chunk or slice. (Slices of half the size save 4 MB
# and cost 0.4 CPU s more at 1M reviews, per-slice work in the worker and in PostgreSQL.)
FETCH_ROWS = 65536
# The hash join of annotations on the project's items spills to disk at PostgreSQL's default 4 MB
# for a project of 200k items; the report's transaction gets more.
WORK_MEM = "64MB"

Progress = Callable[[float, str], None]


def _noop(fraction: float, stage: str) -> None:
    return None


# --- The rules, in Python -------------------------------------------------------------------------


class Labels:
    """Category names in order of first use, each with a stable code."""

    def __init__(self, base=()):
        self.names: list[str] = list(base)
        self.index = {name: i for i, name in enumerate(self.names)}

    def code(self, name: str) -> int:
        if name not in self.index:
            self.index[name] = len(self.names)
            self.names.append(name)
        return self.index[name]


def score_lookup(criterion: dict) -> tuple[str, list[dict], dict]:
    """(level of measurement, levels in code order, value → code) for one rubric criterion.

    A value is looked up as given, then as text, so a form that sends "4" scores the level 4."""
    level = LEVEL_OF_MEASUREMENT[criterion["scale"]]
    levels = list(criterion["levels"])
    if level != "nominal":
        levels.sort(key=lambda lv: lv["value"])
    index: dict = {}
    for i, lv in enumerate(levels):
        index[str(lv["value"])] = i
        index[lv["value"]] = i
    return level, levels, index


def score_code(lookup: dict, value) -> int:
    """The level index of a score, or -1 when it is missing or not one of the levels."""
    if value is None:
        return -1
    try:
        code = lookup.get(value)
    except TypeError:  # an unhashable value is off-scale
        code = None
    if code is None:
        code = lookup.get(str(value))
    return -1 if code is None else code


def _response(payload) -> int:
    """The response a rubric review scored (its index into the item's responses), or -1 when none is named."""
    value = payload.get("response_index") if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10_000:
        return -1
    return value


def _int_or_none(value) -> int:
    """An index as the rankings read it (``isinstance(value, int)``), kept inside int32."""
    if not isinstance(value, int):
        return NONE
    return max(NONE + 1, min(int(value), int(np.iinfo(np.int32).max)))


@dataclass
class Coded:
    flags: int
    scores: list[int] = field(default_factory=list)
    pcat: int = 0
    chosen: int = NONE
    rejected: int = NONE
    olen: int = 0
    gcat: int = 0
    response: int = -1


class RowCoder:
    """One annotation's codes by the report's rules, from its decoded payload and display order."""

    def __init__(self, *, criteria: list[dict], version_id: int | None, preference: Labels, gold: Labels):
        self.keys = [c["key"] for c in criteria]
        self.lookups = [score_lookup(c)[2] for c in criteria]
        self.version_id = version_id
        self.preference = preference
        self.gold = gold

    def code(self, kind: str, version_id: int | None, payload, order) -> Coded:
        kind_code = KIND_CODE.get(kind, OTHER_KIND)
        if kind_code == KIND_CODE[TaskKind.RUBRIC]:
            counted = self.version_id is None or version_id == self.version_id
            codes = [-1] * len(self.keys)
            given = payload.get("scores") if counted else None
            if given:
                codes = [
                    score_code(lookup, given.get(key)) for key, lookup in zip(self.keys, self.lookups, strict=True)
                ]
            return Coded(flags=kind_code | (COUNTED if counted else 0), scores=codes, response=_response(payload))
        if kind_code == KIND_CODE[TaskKind.PREFERENCE]:
            response = payload.get("choice") == "response"
            is_list = isinstance(order, list)
            left = response and is_list and len(order) == 2 and order[0] == payload.get("chosen")
            return Coded(
                flags=kind_code | (RESPONSE if response else 0) | (LEFT if left else 0),
                pcat=self.preference.code(preference_category(payload)),
                chosen=_int_or_none(payload.get("chosen")),
                rejected=_int_or_none(payload.get("rejected")),
                olen=len(order) if is_list else 0,
            )
        if kind_code == KIND_CODE[TaskKind.GOLD]:
            answer = payload.get("action") in ("edit", "write") and bool(payload.get("answer"))
            return Coded(flags=kind_code | (ANSWER if answer else 0), gcat=self.gold.code(gold_category(payload)))
        return Coded(flags=OTHER_KIND)


# --- What the reader hands over ---------------------------------------------------------------------


@dataclass
class ReportRows:
    """One entry per annotation of the project (calibration items left out), in the order read."""

    n: int
    item: np.ndarray
    reviewer: np.ndarray
    day: np.ndarray
    flags: np.ndarray
    scores: np.ndarray  # (criteria, n) level indices, -1 for none
    pcat: np.ndarray | None = None  # preference category: a code of ``preference_labels`` or RESPONSE_CHOSEN
    chosen: np.ndarray | None = None
    rejected: np.ndarray | None = None
    olen: np.ndarray | None = None  # length of the display order (0 when it is not a list)
    gcat: np.ndarray | None = None  # gold action: a code of ``gold_labels``
    response: np.ndarray | None = None  # rubric: the scored response's index, -1 when none is named
    preference_labels: list[str] = field(default_factory=list)
    gold_labels: list[str] = field(default_factory=list)

    @property
    def kind(self) -> np.ndarray:
        return self.flags & 3


@dataclass
class RubricChunk:
    """Rubric reviews of a run of items, ordered by (item, reviewer): every review of an item is in one
    chunk, and chunks come in item order."""

    item: np.ndarray
    reviewer: np.ndarray
    day: np.ndarray
    flags: np.ndarray
    scores: np.ndarray  # (criteria, n) level indices, -1 for none
    response: np.ndarray

    def __len__(self) -> int:
        return len(self.item)


RubricSink = Callable[[RubricChunk], None]


@dataclass
class ReportData:
    """Everything the report is computed from."""

    rows: ReportRows  # with a rubric sink, every annotation but the rubric reviews it was handed
    n_annotations: int
    n_items: int
    criteria: list[dict]
    names: dict[int, str]
    status_counts: dict[str, int]
    checks: dict[int, object]  # check item id → its known answer (None when unset)
    check_rows: list[tuple]  # (item_id, reviewer_id, kind, payload) on check items, by item and reviewer
    answers: dict[int, list[str]]  # gold item → its edited/written answers, for the items edit similarity reads
    coded_in_python: int  # rows whose payload SQL did not code (all of them on SQLite)


# --- Columns ---------------------------------------------------------------------------------------


class _Columns:
    """Preallocated column arrays, grown when the row estimate was low."""

    def __init__(self, capacity: int, spec: dict[str, tuple[np.dtype, int | None]]):
        self.capacity = max(1, capacity)
        self.spec = spec
        self.n = 0
        self.arrays = {name: self._alloc(dtype, width, self.capacity) for name, (dtype, width) in spec.items()}

    @staticmethod
    def _alloc(dtype, width: int | None, capacity: int) -> np.ndarray:
        shape = (capacity,) if width is None else (width, capacity)
        return np.empty(shape, dtype=dtype)

    def reserve(self, extra: int) -> slice:
        need = self.n + extra
        if need > self.capacity:
            capacity = max(need, self.capacity * 2)
            for name, (dtype, width) in self.spec.items():
                grown = self._alloc(dtype, width, capacity)
                grown[..., : self.n] = self.arrays[name][..., : self.n]
                self.arrays[name] = grown
            self.capacity = capacity
        part = slice(self.n, need)
        self.n = need
        return part

    def trimmed(self) -> dict[str, np.ndarray]:
        return {name: array[..., : self.n] for name, array in self.arrays.items()}


def _spec(n_criteria: int, kinds: set[str]) -> dict[str, tuple[np.dtype, int | None]]:
    spec = {
        "item": (np.dtype(np.int64), None),
        "reviewer": (np.dtype(np.int32), None),
        "day": (np.dtype(np.int32), None),
        "flags": (np.dtype(np.int16), None),
        "scores": (np.dtype(np.int16), n_criteria),
    }
    if TaskKind.PREFERENCE in kinds:
        spec |= {name: (np.dtype(np.int32), None) for name in ("pcat", "chosen", "rejected", "olen")}
    if TaskKind.GOLD in kinds:
        spec["gcat"] = (np.dtype(np.int16), None)
    spec["response"] = (np.dtype(np.int16), None)  # the rubric record always carries it
    return spec


# --- PostgreSQL ------------------------------------------------------------------------------------

_INT = r"'^-?[0-9]{1,9}$'"  # a JSON number PostgreSQL prints as a plain int4-sized integer
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # how PostgreSQL prints any JSON number


def _sql_levels(lookup: dict, number_text: dict) -> list[tuple[str, int]]:
    """(text, code) pairs SQL may match a score's ``->>`` text against, each coding as Python would.

    ``->>`` gives the same text for the string "4" and the number 4; a text goes in only when every
    JSON value that prints as it gets the same code from ``score_code``, else the row goes to Python."""
    texts = set()
    for key in lookup:
        if isinstance(key, bool):
            texts.add("true" if key else "false")
        elif isinstance(key, int | float):
            texts.add(number_text[json.dumps(key)])
        else:
            texts.add(str(key))
    pairs = []
    for text in sorted(texts):
        if not text or text[0] in "[{" or text == "null":
            continue
        values = [text]
        if _NUMBER_TEXT.fullmatch(text):
            values.append(json.loads(text))
        if text in ("true", "false"):
            values.append(text == "true")
        codes = {score_code(lookup, v) for v in values}
        if len(codes) == 1 and -1 not in codes:
            pairs.append((text, codes.pop()))
    return pairs


def _number_texts(cursor, criteria: list[dict]) -> dict[str, str]:
    """How PostgreSQL's ``->>`` prints each numeric level value (json.dumps form → text)."""
    numbers = sorted(
        {
            json.dumps(v)
            for c in criteria
            for lv in c["levels"]
            for v in (lv["value"],)
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    if not numbers:
        return {}
    cursor.execute("SELECT t, (t::jsonb) #>> '{}' FROM unnest(%(numbers)s::text[]) AS t", {"numbers": numbers})
    return dict(cursor.fetchall())


class _Params(dict):
    """Query parameters; ``add`` names a new one (criterion keys and level texts never go into the SQL text)."""

    def add(self, value) -> str:
        name = f"p{len(self)}"
        self[name] = value
        return f"%({name})s"


class _Record:
    """The fixed-width binary record SQL packs for each row: integers of 2, 4 or 8 bytes, laid into
    64-bit words with shifts (one int8send per word: PostgreSQL spends less on bit arithmetic than
    on a send and a concatenation per field)."""

    def __init__(self):
        self.fields: list[tuple[str, int | None, str, int]] = []  # (column, criterion, SQL, bytes)

    def add(self, column: str, sql: str, size: int, criterion: int | None = None) -> None:
        self.fields.append((column, criterion, sql, size))

    def words(self) -> list[list[tuple[int, int]]]:
        """Fields (index, bit offset from the low end) per word, in order."""
        words: list[list[tuple[int, int]]] = []
        free = 0
        for n, (_, _, _, size) in enumerate(self.fields):
            bits = 8 * size
            if bits > free:
                words.append([])
                free = 64
            free -= bits
            words[-1].append((n, free))
        return words

    def select(self) -> str:
        packed = []
        for word in self.words():
            parts = []
            for n, shift in word:
                _, _, sql, size = self.fields[n]
                value = f"({sql})::int8"
                if size < 8:
                    value = f"({value} & {(1 << (8 * size)) - 1})"
                parts.append(f"({value} << {shift})" if shift else value)
            packed.append(f"int8send({' | '.join(parts)})")
        return " || ".join(packed)

    def unpack(self, records: np.ndarray) -> list[np.ndarray]:
        """Each field's values, sign-extended, from the big-endian words of ``records``."""
        out: list[np.ndarray] = [np.empty(0)] * len(self.fields)
        for w, word in enumerate(self.words()):
            values = records[f"w{w}"].astype(np.int64)
            for n, shift in word:
                bits = 8 * self.fields[n][3]
                out[n] = values if bits == 64 else (values << (64 - shift - bits)) >> (64 - bits)
        return out

    def wire(self) -> np.dtype:
        return np.dtype([(f"w{w}", ">i8") for w in range(len(self.words()))])


@dataclass
class _Statement:
    sql: str
    params: dict
    record: _Record

    @property
    def wire(self) -> np.dtype:  # the record's words, big-endian as PostgreSQL sends integers
        return self.record.wire()


def _rubric_sql(a: dict, criteria: list[dict], counted: str, params: _Params, number_text, record: _Record) -> str:
    """Each score as its level's code; the flags of a rubric row."""
    for j, criterion in enumerate(criteria):
        text = f"{a['payload']}->'scores'->>{params.add(criterion['key'])}"
        pairs = _sql_levels(score_lookup(criterion)[2], number_text)
        whens = " ".join(f"WHEN {params.add(t)} THEN {code}" for t, code in pairs)
        code = f"CASE {text} {whens} ELSE CASE WHEN {text} IS NULL THEN -1 ELSE {UNCODED} END END"
        record.add("scores", f"CASE WHEN {a['kind']} = 'rubric' AND {counted} THEN {code} ELSE -1 END", 2, j)
    # The scored response, as _response reads it: a plain non-negative integer, else -1.
    index = f"{a['payload']}->'response_index'"
    record.add(
        "response",
        f"CASE WHEN {a['kind']} = 'rubric' AND jsonb_typeof({index}) = 'number'"
        f" AND {a['payload']}->>'response_index' ~ '^[0-9]{{1,4}}$'"
        f" THEN ({a['payload']}->>'response_index')::int4 ELSE -1 END",
        2,
    )
    return f"{KIND_CODE['rubric']} + CASE WHEN {counted} THEN {COUNTED} ELSE 0 END"


def _preference_sql(a: dict, record: _Record) -> str:
    """The choice, the chosen and rejected indices, the display order's length; the flags of a preference row.

    Rows SQL leaves to Python: a choice other than response/tie/both_bad, a chosen or rejected index
    that is not a plain integer, or a two-response display order whose first entry is not one."""
    payload, order, kind = a["payload"], a["display_order"], a["kind"]
    choice = f"({payload}->>'choice')"

    def is_int(key: str) -> str:
        return f"(jsonb_typeof({payload}->'{key}') = 'number' AND {payload}->>'{key}' ~ {_INT})"

    def as_int(key: str) -> str:
        return f"CASE WHEN {kind} = 'preference' AND {is_int(key)} THEN ({payload}->>'{key}')::int4 ELSE {NONE} END"

    chosen_ok = f"({payload}->'chosen' IS NULL OR jsonb_typeof({payload}->'chosen') = 'null' OR {is_int('chosen')})"
    rejected_ok = (
        f"coalesce(jsonb_typeof({payload}->'rejected') NOT IN ('number', 'boolean') OR {payload}->>'rejected' ~ {_INT},"
        " TRUE)"
    )
    # CASE, not AND: jsonb_array_length fails on anything but an array.
    order_ok = (
        f"CASE WHEN jsonb_typeof({order}) <> 'array' THEN TRUE WHEN jsonb_array_length({order}) <> 2 THEN TRUE"
        f" ELSE coalesce(jsonb_typeof({order}->0) = 'number' AND {order}->>0 ~ {_INT}, FALSE) END"
    )
    coded = (
        f"coalesce({choice} IN ('tie', 'both_bad')"
        f" OR ({choice} = 'response' AND {chosen_ok} AND {rejected_ok} AND {order_ok}), FALSE)"
    )
    left = (
        f"CASE WHEN {choice} = 'response' AND jsonb_typeof({order}) = 'array' THEN"
        f" CASE WHEN jsonb_array_length({order}) = 2 AND ({order}->0) = ({payload}->'chosen') THEN {LEFT} ELSE 0 END"
        " ELSE 0 END"
    )
    record.add(
        "pcat",
        f"CASE WHEN {kind} <> 'preference' THEN 0 WHEN {choice} = 'tie' THEN 0 WHEN {choice} = 'both_bad' THEN 1"
        f" WHEN {choice} = 'response' AND {is_int('chosen')} THEN {RESPONSE_CHOSEN} ELSE 2 END",
        4,
    )
    record.add("chosen", as_int("chosen"), 4)
    record.add("rejected", as_int("rejected"), 4)
    is_list = f"jsonb_typeof({order}) = 'array'"
    record.add("olen", f"CASE WHEN {kind} = 'preference' AND {is_list} THEN jsonb_array_length({order}) ELSE 0 END", 4)
    return (
        f"{KIND_CODE['preference']} + CASE WHEN {coded} THEN 0 ELSE {EXOTIC} END"
        f" + CASE WHEN {choice} = 'response' THEN {RESPONSE} ELSE 0 END + {left}"
    )


def _gold_sql(a: dict, record: _Record) -> str:
    """The action; the flags of a gold row (an answer that is there but not text goes to Python)."""
    payload = a["payload"]
    action = f"({payload}->>'action')"
    whens = " ".join(f"WHEN '{label}' THEN {code}" for code, label in enumerate(GOLD_LABELS))
    record.add("gcat", f"CASE WHEN {a['kind']} = 'gold' THEN CASE {action} {whens} ELSE {UNCODED} END ELSE 0 END", 2)
    edits = f"{action} IN ('edit', 'write')"
    return (
        f"{KIND_CODE['gold']}"
        f" + CASE WHEN {edits} AND coalesce({payload}->>'answer', '') <> '' THEN {ANSWER} ELSE 0 END"
        f" + CASE WHEN {edits} AND jsonb_typeof({payload}->'answer') NOT IN ('string', 'null') THEN {EXOTIC} ELSE 0 END"
    )


def _project_rows(annotation: str, item: str) -> str:
    """FROM and WHERE of a project's annotations, calibration items left out (parameter ``project``)."""
    a = {f.name: f.column for f in Annotation._meta.concrete_fields}
    i = {f.name: f.column for f in Item._meta.concrete_fields}
    join = f"{item}.{i['id']} = {annotation}.{a['item']}"
    return (
        f"FROM {_table(Annotation)} {annotation} JOIN {_table(Item)} {item} ON {join}"
        f" WHERE {item}.{i['project']} = %(project)s AND NOT {item}.{i['is_calibration']}"
    )


@dataclass
class _Bounds:
    low: int | None
    high: int | None
    only_ours: bool  # every item with an id in [low, high] is one of the project's non-calibration items
    items: int = 0  # the project's non-calibration items


def _item_bounds(cursor, project: Project) -> _Bounds:
    """The id range of the project's items (other than calibration ones), and whether it holds nothing else."""
    i = {f.name: f.column for f in Item._meta.concrete_fields}
    cursor.execute(
        f"WITH ours AS (SELECT min({i['id']}) AS low, max({i['id']}) AS high, count(*) AS n FROM {_table(Item)}"
        f" WHERE {i['project']} = %(project)s AND NOT {i['is_calibration']})"
        f" SELECT low, high, n = (SELECT count(*) FROM {_table(Item)} WHERE {i['id']} BETWEEN low AND high), n"
        " FROM ours",
        {"project": project.pk},
    )
    low, high, only_ours, items = cursor.fetchone()
    return _Bounds(low, high, only_ours=bool(only_ours) and low is not None, items=items)


def _pg_statement(
    *,
    project: Project,
    version: RubricVersion | None,
    kinds: set[str],
    number_text,
    bounds: _Bounds,
    join: bool,
    rubric_apart: bool = False,
) -> _Statement:
    """The query that streams one packed record per annotation of the project (but its rubric reviews
    when ``rubric_apart``: ``_pg_rubric_slices`` reads those)."""
    a = {f.name: f"a.{f.column}" for f in Annotation._meta.concrete_fields}
    params = _Params(project=project.pk, low=bounds.low, high=bounds.high)
    counted = "TRUE"
    if version is not None:
        params["version"] = version.pk
        counted = f"{a['rubric_version']} = %(version)s"
    record = _Record()
    record.add("item", a["item"], 8)
    record.add("reviewer", a["reviewer"], 4)
    record.add("day", _day_sql(a), 4)
    flags_field = len(record.fields)
    flags = {"rubric": _rubric_sql(a, version.criteria if version else [], counted, params, number_text, record)}
    if TaskKind.PREFERENCE in kinds:
        flags["preference"] = _preference_sql(a, record)
    if TaskKind.GOLD in kinds:
        flags["gold"] = _gold_sql(a, record)
    # A kind the project no longer lists (its items stay when the list changes) goes to Python.
    whens = " ".join(f"WHEN '{name}' THEN {flags.get(name, f'{code} + {EXOTIC}')}" for name, code in KIND_CODE.items())
    record.fields.insert(flags_field, ("flags", None, f"CASE {a['kind']} {whens} ELSE {OTHER_KIND} END", 2))
    # A project's items are mostly a few runs of ids (each import inserts a run), so the range lets
    # PostgreSQL read a small project's annotations through the item index instead of scanning the
    # whole table; on a large project it is a cheap filter before the join. When the range holds
    # only the project's items, the join has nothing left to filter and is left out.
    rows = _pg_rows(join=join)
    if rubric_apart:
        rows += f" AND {a['kind']} <> 'rubric'"
    return _Statement(sql=f"SELECT {record.select()} {rows}", params=params, record=record)


def _day_sql(a: dict) -> str:
    """Days since the epoch in UTC: the floor of the timestamp's seconds / 86400, as Python's was."""
    return f"({a['updated_at']} AT TIME ZONE 'UTC')::date - DATE '1970-01-01'"


def _pg_rows(*, join: bool) -> str:
    """FROM and WHERE of the project's annotations with item ids in [``low``, ``high``] (parameters)."""
    in_range = "a.{item} BETWEEN %(low)s AND %(high)s".format(item=Annotation._meta.get_field("item").column)
    return f"{_project_rows('a', 'i')} AND {in_range}" if join else f"FROM {_table(Annotation)} a WHERE {in_range}"


def _table(model) -> str:
    return connections[router.db_for_read(model)].ops.quote_name(model._meta.db_table)


def _estimate(cursor, statement: _Statement) -> int:
    cursor.execute("EXPLAIN (FORMAT JSON) " + statement.sql, statement.params)
    plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


@contextmanager
def _pg_session(alias: str) -> Iterator:
    """A Django connection for the report's reads (see the module docstring)."""
    shared = connections[alias]
    if shared.in_atomic_block:
        yield shared
        return
    own = connections.create_connection(alias)
    try:
        own.set_autocommit(False)
        with own.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # Every row is read, so plan for the whole result (a cursor is otherwise planned for its
            # first tenth: a merge join over two index scans); JIT compilation costs more than it saves here.
            cursor.execute(
                "SELECT set_config('work_mem', %s, true), set_config('cursor_tuple_fraction', '1', true),"
                " set_config('jit', 'off', true)",
                [WORK_MEM],
            )
        yield own
        own.commit()
    finally:
        own.close()


class _Counter:
    """Rows read so far, on the progress bar."""

    def __init__(self, expected: int, progress: Progress):
        self.n, self.expected, self.progress = 0, expected, progress

    def add(self, n: int) -> None:
        self.n += n
        # The planner's estimate may be low (statistics not yet gathered): then the bar still
        # moves, ever slower, as if one more chunk were left.
        self.progress(self.n / max(self.expected, self.n + FETCH_ROWS), f"Reading annotations ({self.n:,} read)")


def _pg_stream(db, statement: _Statement, columns: _Columns, counter: _Counter) -> None:
    wire, fields = statement.wire, statement.record.fields
    with db.connection.cursor(name="agreement_report_rows", binary=True) as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(statement.sql, statement.params)
        while chunk := cursor.fetchmany(FETCH_ROWS):
            records = np.frombuffer(b"".join([row[0] for row in chunk]), dtype=wire)
            part = columns.reserve(len(records))
            for (column, j, _, _), values in zip(fields, statement.record.unpack(records), strict=True):
                target = columns.arrays[column]
                if j is None:
                    target[part] = values
                else:
                    target[j, part] = values
            counter.add(len(records))


# --- PostgreSQL: rubric reviews, one group per distinct payload ------------------------------------
#
# A rubric review's payload is its response index and its scores, so a project of a million reviews
# holds a few hundred distinct payloads. PostgreSQL groups the reviews by payload (one hash of the
# JSON per row, where coding each score in SQL took a JSON extraction and a comparison per criterion)
# and hands over, per payload, the items, reviewers and days as int8 arrays; Python codes each payload
# once, by the rules themselves (``RowCoder``), so no payload shape needs SQL of its own. The item id
# range is read in slices of about FETCH_ROWS reviews, one query each, so the progress moves and only
# a few slices are held at once; in a worker two connections read alternate slices in the same
# snapshot, one core each, and hand them over in slice order (the sums downstream run in item order).

INT8_ARRAY_OID = 1016
# Connections reading a worker's slices at once (the reader and one helper).
READ_CONNECTIONS = 2
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


class _Int8Array(Loader):
    """A binary int8[] as a numpy array, where psycopg would make a Python int of every element."""

    format = Format.BINARY

    def load(self, data) -> np.ndarray:
        ndim, has_null = (int(x) for x in np.frombuffer(data, dtype=">i4", count=2))
        if ndim == 0:
            return np.zeros(0, dtype=np.int64)
        if ndim != 1 or has_null:
            raise ValueError("The agreement report expects one-dimensional int8 arrays without NULLs.")
        n = int(np.frombuffer(data, dtype=">i4", count=1, offset=12)[0])
        # Each element: its length (always 8) and its value, both big-endian.
        elements = np.frombuffer(data, dtype=[("size", ">i4"), ("value", ">i8")], count=n, offset=20)
        return elements["value"].astype(np.int64)


def _pg_rubric_sql(*, join: bool, only_rubric: bool) -> str:
    """Per (kind, rubric version, payload) in the item id slice [``lo``, ``hi``): the items, and each
    reviewer and day packed in one int8. Other kinds (``only_rubric``: the project lists none, so
    they are rare) come as one group each, without payload, for the packed stream to read."""
    a = {f.name: f"a.{f.column}" for f in Annotation._meta.concrete_fields}
    i = {f.name: f"i.{f.column}" for f in Item._meta.concrete_fields}
    where = f"{_pg_rows(join=join)} AND {a['item']} >= %(lo)s AND {a['item']} < %(hi)s"
    if join:  # so the items' side of the join is cut to the slice too
        where += f" AND {i['id']} >= %(lo)s AND {i['id']} < %(hi)s"
    if not only_rubric:
        where += f" AND {a['kind']} = 'rubric'"
    kind = a["kind"]
    return (
        f"SELECT {kind}, {a['rubric_version']}, CASE WHEN {kind} = 'rubric' THEN {a['payload']} END,"
        f" array_agg({a['item']}::int8),"
        f" array_agg(({a['reviewer']}::int8 << 32) | (({_day_sql(a)})::int8 & 4294967295))"
        f" {where} GROUP BY 1, 2, 3"
    )


def _slices(bounds: _Bounds, annotations: int) -> list[tuple[int, int]]:
    """The item id range cut into slices of about FETCH_ROWS of ``annotations`` each (ids spread evenly)."""
    if bounds.low is None:
        return []
    n = max(1, min(1024, -(-annotations // FETCH_ROWS)))
    edges = np.unique(np.linspace(bounds.low, bounds.high + 1, n + 1).round().astype(np.int64))
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _fetch_slice(raw, sql: str, params: dict) -> list[tuple]:
    with raw.cursor(binary=True) as cursor:
        cursor.adapters.register_loader(INT8_ARRAY_OID, _Int8Array)
        cursor.execute(sql, params)
        return cursor.fetchall()


@contextmanager
def _helper(alias: str, db) -> Iterator:
    """A second read-only connection in the same snapshot as ``db`` (which must stay open meanwhile)."""
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_export_snapshot()")
        (snapshot,) = cursor.fetchone()
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"Unexpected snapshot id {snapshot!r} from PostgreSQL.")
    own = connections.create_connection(alias)
    try:
        own.set_autocommit(False)
        with own.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            cursor.execute("SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)", [WORK_MEM])
        yield own.connection
        own.commit()
    finally:
        own.close()


def _lanes(raws: list, sql: str, params: dict, slices: list[tuple[int, int]]) -> Iterator[list[tuple]]:
    """Each slice's groups in slice order, the slices shared out in turn among the connections ``raws``,
    each read by a thread of its own (the waits on PostgreSQL release the GIL). A lane runs at most one
    slice ahead of the reader, so no more than a few slices are held at once."""
    if len(raws) == 1:
        for lo, hi in slices:
            yield _fetch_slice(raws[0], sql, {**params, "lo": lo, "hi": hi})
        return
    lanes = [queue.Queue(maxsize=1) for _ in raws]
    stop = threading.Event()

    def hand_over(out: queue.Queue, got) -> bool:
        while not stop.is_set():
            try:
                out.put(got, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def lane(raw, share, out):
        try:
            for lo, hi in share:
                if stop.is_set() or not hand_over(out, _fetch_slice(raw, sql, {**params, "lo": lo, "hi": hi})):
                    return
        except BaseException as exc:  # handed to the reading thread, which raises it
            hand_over(out, exc)

    threads = [
        threading.Thread(target=lane, args=(raw, slices[n :: len(raws)], lanes[n]), daemon=True)
        for n, raw in enumerate(raws)
    ]
    for thread in threads:
        thread.start()
    try:
        for n in range(len(slices)):
            got = lanes[n % len(raws)].get()
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@dataclass
class _Streamed:
    """What the rubric groups held besides the reviews: how many, their distinct items and reviewers."""

    n: int = 0
    n_items: int = 0
    reviewers: set = field(default_factory=set)
    others: bool = False  # rows of another kind were met (read again by the packed stream)


def _pg_rubric_groups(
    db,
    *,
    alias: str,
    sql: str,
    params: dict,
    slices: list[tuple[int, int]],
    coder: RowCoder,
    n_criteria: int,
    sink: RubricSink,
    counter: _Counter,
    counted_items: np.ndarray,
) -> _Streamed:
    """Read the rubric reviews slice by slice, handing each slice's to ``sink`` in item order.

    ``counted_items`` (sorted) are items already counted: a slice's other items add to ``n_items``."""
    streamed = _Streamed()
    # A worker reads on a connection of its own; a request's transaction (``db`` is the shared
    # connection, which the progress is written on) is read by this thread alone.
    parallel = db is not connections[alias] and len(slices) > 1 and READ_CONNECTIONS > 1
    with _helper(alias, db) if parallel else nullcontext() as helper:
        raws = [db.connection] + ([helper] if helper is not None else [])
        for groups in _lanes(raws, sql, params, slices):
            reviews, items = [], []
            for kind, version_id, payload, group_items, packed in groups:
                items.append(group_items)
                if kind != TaskKind.RUBRIC:
                    streamed.others = True
                    continue
                reviews.append((group_items, packed, coder.code(kind, version_id, _json(payload), None)))
            chunk = _rubric_chunk(reviews, n_criteria)
            if len(items) > len(reviews) or len(counted_items):  # rows of other kinds, or items seen before
                distinct = np.unique(np.concatenate(items)) if items else np.zeros(0, dtype=np.int64)
                if len(counted_items):
                    distinct = distinct[~np.isin(distinct, counted_items, assume_unique=True)]
                streamed.n_items += len(distinct)
            elif len(chunk):  # the chunk is in item order
                streamed.n_items += int(np.count_nonzero(chunk.item[1:] != chunk.item[:-1])) + 1
            if len(chunk):
                streamed.n += len(chunk)
                streamed.reviewers.update(_distinct(chunk.reviewer))
                sink(chunk)
            counter.add(len(chunk))
    return streamed


def _rubric_chunk(reviews: list[tuple[np.ndarray, np.ndarray, Coded]], n_criteria: int) -> RubricChunk:
    """One slice's reviews (per payload: items, packed reviewer and day, codes) as rows in (item, reviewer) order."""
    sizes = np.asarray([len(items) for items, _, _ in reviews], dtype=np.int64)
    group = np.repeat(np.arange(len(reviews)), sizes)
    item = np.concatenate([items for items, _, _ in reviews]) if reviews else np.zeros(0, dtype=np.int64)
    packed = np.concatenate([p for _, p, _ in reviews]) if reviews else np.zeros(0, dtype=np.int64)
    codes = [coded for _, _, coded in reviews]
    scores = np.asarray([c.scores or [-1] * n_criteria for c in codes], dtype=np.int16).reshape(len(codes), n_criteria)
    rows = {
        "item": item,
        "reviewer": (packed >> 32).astype(np.int32),
        "day": ((packed << 32) >> 32).astype(np.int32),  # sign-extended: days before 1970 are negative
        "flags": np.asarray([c.flags for c in codes], dtype=np.int16)[group],
        "scores": scores.T[:, group],
        "response": np.asarray([c.response for c in codes], dtype=np.int16)[group],
    }
    rows = _by_item_and_reviewer(rows)
    return RubricChunk(**rows)


def _rows_chunk(rows: dict[str, np.ndarray], n_criteria: int) -> RubricChunk:
    """The rubric reviews among packed rows, as one chunk."""
    mine = np.flatnonzero((rows["flags"] & 3) == KIND_CODE[TaskKind.RUBRIC])
    chunk = {
        "item": rows["item"][mine],
        "reviewer": rows["reviewer"][mine],
        "day": rows["day"][mine],
        "flags": rows["flags"][mine],
        "scores": rows["scores"][:, mine].reshape(n_criteria, len(mine)),
        "response": rows["response"][mine] if "response" in rows else np.full(len(mine), -1, dtype=np.int16),
    }
    return RubricChunk(**_by_item_and_reviewer(chunk))


def _collect(columns: _Columns) -> RubricSink:
    """A sink that keeps every chunk in ``columns`` (for callers that want all the rows)."""

    def sink(chunk: RubricChunk) -> None:
        part = columns.reserve(len(chunk))
        arrays = columns.arrays
        for name in ("item", "reviewer", "day", "flags", "response"):
            arrays[name][part] = getattr(chunk, name)
        arrays["scores"][:, part] = chunk.scores
        blank = Coded(flags=0)
        for name in ("pcat", "chosen", "rejected", "olen", "gcat"):
            if name in arrays:
                arrays[name][part] = getattr(blank, name)

    return sink


def _pg_recode(db, rows: dict[str, np.ndarray], coder: RowCoder) -> int:
    """Code in Python the rows SQL could not (payload shapes the app does not write); returns how many."""
    flags = rows["flags"]
    exotic = (flags & EXOTIC) != 0
    if rows["scores"].size:
        exotic |= (rows["scores"] == UNCODED).any(axis=0)
    if "gcat" in rows:
        exotic |= rows["gcat"] == UNCODED
    where = np.nonzero(exotic)[0]
    if not len(where):
        return 0
    position = {(int(rows["item"][k]), int(rows["reviewer"][k])): int(k) for k in where}
    col = {f.name: f.column for f in Annotation._meta.concrete_fields}
    sql = (
        f"SELECT {col['item']}, {col['reviewer']}, {col['kind']}, {col['rubric_version']}, {col['payload']},"
        f" {col['display_order']} FROM {_table(Annotation)} WHERE {col['item']} = ANY(%(items)s)"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, {"items": sorted({item for item, _ in position})})
        for item_id, reviewer_id, kind, version_id, payload, order in cursor.fetchall():
            k = position.get((item_id, reviewer_id))
            if k is not None:
                _store(rows, k, coder.code(kind, version_id, _json(payload), _json(order)))
    return len(where)


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else value


def _fill(rows: dict[str, np.ndarray], part: slice, coded: Coded) -> None:
    """Every row of ``part`` gets the codes of one payload."""
    rows["flags"][part] = coded.flags
    if rows["scores"].size:
        rows["scores"][:, part] = np.asarray(coded.scores or [-1] * len(rows["scores"]), dtype=np.int16)[:, None]
    for name in ("pcat", "chosen", "rejected", "olen", "gcat", "response"):
        if name in rows:
            rows[name][part] = getattr(coded, name)


def _store(rows: dict[str, np.ndarray], k: int, coded: Coded) -> None:
    rows["flags"][k] = coded.flags
    if rows["scores"].size:
        rows["scores"][:, k] = coded.scores or -1
    for name in ("pcat", "chosen", "rejected", "olen", "gcat", "response"):
        if name in rows:
            rows[name][k] = getattr(coded, name)


# --- SQLite ------------------------------------------------------------------------------------------


def _sqlite_stream(db, project: Project, coder: RowCoder, columns: _Columns, progress: Progress) -> None:
    a = {f.name: f"a.{f.column}" for f in Annotation._meta.concrete_fields}
    rows = _project_rows("a", "i").replace("%(project)s", "%s")
    with db.cursor() as cursor:
        cursor.execute(f"SELECT count(*) {rows}", [project.pk])
        (total,) = cursor.fetchone()
        day = f"CAST(julianday(date({a['updated_at']})) - 2440587.5 AS INTEGER)"
        cursor.execute(
            f"SELECT {a['item']}, {a['reviewer']}, {day}, {a['kind']}, {a['rubric_version']}, {a['payload']},"
            f" {a['display_order']} {rows}",
            [project.pk],
        )
        while chunk := cursor.fetchmany(FETCH_ROWS):
            part = columns.reserve(len(chunk))
            arrays = columns.arrays
            for k, (item_id, reviewer_id, day, kind, version_id, payload, order) in enumerate(chunk, start=part.start):
                arrays["item"][k], arrays["reviewer"][k], arrays["day"][k] = item_id, reviewer_id, day
                coded = coder.code(kind, version_id, _json(payload), _json(order))
                _store(arrays, k, coded)
            progress(min(1.0, columns.n / max(1, total)), f"Reading annotations ({columns.n:,} of {total:,})")


# --- Both ----------------------------------------------------------------------------------------------


# SQLite takes at most 32766 parameters in a statement (999 before 3.32).
_IN_BATCH = 900


def _rows_of_items(db, item_ids: list[int], names: list[str]) -> Iterator[tuple]:
    """``names`` columns of the annotations on ``item_ids`` (ascending), by item and reviewer."""
    col = {f.name: f.column for f in Annotation._meta.concrete_fields}
    select = ", ".join(col[name] for name in names)
    with db.cursor() as cursor:
        for start in range(0, len(item_ids), _IN_BATCH):
            batch = item_ids[start : start + _IN_BATCH]
            cursor.execute(
                f"SELECT {select} FROM {_table(Annotation)} WHERE {col['item']} IN ({', '.join(['%s'] * len(batch))})"
                f" ORDER BY {col['item']}, {col['reviewer']}",
                batch,
            )
            yield from cursor.fetchall()


def _check_rows(db, check_ids: list[int]) -> list[tuple]:
    rows = _rows_of_items(db, check_ids, ["item", "reviewer", "kind", "payload"])
    return [(item_id, reviewer_id, kind, _json(payload)) for item_id, reviewer_id, kind, payload in rows]


def _answers(db, rows: dict[str, np.ndarray], max_pairs: int) -> dict[int, list[str]]:
    """The gold answers of the first items (by id) that give ``max_pairs`` pairs; edit similarity reads no more."""
    if "gcat" not in rows:
        return {}
    from annotate.consensus import normalize_text

    mine = ((rows["flags"] & 3) == KIND_CODE[TaskKind.GOLD]) & ((rows["flags"] & ANSWER) != 0)
    items, counts = np.unique(rows["item"][mine], return_counts=True)
    pairs = np.cumsum(counts * (counts - 1) // 2)
    last = int(np.searchsorted(pairs, max_pairs))  # the item that reaches the cap is read too
    answers: dict[int, list[str]] = {}
    for item_id, kind, payload in _rows_of_items(db, [int(x) for x in items[: last + 1]], ["item", "kind", "payload"]):
        payload = _json(payload)
        if kind == TaskKind.GOLD and payload.get("action") in ("edit", "write") and payload.get("answer"):
            answers.setdefault(item_id, []).append(normalize_text(payload["answer"]))
    return answers


def _add_missing_kinds(rows: dict[str, np.ndarray], n_criteria: int) -> None:
    """Columns for a kind the project no longer lists but still has annotations of (coded in Python)."""
    present = np.bincount(rows["flags"] & 3, minlength=4)
    n = len(rows["flags"])
    if present[KIND_CODE[TaskKind.PREFERENCE]] and "pcat" not in rows:
        rows["pcat"] = np.zeros(n, dtype=np.int32)
        rows["chosen"] = np.full(n, NONE, dtype=np.int32)
        rows["rejected"] = np.full(n, NONE, dtype=np.int32)
        rows["olen"] = np.zeros(n, dtype=np.int32)
    if present[KIND_CODE[TaskKind.GOLD]] and "gcat" not in rows:
        rows["gcat"] = np.zeros(n, dtype=np.int16)
    if present[KIND_CODE[TaskKind.RUBRIC]] and "response" not in rows:
        rows["response"] = np.full(n, -1, dtype=np.int16)


def item_run(project: Project) -> dict | None:
    """The id run of the project's items (low, high, and how many are calibration items) when it holds no
    other project's items, so that rows of the project's items are found by item id alone; else None.

    A project's items are mostly one run of ids (each import inserts a run); finding its rows by range
    spares joining a million of them to the items."""
    i = {f.name: f.column for f in Item._meta.concrete_fields}
    table = _table(Item)
    with connections[router.db_for_read(Item)].cursor() as cursor:
        cursor.execute(
            f"WITH ours AS (SELECT min({i['id']}) AS low, max({i['id']}) AS high, count(*) AS n,"
            f" sum(CASE WHEN {i['is_calibration']} THEN 1 ELSE 0 END) AS calibration"
            f" FROM {table} WHERE {i['project']} = %s)"
            f" SELECT low, high, calibration, n = (SELECT count(*) FROM {table} WHERE {i['id']} BETWEEN low AND high)"
            " FROM ours",
            [project.pk],
        )
        low, high, calibration, alone = cursor.fetchone()
    return {"low": low, "high": high, "calibration": calibration} if low is not None and alone else None


def read(
    *,
    project: Project,
    version: RubricVersion | None,
    max_similarity_pairs: int,
    progress: Progress = _noop,
    rubric: RubricSink | None = None,
) -> ReportData:
    """Every annotation of ``project`` the report reads, as arrays, and the few other rows it needs.

    With ``rubric``, the rubric reviews are handed to it a run of items at a time, in item order, and
    left out of the rows: a project of a million reviews is never held at once."""
    alias = router.db_for_read(Annotation)
    criteria = version.criteria if version else []
    preference, gold = Labels(PREFERENCE_LABELS), Labels(GOLD_LABELS)
    coder = RowCoder(criteria=criteria, version_id=version.pk if version else None, preference=preference, gold=gold)
    checks = dict(Item.objects.filter(project=project, is_check=True).values_list("id", "check_answer"))
    run = item_run(project)
    results = (
        ItemResult.objects.filter(item__gte=run["low"], item__lte=run["high"])
        if run
        else ItemResult.objects.filter(item__project=project)
    )
    status_counts = dict(results.values_list("status").annotate(n=Count("id")).order_by())
    progress(0.0, "Reading annotations")
    streamed = _Streamed()
    if connections[alias].vendor == "postgresql":
        kinds = set(project.task_kinds or []) & set(KIND_CODE)
        # Rubric reviews are read grouped by payload when the project has them; the other kinds as
        # packed rows (a project that no longer lists rubric reads its few rubric rows that way too).
        rubric_apart = TaskKind.RUBRIC in kinds
        rubric_in_rows = not rubric_apart
        with _pg_session(alias) as db:
            with db.cursor() as cursor:
                bounds = _item_bounds(cursor, project)
                # Without the join only inside the worker's snapshot, where no item can appear in the
                # range between the check and the read.
                join = not (bounds.only_ours and db is not connections[alias])
                statement = _pg_statement(
                    project=project,
                    version=version,
                    kinds=kinds,
                    number_text=_number_texts(cursor, criteria),
                    bounds=bounds,
                    join=join,
                    rubric_apart=rubric_apart,
                )
                every_row = _Statement(sql=f"SELECT 1 {_pg_rows(join=join)}", params=statement.params, record=_Record())
                estimate = _estimate(cursor, every_row)
            # The planner's estimate may be low (statistics not yet gathered); the items are counted.
            counter = _Counter(max(estimate, bounds.items * project.overlap_k), progress)
            # The other kinds are read first when the project lists them, so that a slice of rubric
            # reviews can tell which of its items are new without all the items being kept.
            packed_first = not rubric_apart or bool(kinds - {TaskKind.RUBRIC})
            # Room for every row (pages never written cost no memory); a project that lists only
            # rubric has few other rows, and the columns grow if it has more.
            capacity = int(estimate * 1.05) + 1024 if packed_first or rubric is None else 1024
            columns = _Columns(capacity, _spec(len(criteria), kinds))
            if packed_first:
                _pg_stream(db, statement, columns, counter)
            counted_items = np.unique(columns.arrays["item"][: columns.n]) if packed_first else np.zeros(0, np.int64)
            if rubric_apart:
                streamed = _pg_rubric_groups(
                    db,
                    alias=alias,
                    sql=_pg_rubric_sql(join=join, only_rubric=kinds == {TaskKind.RUBRIC}),
                    params={"project": project.pk, "low": bounds.low, "high": bounds.high},
                    slices=_slices(bounds, counter.expected),
                    coder=coder,
                    n_criteria=len(criteria),
                    sink=rubric or _collect(columns),
                    counter=counter,
                    counted_items=counted_items,
                )
                if streamed.others and not packed_first:  # their items were counted with the slices
                    _pg_stream(db, statement, columns, counter)
            rows = _by_item_and_reviewer(columns.trimmed())
            _add_missing_kinds(rows, len(criteria))
            coded_in_python = _pg_recode(db, rows, coder)
            check_rows = _check_rows(db, sorted(checks))
            answers = _answers(db, rows, max_similarity_pairs)
    else:
        db = connections[alias]
        columns = _Columns(1024, _spec(len(criteria), set(KIND_CODE)))
        _sqlite_stream(db, project, coder, columns, progress)
        rows = columns.trimmed()
        coded_in_python = len(rows["item"])
        check_rows = _check_rows(db, sorted(checks))
        answers = _answers(db, rows, max_similarity_pairs)
        counted_items = np.unique(rows["item"])
        rubric_in_rows = True
    if rubric is not None and rubric_in_rows:
        rubric(_rows_chunk(rows, len(criteria)))
    reviewer_ids = sorted(set(_distinct(rows["reviewer"])) | streamed.reviewers)
    user = get_user_model()
    names = dict(user.objects.filter(id__in=reviewer_ids).values_list("id", user.USERNAME_FIELD))
    return ReportData(
        rows=ReportRows(
            n=len(rows["item"]),
            item=rows["item"],
            reviewer=rows["reviewer"],
            day=rows["day"],
            flags=rows["flags"],
            scores=rows["scores"],
            pcat=rows.get("pcat"),
            chosen=rows.get("chosen"),
            rejected=rows.get("rejected"),
            olen=rows.get("olen"),
            gcat=rows.get("gcat"),
            response=rows.get("response"),
            preference_labels=preference.names,
            gold_labels=gold.names,
        ),
        n_annotations=len(rows["item"]) + (streamed.n if rubric is not None else 0),
        n_items=len(counted_items) + streamed.n_items,
        criteria=criteria,
        names=names,
        status_counts={str(k): int(v) for k, v in status_counts.items()},
        checks=checks,
        check_rows=check_rows,
        answers=answers,
        coded_in_python=coded_in_python,
    )


def _by_item_and_reviewer(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows in (item, reviewer) order, the order the report arranges them in: one sort here, where
    the rubric groups arrive in no order, instead of one per section and criterion later."""
    item, reviewer = rows["item"], rows["reviewer"]
    if len(item) < 2:
        return rows
    if item.min() >= 0 and reviewer.min() >= 0 and item.max() < 2**31:
        # One int64 key per row (an annotation is unique per item and reviewer): one sort, not two.
        key = (item << 32) | reviewer.astype(np.int64)
        if np.all(key[1:] > key[:-1]):
            return rows
        order = np.argsort(key)
    else:
        order = np.lexsort((reviewer, item))
    return {name: array[..., order] for name, array in rows.items()}


def _distinct(values: np.ndarray) -> list[int]:
    if not len(values):
        return []
    top = int(values.max())
    if int(values.min()) >= 0 and top < 4 * len(values) + 1_000_000:
        return [int(x) for x in np.flatnonzero(np.bincount(values))]
    return [int(x) for x in np.unique(values)]
