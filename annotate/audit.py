"""What a training snapshot would teach: detectors over its examples, as plain functions of plain data.

A fine-tune copies its data's habits along with its content. The detectors here look for the habits a
person would not want copied: a sign-off on most answers, one model's tic, a refusal template, facts
that disagree between answers, preference pairs that teach nothing, one template filling the data, a
source that drowns the others. ``Auditor`` takes the examples one at a time (``feed``) and keeps
bounded state, so a snapshot of any size is read once, in a stream; ``report`` returns the findings
as JSON-ready dicts. Every finding has a ``share`` (of the examples it concerns), a ``lift`` over a
baseline where one applies, and example record ids.

Baselines. A recurring opening or closing is compared with the same phrase in the examples a person
wrote (gold answers written or edited by reviewers) when there are enough of them, otherwise with the
examples from other sources (models, provenances). For preference pairs, a phrase on the chosen side
is compared with the rejected side: a phrase the chosen side has and the rejected side lacks is what
DPO pushes the model towards.

Nothing here reads the database; ``training/services`` (the audit task) streams records in.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import tempfile
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

# --- Inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One training example as the audit sees it."""

    id: int  # snapshot record id
    kind: str  # "sft" | "dpo"
    prompt: str  # the prompt as text (chat turns joined)
    target: str  # SFT completion, or the DPO chosen response
    rejected: str = ""  # DPO only
    provenance: str = ""  # where the item came from (human, distilled, self_generated, llm_judged, ...)
    source: str = ""  # who produced the target: a model label, "human" (written or edited by a reviewer)
    rejected_source: str = ""
    decided_by: str = ""  # "consensus" | "adjudicated"
    agreement: float | None = None  # share of reviews agreeing with the result
    left_picks: int = 0  # reviews of the pair that chose the response shown first
    picks: int = 0  # reviews of the pair that chose one response


HUMAN = "human"

# --- Thresholds (defaults; a project's gates may be stricter or looser) -------------------------------------

MIN_SHARE = 0.05  # a phrase on fewer examples than this is not a habit worth reporting
MIN_LIFT = 3.0  # ... nor one that is common in the baseline too
MIN_GROUP_SHARE = 0.30  # within one source: the share that makes a phrase that source's tic
MIN_COUNT = 5
BASELINE_MIN = 30  # human-written examples needed before they are the baseline
SAMPLE_EVERY = 8  # 1 in N examples feeds the repetition sample (distinct-n, compression ratio)
SAMPLE_MIN = 20_000  # ... but below this many examples every one does
PHRASE_SHARE = 0.2  # a 4-gram in this share of answers is a habit
PHRASE_KEEP = 200_000  # distinct 4-grams counted at once (bounded: see BoundedCounter)
PHRASE_CANDIDATES = 400  # the most frequent 4-grams considered for phrases
PHRASE_EVERY = 16  # in a snapshot of more than SAMPLE_MIN, 1 in N answers has its 4-grams counted (costly) ...
PHRASE_TRACK = 0.1  # ... and a 4-gram in this share of them is tracked: counted exactly in every answer
TOP_K = 20_000  # distinct openings/closings/templates counted at once
CHUNK = 5_000  # examples fed at once: the counters update per chunk, in C
EXAMPLES = 8
FACT_SLOTS = 20_000
DOMINANT_SHARE = 0.8
TEMPLATE_SHARE = 0.2
DISTINCT_SAMPLE = 2_000

# Phrases a model should not learn to say by default, whatever their share.
KNOWN_PHRASES = {
    "as an ai language model": "AI disclaimer",
    "as a large language model": "AI disclaimer",
    "as an ai assistant": "AI disclaimer",
    "i'm sorry, but i can't": "refusal",
    "i'm sorry, but i cannot": "refusal",
    "i cannot help with": "refusal",
    "i can't help with": "refusal",
    "i can't assist with": "refusal",
    "i cannot assist with": "refusal",
    "i am unable to": "refusal",
    "i'm unable to": "refusal",
}

# --- Text helpers ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[\w']+|[^\w\s]")
_WORD = re.compile(r"[\w']+")
_DIGITS = re.compile(r"\d+")
_QUANTITY = re.compile(
    r"\$?\d+(?:[.,]\d+)?(?:\s*(?:-|–|to)\s*\d+(?:[.,]\d+)?)?\s*"  # a number or a range
    r"(%|percent|(?:business |working |calendar )?(?:minute|hour|day|week|month|year)s?|dollars?|usd|eur|gbp)\b"
)
_UNIT_WORDS = re.compile(r"^(?:business|working|calendar) ")
# Words that say nothing about which quantity a number is.
_STOP = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "to",
        "and",
        "or",
        "in",
        "on",
        "for",
        "is",
        "are",
        "be",
        "it",
        "your",
        "our",
        "you",
        "we",
        "i",
        "at",
        "by",
        "with",
        "that",
        "this",
        "takes",
        "take",
        "about",
        "after",
        "last",
        "every",
        "up",
    }
)
_HAS_DIGIT = re.compile(r"\d")
_FORMAT_ONLY = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Text as compared: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def _sampled(record_id: int, every: int) -> bool:
    """Whether a record is in a sample of 1 in ``every``, chosen by the top bits of a multiplicative hash of its
    id (stable between runs, spread over the snapshot whatever its order)."""
    return ((record_id * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) * every >> 64 == 0


# --- Bounded counters -----------------------------------------------------------------------------------------


class BoundedCounter:
    """Counts of keys in bounded memory, updated a chunk at a time in C, with up to ``EXAMPLES`` example ids
    per key.

    Past ``capacity`` keys, the less frequent half is dropped (lossy counting). A count is then a lower bound:
    a key dropped earlier may have lost up to the threshold of each drop (``slack``, their sum). A key kept
    since before the first drop has an exact count; ``error(key)`` says which (0 when exact). A habit worth
    reporting is frequent from early on, so its count is exact on any data short of a pathological order."""

    def __init__(self, capacity: int = TOP_K, *, examples: bool = True):
        self.capacity = capacity
        self.counts: Counter = Counter()
        self.examples: dict | None = {} if examples else None
        self.slack = 0
        self.kept: set | None = None  # the keys never dropped, once something has been

    def update(self, keys: Iterable, ids: Iterable[int] = ()) -> None:
        """Count each key once per occurrence; ``ids``, beside ``keys``, are their examples' record ids."""
        if self.examples is not None:
            keys = keys if isinstance(keys, list) else list(keys)
            examples = self.examples
            for key, rid in zip(keys, ids, strict=True):
                ex = examples.get(key)
                if ex is None:
                    examples[key] = [rid]
                elif len(ex) < EXAMPLES:
                    ex.append(rid)
        self.counts.update(keys)
        if len(self.counts) > self.capacity:
            self._drop()

    def _drop(self) -> None:
        counts = self.counts
        values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        keep = self.capacity // 2
        threshold = int(np.partition(values, len(values) - keep)[len(values) - keep])
        self.counts = Counter({k: v for k, v in counts.items() if v > threshold})
        if self.examples is not None:
            self.examples = {k: v for k, v in self.examples.items() if k in self.counts}
        self.slack += threshold
        self.kept = set(self.counts) if self.kept is None else self.kept & self.counts.keys()

    def get(self, key) -> int:
        return self.counts.get(key, 0)

    def error(self, key) -> int:
        """How far below the true count ``get(key)`` may be (0: exact)."""
        if self.kept is None or key in self.kept:
            return 0
        return self.slack

    def most_common(self, n: int) -> list[tuple]:
        return heapq.nlargest(n, self.counts.items(), key=lambda kv: kv[1])

    def example_ids(self, key) -> list[int]:
        return (self.examples or {}).get(key, [])[:EXAMPLES]



class _Spill:
    """Rows of int64 hashes for a join at the end, kept on disk in partitions by a hash column, so that memory
    holds one partition at a time (a few MiB) whatever the snapshot's size."""

    def __init__(self, columns: int, expected: int | None):
        self.columns = columns
        # About 64k rows a partition; one partition (in memory, no file) up to that.
        self.parts = max(1, min(256, -(-(expected or 0) // 65_536)))
        self.files: list | None = None
        self.memory: list[np.ndarray] = []
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        """Rows (an array of shape (n, columns)) partitioned by their first column."""
        if not len(rows):
            return
        self.rows += len(rows)
        if self.parts == 1:
            self.memory.append(rows)
            return
        if self.files is None:
            # Closed by close(), or when the auditor is collected.
            self.files = [tempfile.TemporaryFile() for _ in range(self.parts)]  # noqa: SIM115
        part = (rows[:, 0].view(np.uint64) % np.uint64(self.parts)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for p in range(self.parts):
            if bounds[p] < bounds[p + 1]:
                self.files[p].write(rows[order[bounds[p] : bounds[p + 1]]].tobytes())

    def partitions(self):
        """Each partition's rows, one array at a time (every row whose first column is equal is in one)."""
        if self.files is None:
            yield np.concatenate(self.memory) if self.memory else np.zeros((0, self.columns), dtype=np.int64)
            return
        for f in self.files:
            f.seek(0)
            yield np.frombuffer(f.read(), dtype=np.int64).reshape(-1, self.columns)

    def close(self) -> None:
        for f in self.files or ():
            f.close()
        self.files, self.memory = None, []


# --- Statistics -------------------------------------------------------------------------------------------------


def binomial_two_sided(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided binomial test p-value (normal approximation with continuity correction above n=50)."""
    if n == 0:
        return 1.0
    if n <= 50:
        probs = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
        observed = probs[k]
        return min(1.0, sum(q for q in probs if q <= observed * (1 + 1e-9)))
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    z = (abs(k - mean) - 0.5) / sd
    return min(1.0, math.erfc(z / math.sqrt(2)))


def _lift(count: int, n: int, base_count: int, base_n: int) -> float:
    """Share over baseline share, with half a count added to both so an absent baseline is not a division by zero."""
    return ((count + 0.5) / (n + 1)) / ((base_count + 0.5) / (base_n + 1))


def _share(count: int, n: int) -> float:
    return round(count / n, 4) if n else 0.0


def _bound(error: int, n: int) -> dict:
    """A count that may be short (a bounded counter let the key go once): how short, at most. Nothing when exact."""
    return {"count_error": error, "share_error": round(error / n, 4) if n else 0.0} if error else {}


# --- Text features ------------------------------------------------------------------------------------------------


def opening_and_closing(text: str, *, normalized: bool = False) -> tuple[str, str]:
    """The first sentence's first words and the last sentence's last words, normalized (up to six words each)."""
    text = text if normalized else normalize(text)
    if not text:
        return "", ""
    # normalize() leaves single spaces: a sentence ends at a word ending in ".", "!" or "?" before a space. Only
    # the first and last seven words are looked at (split at most six times from either end).
    head = text.split(" ", 6)
    last = len(head) - 1  # the text's last word, or the rest of it: no sentence ends before it here
    opening = head[:6]
    for i, word in enumerate(opening):
        if i < last and word[-1] in ".!?":
            opening = head[: i + 1]
            break
    tail = text.rsplit(" ", 6)
    closing = tail[-6:]
    for i in range(len(tail) - 2, -1, -1):
        if tail[i][-1] in ".!?":
            closing = tail[i + 1 :]
            break
    return " ".join(opening), " ".join(closing)


def _quantities(text: str):
    """``_QUANTITY.finditer(text)``, tried only where a number starts (a scan for a digit is far cheaper than
    trying the whole pattern at every character; where it fails at a number's first digit it fails at the rest)."""
    end = 0
    for run in _DIGITS.finditer(text):
        start = run.start()
        if start < end:
            continue  # inside the last quantity (a range, a decimal)
        match = None
        if start and text[start - 1] == "$" and start - 1 >= end:
            match = _QUANTITY.match(text, start - 1)
        match = match or _QUANTITY.match(text, start)
        if match:
            end = match.end()
            yield match


def facts(text: str, *, normalized: bool = False) -> list[tuple[str, str]]:
    """Stated quantities as (slot, value): "a full refund within 30 days of delivery" gives
    ("refund within … day of delivery", "30"). Two answers that fill one slot with different values disagree.
    A slot is the two words before the number, the unit and the two words after it; a quantity with fewer
    than two telling words around it is left out (too little context to say which quantity it is)."""
    text = text if normalized else normalize(text)
    if not _has_digit(text):
        return []
    out = []
    for match in _quantities(text):
        before = _WORD.findall(text[max(0, match.start() - 40) : match.start()])[-2:]
        after_text = text[match.end() : match.end() + 40]
        after = [] if after_text[:1] not in (" ", "") else _WORD.findall(after_text.split(",")[0].split(".")[0])[:2]
        context = [w for w in before + after if w not in _STOP and not w.isdigit()]
        if len(context) < 2:
            continue
        unit = _UNIT_WORDS.sub("", match.group(1))
        unit = unit if unit == "%" else unit.rstrip("s")
        value = match.group(0)[: match.start(1) - match.start()].strip().replace(" ", "")
        slot = " ".join(part for part in (" ".join(before), "…", " ".join([unit, *after])) if part)
        out.append((slot, value))
    return out


_ASCII_NOT_ALNUM = bytes(c for c in range(128) if not chr(c).isalnum())


def format_key(text: str, *, normalized: bool = False) -> str:
    """Text with case, punctuation, markup and spacing removed: two texts equal here differ only in format."""
    text = text if normalized else normalize(text)
    if text.isascii():  # the same as the pattern below, in one pass of C
        return text.encode().translate(None, _ASCII_NOT_ALNUM).decode()
    return _FORMAT_ONLY.sub("", text)


# For ASCII text, ``_WORD.findall`` in one pass of C: every byte that is not a word character becomes a space.
_ASCII_NOT_WORD = bytes(c if chr(c).isalnum() or chr(c) in "_'" else 32 for c in range(256))


def word_list(text: str) -> list[str]:
    """The words of a text as ``_WORD`` finds them (``[\\w']+``)."""
    if text.isascii():
        return text.encode().translate(_ASCII_NOT_WORD).decode().split()
    return _WORD.findall(text)


def _words(text: str) -> list[str]:
    return word_list(normalize(text))


def _has_digit(text: str) -> bool:
    if text.isascii():  # ten scans in C are far cheaper than one regular expression over the text
        return any(map(text.__contains__, "0123456789"))
    return _HAS_DIGIT.search(text) is not None


def _latin_share(text: str) -> float:
    if text.isascii():
        return 1.0
    letters = [c for c in text[:400] if c.isalpha()]
    if not letters:
        return 1.0
    return sum("a" <= c.lower() <= "z" for c in letters) / len(letters)


def skeleton(text: str) -> str:
    """A text with its numbers masked: answers from one template with different numbers share a skeleton."""
    return _DIGITS.sub("#", normalize(text))


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams (lower means more repetitive text); None without any n-gram."""
    grams = Counter()
    for text in texts:
        words = _words(text)
        grams.update(zip(*(words[i:] for i in range(n)), strict=False))
    total = sum(grams.values())
    return round(len(grams) / total, 4) if total else None


def compression_ratio(texts: list[str]) -> float | None:
    """Compressed over raw size of the texts together (lower means more repetition)."""
    raw = "\n".join(texts).encode()
    return round(len(zlib.compress(raw, 6)) / len(raw), 4) if raw else None


def pair_issues(chosen: str, rejected: str, *, normalized: bool = False) -> list[str]:
    """Why a preference pair teaches nothing (or little): empty, identical, format_only, near_identical,
    far_shorter, truncated, other_script. Empty for a pair with a real contrast."""
    if not normalized:
        chosen, rejected = normalize(chosen), normalize(rejected)
    if not rejected.strip():
        return ["empty"]
    if chosen == rejected:
        return ["identical"]
    if format_key(chosen, normalized=True) == format_key(rejected, normalized=True):
        return ["format_only"]
    # Normalized text has single spaces and no space at either end: its words are its spaces plus one.
    chosen_words, rejected_words = (chosen.count(" ") + 1 if chosen else 0), rejected.count(" ") + 1
    if (
        0.8 * chosen_words <= rejected_words <= 1.25 * chosen_words
        and similarity(chosen, rejected, normalized=True) >= 0.9
    ):
        return ["near_identical"]
    issues = []
    if chosen_words >= 12 and rejected_words < 0.25 * chosen_words:
        issues.append("far_shorter")
    elif not rejected.rstrip().endswith((".", "!", "?", '"', ")", "`", "*")) and len(rejected) < 0.8 * len(chosen):
        issues.append("truncated")
    if abs(_latin_share(chosen) - _latin_share(rejected)) > 0.5:
        issues.append("other_script")
    return issues


def similarity(a: str, b: str, *, normalized: bool = False) -> float:
    """Jaccard similarity of the two texts' word sets (1.0 for two empty texts)."""
    if normalized:
        wa, wb = set(word_list(a)), set(word_list(b))
    else:
        wa, wb = set(_words(a)), set(_words(b))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


# --- The auditor ---------------------------------------------------------------------------------------------------


GROUP_TOP_K = 5_000  # openings and closings counted per source
# The known phrases all start with one of these: an answer without any of them needs no closer look.
_KNOWN_PREFIXES = tuple(sorted({phrase[:4] for phrase in KNOWN_PHRASES}))


@dataclass
class _Group:
    n: int = 0
    openings: BoundedCounter = field(default_factory=lambda: BoundedCounter(GROUP_TOP_K, examples=False))
    closings: BoundedCounter = field(default_factory=lambda: BoundedCounter(GROUP_TOP_K, examples=False))


def _gram_keys(norm_text: str) -> set[int]:
    """The distinct word 4-grams of a normalized text, each as the hash of its words (within one process)."""
    words = word_list(norm_text)
    return set(map(hash, zip(words, words[1:], words[2:], words[3:], strict=False)))


class Auditor:
    """Feed it every record of a snapshot once, then ask for the ``report``. ``expected``: how many records
    will come (the size of the repetition sample, and how the hash joins at the end are partitioned).

    Records are taken a chunk at a time (``feed_many``): the text features are made per record, and the
    counters updated per chunk in C. Memory is bounded: the counters keep their most frequent keys, and the
    hashes for the joins at the end (same prompt, swapped pairs) wait on disk in partitions."""

    # What the text detectors (``parts="text"``) hold: all another auditor needs to take their findings over.
    TEXT_STATE = (
        *("n", "known", "fact_slots", "skeletons", "skeleton_text"),
        *("phrases", "phrase_docs", "phrase_keys", "tracked"),
    )

    def __init__(self, *, expected: int | None = None, parts: str = "all"):
        if parts not in ("all", "stream", "text"):
            raise ValueError(f"parts is 'all', 'stream' or 'text', not {parts!r}")
        self.expected = expected
        self.parts = parts
        self.n = 0
        self.n_sft = 0
        self.n_dpo = 0
        self.openings = BoundedCounter()
        self.closings = BoundedCounter()
        self.base_openings = BoundedCounter(examples=False)
        self.base_closings = BoundedCounter(examples=False)
        self.n_base = 0
        self.rejected_openings = BoundedCounter()
        self.rejected_closings = BoundedCounter()
        self.chosen_openings = BoundedCounter()
        self.chosen_closings = BoundedCounter()
        self.by_source: dict[str, _Group] = defaultdict(_Group)
        self.known: dict[str, list] = {category: [0, [], Counter()] for category in set(KNOWN_PHRASES.values())}
        # Word 4-grams anywhere, once per answer, keyed by hash, in every answer up to SAMPLE_MIN and a sample
        # after (the costliest count); the frequent ones are then tracked: counted exactly in every answer.
        self.phrases = BoundedCounter(PHRASE_KEEP, examples=False)
        self.phrase_docs = 0
        self.phrase_keys: set[int] = set()
        self.tracked: list[tuple[str, str, dict]] = []
        self.n_sampled = 0
        self.fact_slots: dict[str, dict[str, list]] = {}
        # Hashes for the joins at the end: SFT (prompt, answer, id); DPO (pair, id) and (swapped pair).
        self.sft_rows = _Spill(3, expected)
        self.pair_rows = _Spill(2, expected)
        self.swapped_rows = _Spill(1, expected)
        # Pair quality.
        self.pairs = 0
        self.pair_issues: dict[str, list] = {
            k: [0, []]
            for k in ("identical", "format_only", "near_identical", "empty", "truncated", "far_shorter", "other_script")
        }
        self.longer_chosen = 0
        self.longer_rejected = 0
        self.log_ratio_sum = 0.0
        self.left_picks = 0
        self.picks = 0
        # Lineage.
        self.provenance = Counter()
        self.decided = Counter()
        self.agreement_sum: dict[str, float] = defaultdict(float)
        self.agreement_n: Counter = Counter()
        # Templates by the hash of their skeleton (answers can be long), with the start of the recurring ones.
        self.skeletons = BoundedCounter()
        self.skeleton_text: dict[int, str] = {}
        self.distinct_samples: dict[str, list[str]] = defaultdict(list)

    def text_state(self) -> dict:
        """The text detectors' state, for ``adopt_text`` (picklable)."""
        return {name: getattr(self, name) for name in self.TEXT_STATE}

    def adopt_text(self, state: dict) -> None:
        """Take over the text detectors' state from an auditor (``parts="text"``) fed the same records, so that
        this one (``parts="stream"``) reports every finding."""
        if state["n"] != self.n:
            raise ValueError(
                f"The text detectors read {state['n']:,} records and the rest {self.n:,}: not one snapshot."
            )
        for name, value in state.items():
            setattr(self, name, value)
        self.parts = "all"

    # -- feeding ----------------------------------------------------------------------------------------------------

    def feed(self, record: AuditRecord) -> None:
        self.feed_many([record])

    def feed_all(self, records: Iterable[AuditRecord]) -> Auditor:
        records = iter(records)
        while chunk := list(islice(records, CHUNK)):
            self.feed_many(chunk)
        return self

    def feed_many(self, records: list[AuditRecord]) -> None:
        """Feed a chunk of records (up to a few thousand: each chunk's features are held until it is counted)."""
        norms = [normalize(record.target) for record in records]
        self.n += len(records)
        if self.parts != "text":
            self._feed_stream(records, norms)
        if self.parts != "stream":
            self._feed_text(records, norms)

    def _feed_stream(self, records: list[AuditRecord], norms: list[str]) -> None:
        """Openings and closings, pairs, the hashes for the joins, lineage."""
        openings, opening_ids, closings, closing_ids = [], [], [], []
        base_openings, base_closings = [], []
        group_openings: dict[str, list[str]] = defaultdict(list)
        group_closings: dict[str, list[str]] = defaultdict(list)
        chosen_openings, chosen_opening_ids, chosen_closings, chosen_closing_ids = [], [], [], []
        rejected_openings, rejected_opening_ids, rejected_closings, rejected_closing_ids = [], [], [], []
        sft_rows, pair_rows, swapped_rows = [], [], []
        provenance, decided = self.provenance, self.decided
        by_source = self.by_source
        sampled_all = self.expected is None or self.expected <= SAMPLE_MIN
        for record, norm in zip(records, norms, strict=True):
            rid = record.id
            opening, closing = opening_and_closing(norm, normalized=True)
            source = record.source or record.provenance or "unknown"
            by_source[source].n += 1
            if opening:
                openings.append(opening)
                opening_ids.append(rid)
                group_openings[source].append(opening)
            if closing:
                closings.append(closing)
                closing_ids.append(rid)
                group_closings[source].append(closing)
            if record.source == HUMAN:
                self.n_base += 1
                base_openings.append(opening)
                base_closings.append(closing)
            prov = record.provenance or "unknown"
            provenance[prov] += 1
            decided[record.decided_by or "unknown"] += 1
            if record.agreement is not None:
                self.agreement_sum[prov] += record.agreement
                self.agreement_n[prov] += 1

            prompt_key = normalize(record.prompt)
            if record.kind == "dpo":
                self.n_dpo += 1
                norm_rejected = normalize(record.rejected)
                pair = _hash64(prompt_key + "\x00" + norm + "\x00" + norm_rejected)
                swapped = _hash64(prompt_key + "\x00" + norm_rejected + "\x00" + norm)
                if pair != swapped:  # an identical pair is its own swap: that is pair_identical, not a swap
                    pair_rows.append((pair, rid))
                    swapped_rows.append(swapped)
                self._pair(record, norm, norm_rejected)
                r_opening, r_closing = opening_and_closing(norm_rejected, normalized=True)
                if opening:
                    chosen_openings.append(opening)
                    chosen_opening_ids.append(rid)
                if closing:
                    chosen_closings.append(closing)
                    chosen_closing_ids.append(rid)
                if r_opening:
                    rejected_openings.append(r_opening)
                    rejected_opening_ids.append(rid)
                if r_closing:
                    rejected_closings.append(r_closing)
                    rejected_closing_ids.append(rid)
            else:
                self.n_sft += 1
                sft_rows.append((_hash64(prompt_key), _hash64(norm), rid))
            if sampled_all or _sampled(rid, SAMPLE_EVERY):
                self.n_sampled += 1
                sample = self.distinct_samples[prov]
                if len(sample) < DISTINCT_SAMPLE:
                    sample.append(record.target or "")

        self.openings.update(openings, opening_ids)
        self.closings.update(closings, closing_ids)
        self.base_openings.update(base_openings)
        self.base_closings.update(base_closings)
        for source, keys in group_openings.items():
            by_source[source].openings.update(keys)
        for source, keys in group_closings.items():
            by_source[source].closings.update(keys)
        if chosen_openings or chosen_closings or rejected_openings or rejected_closings:
            self.chosen_openings.update(chosen_openings, chosen_opening_ids)
            self.chosen_closings.update(chosen_closings, chosen_closing_ids)
            self.rejected_openings.update(rejected_openings, rejected_opening_ids)
            self.rejected_closings.update(rejected_closings, rejected_closing_ids)
        if sft_rows:
            self.sft_rows.add(np.array(sft_rows, dtype=np.int64))
        if pair_rows:
            self.pair_rows.add(np.array(pair_rows, dtype=np.int64))
            self.swapped_rows.add(np.array(swapped_rows, dtype=np.int64).reshape(-1, 1))

    def _feed_text(self, records: list[AuditRecord], norms: list[str]) -> None:
        """What is read in the answers' text: known phrases, facts, templates, phrases anywhere."""
        grams: list[int] = []
        gram_docs: list[tuple[int, str]] = []  # the answers whose 4-grams are counted
        # Every answer's in a small snapshot; else a sample spread over all of it (not its first answers: the
        # count before a 4-gram is tracked is scaled up from the sample, which must stand for every answer).
        every = self.expected is None or self.expected <= SAMPLE_MIN
        shapes, shape_ids, shape_texts = [], [], []
        for record, norm in zip(records, norms, strict=True):
            rid = record.id
            if any(map(norm.__contains__, _KNOWN_PREFIXES)):
                self._known(norm, rid)
            # Answers from one template differ in their numbers: without a digit the skeleton is the answer.
            shape = norm
            if _has_digit(norm):
                for slot, value in facts(norm, normalized=True):
                    self._fact(slot, value, rid)
                shape = _DIGITS.sub("#", norm)
            shapes.append(_hash64(shape))
            shape_ids.append(rid)
            shape_texts.append(shape)
            if every or _sampled(rid, PHRASE_EVERY):
                grams.extend(_gram_keys(norm))
                gram_docs.append((rid, norm))

        self.skeletons.update(shapes, shape_ids)
        skeleton_text, counts = self.skeleton_text, self.skeletons.counts
        for shape, text_shape in zip(shapes, shape_texts, strict=True):
            if shape not in skeleton_text and counts.get(shape, 0) >= 2:
                skeleton_text[shape] = text_shape[:300]
        if len(skeleton_text) > self.skeletons.capacity:  # the start of templates the counter has let go
            self.skeleton_text = {k: v for k, v in skeleton_text.items() if k in counts}
        self._track_phrases(records, norms)
        self.phrases.update(grams)
        self.phrase_docs += len(gram_docs)
        self._note_phrases(gram_docs)

    def _track_phrases(self, records: list[AuditRecord], norms: list[str]) -> None:
        """Count the tracked 4-grams exactly, in every answer of the chunk."""
        tracked = self.tracked
        for record, norm in zip(records, norms, strict=True):
            words = None
            for longest, padded, entry in tracked:
                if longest in norm:  # a cheap test first: most answers lack the gram's longest word altogether
                    if words is None:
                        words = f" {' '.join(word_list(norm))} "
                    if padded in words:
                        entry["count"] += 1
                        if len(entry["examples"]) < EXAMPLES:
                            entry["examples"].append(record.id)

    def _note_phrases(self, gram_docs: list[tuple[int, str]]) -> None:
        """Track each 4-gram in PHRASE_TRACK of the answers counted so far: from the next chunk on, it is counted
        exactly in every answer; before, as the full count (a small snapshot) or the sample's estimate, with its
        error bound, says. A habit present from the start is tracked after the first chunk, so its estimated
        part is that chunk's.

        A 4-gram in PHRASE_SHARE of all answers is in more than PHRASE_TRACK of the sample after some chunk (the
        sample being thousands of answers), so it is tracked by the end."""
        counts = self.phrases.counts
        if not counts or len(self.tracked) >= PHRASE_CANDIDATES:
            return
        values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        frequent = np.flatnonzero(values >= max(MIN_COUNT, PHRASE_TRACK * self.phrase_docs))
        if not len(frequent):
            return
        keys = list(counts)
        new = {keys[i] for i in frequent} - self.phrase_keys
        if not new:
            return
        found: dict[int, dict] = {}
        for rid, norm in gram_docs:
            words = word_list(norm)
            for gram in zip(words, words[1:], words[2:], words[3:], strict=False):
                key = hash(gram)
                if key in new:
                    entry = found.get(key)
                    if entry is None:
                        found[key] = entry = {
                            "phrase": " ".join(gram),
                            "count": 0,
                            "before": counts[key],
                            "before_error": self.phrases.error(key),
                            "counted": self.phrase_docs,
                            "of": self.n,
                            "examples": [],
                        }
                    if len(entry["examples"]) < EXAMPLES and rid not in entry["examples"]:
                        entry["examples"].append(rid)
        for key, entry in sorted(found.items(), key=lambda kv: -kv[1]["before"]):
            if len(self.tracked) >= PHRASE_CANDIDATES:
                break
            self.phrase_keys.add(key)
            self.tracked.append((max(entry["phrase"].split(" "), key=len), f" {entry['phrase']} ", entry))

    def _phrase_count(self, entry: dict) -> tuple[int, int]:
        """A tracked 4-gram's count over all answers, and how far off it may be (0: exact; else a 95% bound)."""
        before, counted, of = entry["before"], entry["counted"], entry["of"]
        if counted >= of:
            return before + entry["count"], entry["before_error"]
        # Before it was tracked, a sample of ``counted`` of the first ``of`` answers: scale up, bound the error.
        share = before / counted
        bound = 1.96 * math.sqrt(share * (1 - share) / counted * (1 - counted / of)) * of
        scale = of / counted
        return round(share * of) + entry["count"], math.ceil(bound + scale * entry["before_error"]) or 1

    def _known(self, norm_target: str, rid: int) -> None:
        counted = set()
        for phrase, category in KNOWN_PHRASES.items():
            if category not in counted and phrase in norm_target:
                counted.add(category)  # once per record and category, however many of its phrases it has
                slot = self.known[category]
                slot[0] += 1
                slot[2][phrase] += 1
                if len(slot[1]) < EXAMPLES:
                    slot[1].append(rid)

    def _fact(self, slot: str, value: str, rid: int) -> None:
        values = self.fact_slots.get(slot)
        if values is None:
            if len(self.fact_slots) >= FACT_SLOTS:
                return
            values = self.fact_slots[slot] = {}
        entry = values.setdefault(value, [0, []])
        entry[0] += 1
        if len(entry[1]) < EXAMPLES:
            entry[1].append(rid)

    def _pair(self, record: AuditRecord, chosen: str, rejected: str) -> None:
        self.pairs += 1
        rid = record.id
        for name in pair_issues(chosen, rejected, normalized=True):
            slot = self.pair_issues[name]
            slot[0] += 1
            if len(slot[1]) < EXAMPLES:
                slot[1].append(rid)
        # Normalized text has single spaces: its words are its spaces plus one.
        chosen_words = chosen.count(" ") + 1 if chosen else 0
        rejected_words = rejected.count(" ") + 1 if rejected else 0
        if chosen_words > rejected_words:
            self.longer_chosen += 1
        elif chosen_words < rejected_words:
            self.longer_rejected += 1
        self.log_ratio_sum += math.log((chosen_words + 1) / (rejected_words + 1))
        self.left_picks += record.left_picks
        self.picks += record.picks

    # -- findings ---------------------------------------------------------------------------------------------------

    def report(self) -> dict:
        """Every finding, each with a type, a title, a share, a lift where a baseline applies, and example ids.

        Same-prompt groups with different answers come back as ``candidates`` (record id groups): whether two
        answers differ materially needs their text, which the caller fetches and gives to ``answers_disagree``."""
        findings = []
        patterns = self._patterns()
        findings += patterns
        findings += self._recurring_phrases(covered=[f["phrase"] for f in patterns])
        findings += self._known_phrases()
        findings += self._facts_findings()
        findings += self._pair_findings()
        findings += self._bias_findings()
        findings += self._template_findings()
        findings += self._lineage_findings()
        swapped = self._swapped_pairs()
        if swapped:
            findings.append(swapped)
        for finding in findings:
            finding["key"] = finding_key(finding)
        return {
            "n_records": self.n,
            "n_sft": self.n_sft,
            "n_dpo": self.n_dpo,
            "n_sampled": self.n_sampled,
            "baseline": {"kind": "human-written answers", "n": self.n_base}
            if self.n_base >= BASELINE_MIN
            else {"kind": "the other sources", "n": None},
            "findings": findings,
            "same_prompt_candidates": self.same_prompt_groups(),
            "provenance": dict(self.provenance),
            "decided_by": dict(self.decided),
            "repetition": self._repetition(),
        }

    def _patterns(self) -> list[dict]:
        out = []
        for where, counter, base in (
            ("opening", self.openings, self.base_openings),
            ("closing", self.closings, self.base_closings),
        ):
            for phrase, count in counter.most_common(200):
                if count < MIN_COUNT:
                    break
                share = count / self.n
                lift = baseline_share = None
                if self.n_base >= BASELINE_MIN:
                    in_base = base.get(phrase)
                    lift = _lift(count - in_base, self.n - self.n_base, in_base, self.n_base)
                    baseline_share = in_base / self.n_base
                groups = self._groups_with(where, phrase)
                tic = [g for g in groups if g["share"] >= MIN_GROUP_SHARE and (g["lift"] or 0) >= MIN_LIFT]
                if lift is not None:
                    habit = share >= MIN_SHARE and lift >= MIN_LIFT
                else:
                    # No human baseline: a phrase on a third of all answers is far above chance for free text.
                    habit = share >= MIN_GROUP_SHARE
                if not (habit or tic):
                    continue
                out.append(
                    {
                        "type": f"recurring_{where}",
                        "title": f"{share:.0%} of answers {'start' if where == 'opening' else 'end'} with “{phrase}”",
                        "phrase": phrase,
                        "count": count,
                        "share": round(share, 4),
                        "lift": round(lift, 2) if lift is not None else (tic[0]["lift"] if tic else None),
                        "baseline_share": round(baseline_share, 4) if baseline_share is not None else None,
                        "by_source": groups[:5],
                        "examples": counter.example_ids(phrase),
                        **_bound(counter.error(phrase), self.n),
                    }
                )
        # Preference pairs: what the chosen side has and the rejected side lacks.
        if self.pairs >= MIN_COUNT:
            for where, chosen, rejected in (
                ("opening", self.chosen_openings, self.rejected_openings),
                ("closing", self.chosen_closings, self.rejected_closings),
            ):
                for phrase, count in chosen.most_common(100):
                    if count < MIN_COUNT:
                        break
                    share, other = count / self.pairs, rejected.get(phrase) / self.pairs
                    lift = _lift(count, self.pairs, rejected.get(phrase), self.pairs)
                    if share - other >= 0.1 and lift >= MIN_LIFT:
                        out.append(
                            {
                                "type": f"preferred_{where}",
                                "title": f"Chosen answers {'start' if where == 'opening' else 'end'} with “{phrase}” "
                                f"({share:.0%}) far more than rejected ones ({other:.0%})",
                                "phrase": phrase,
                                "count": count,
                                "share": round(share, 4),
                                "lift": round(lift, 2),
                                "baseline_share": round(other, 4),
                                "examples": chosen.example_ids(phrase),
                                **_bound(chosen.error(phrase), self.pairs),
                            }
                        )
        return out

    def _groups_with(self, where: str, phrase: str) -> list[dict]:
        rows = []
        total = sum(g.n for g in self.by_source.values())
        total_count = sum(
            (g.openings if where == "opening" else g.closings).get(phrase) for g in self.by_source.values()
        )
        for name, group in self.by_source.items():
            count = (group.openings if where == "opening" else group.closings).get(phrase)
            if not count:
                continue
            rest_n, rest_count = total - group.n, total_count - count
            rows.append(
                {
                    "source": name,
                    "count": count,
                    "n": group.n,
                    "share": round(count / group.n, 4),
                    "lift": round(_lift(count, group.n, rest_count, rest_n), 2) if rest_n else None,
                }
            )
        return sorted(rows, key=lambda r: (-r["share"], r["source"]))

    def _recurring_phrases(self, *, covered: Iterable[str] = ()) -> list[dict]:
        """Phrases in a large share of the (sampled) answers, wherever they stand in them.

        Counted as word 4-grams; overlapping 4-grams with the same count are one phrase and are reported as
        such ("you can get a full refund within", not four findings). A phrase that an opening or closing
        finding already reports (``covered``) is not reported twice."""
        if self.n < MIN_COUNT:
            return []
        frequent, bounds, examples = {}, {}, {}
        for _, _, entry in self.tracked:
            count, error = self._phrase_count(entry)
            if count / self.n >= PHRASE_SHARE and count >= MIN_COUNT:
                gram = entry["phrase"]
                frequent[gram], bounds[gram], examples[gram] = count, error, entry["examples"]
        frequent = dict(sorted(frequent.items(), key=lambda kv: -kv[1]))
        # A 4-gram's successor shares its last three words as its first three, with the same count.
        by_head = {(gram.rsplit(" ", 1)[0], count): gram for gram, count in frequent.items()}
        successor = {gram: by_head.get((gram.split(" ", 1)[1], count)) for gram, count in frequent.items()}
        has_predecessor = {nxt for gram, nxt in successor.items() if nxt and nxt != gram}
        covered_words = [" ".join(word_list(phrase)) for phrase in covered]
        out = []
        for gram, count in frequent.items():
            if gram in has_predecessor:
                continue
            words, seen, tail = gram.split(), {gram}, gram
            while True:  # follow the chain of 4-grams that overlap by three words, as long as the count holds
                nxt = successor[tail]
                if nxt is None or nxt in seen:
                    break
                seen.add(nxt)
                words.append(nxt.rsplit(" ", 1)[1])
                tail = nxt
            phrase = " ".join(words)
            if any(phrase in other or other in phrase for other in covered_words if other):
                continue
            share = count / self.n
            out.append(
                {
                    "type": "recurring_phrase",
                    "title": f"{share:.0%} of answers say “{phrase}”",
                    "phrase": phrase,
                    "count": count,
                    "share": round(share, 4),
                    "lift": None,
                    "examples": examples[gram][:EXAMPLES],
                    **_bound(bounds[gram], self.n),
                }
            )
            if len(out) >= 10:
                break
        return out

    def _known_phrases(self) -> list[dict]:
        out = []
        for category, (count, examples, phrases) in sorted(self.known.items()):
            if count:
                phrase = phrases.most_common(1)[0][0]
                out.append(
                    {
                        "type": "known_phrase",
                        "title": f"{category.capitalize()} in {count} answer(s), such as “{phrase}”",
                        "phrase": phrase,
                        "category": category,
                        "count": count,
                        "share": _share(count, self.n),
                        "lift": None,
                        "examples": examples,
                    }
                )
        return out

    def _facts_findings(self) -> list[dict]:
        out = []
        for slot, values in self.fact_slots.items():
            stated = {v: e for v, e in values.items() if e[0] >= 2 or len(values) <= 4}
            if len(stated) < 2:
                continue
            total = sum(e[0] for e in stated.values())
            if total < MIN_COUNT:
                continue
            ranked = sorted(stated.items(), key=lambda kv: -kv[1][0])
            majority = ranked[0][1][0]
            minority = total - majority
            out.append(
                {
                    "type": "conflicting_facts",
                    "title": f"Answers disagree on “{slot}”: "
                    + ", ".join(f"{value} ({entry[0]})" for value, entry in ranked[:6]),
                    "slot": slot,
                    "values": [{"value": v, "count": e[0], "examples": e[1]} for v, e in ranked],
                    "count": minority,
                    "share": round(minority / total, 4),
                    "lift": None,
                    "examples": [rid for _, e in ranked[1:] for rid in e[1]][:EXAMPLES],
                }
            )
        return sorted(out, key=lambda f: -f["count"])[:50]

    def _pair_findings(self) -> list[dict]:
        if not self.pairs:
            return []
        titles = {
            "identical": "chosen and rejected are the same text: the pair teaches nothing",
            "format_only": "chosen and rejected differ only in formatting (case, punctuation, spacing)",
            "near_identical": "chosen and rejected are nearly the same (90%+ of their words)",
            "empty": "the rejected response is empty",
            "truncated": "the rejected response looks cut off",
            "far_shorter": "the rejected response is under a quarter of the chosen one's length",
            "other_script": "the rejected response is in another script than the chosen one",
        }
        out = []
        always = ("identical", "format_only", "empty")  # a pair like that teaches nothing, even once
        for name, (count, examples) in self.pair_issues.items():
            if count and (name in always or (count >= MIN_COUNT and count / self.pairs >= 0.01)):
                out.append(
                    {
                        "type": f"pair_{name}",
                        "title": f"{count} pair(s): {titles[name]}",
                        "count": count,
                        "share": _share(count, self.pairs),
                        "lift": None,
                        "examples": examples,
                    }
                )
        return out

    def _bias_findings(self) -> list[dict]:
        out = []
        decided = self.longer_chosen + self.longer_rejected
        if decided >= 20:
            share = self.longer_chosen / decided
            p = binomial_two_sided(self.longer_chosen, decided)
            if share >= 0.65 and p < 0.01:
                out.append(
                    {
                        "type": "length_bias",
                        "title": f"The chosen answer is the longer one in {share:.0%} of pairs: "
                        "DPO will learn that longer is better",
                        "count": self.longer_chosen,
                        "share": round(share, 4),
                        "lift": round(share / 0.5, 2),
                        "p_value": p,
                        "mean_length_ratio": round(math.exp(self.log_ratio_sum / self.pairs), 3),
                        "examples": [],
                    }
                )
        if self.picks >= 20:
            share = self.left_picks / self.picks
            p = binomial_two_sided(self.left_picks, self.picks)
            if abs(share - 0.5) >= 0.1 and p < 0.01:
                out.append(
                    {
                        "type": "position_bias",
                        "title": f"Reviewers chose the response shown first in {share:.0%} of their picks",
                        "count": self.left_picks,
                        "share": round(share, 4),
                        "lift": round(share / 0.5, 2),
                        "p_value": p,
                        "examples": [],
                    }
                )
        return out

    def _template_findings(self) -> list[dict]:
        if not self.n:
            return []
        shape, count = max(self.skeletons.counts.items(), key=lambda kv: kv[1], default=(0, 0))
        share = count / self.n
        if count < MIN_COUNT or share < TEMPLATE_SHARE:
            return []
        return [
            {
                "type": "template",
                "title": f"{share:.0%} of answers are one template (numbers aside)",
                "template": self.skeleton_text.get(shape, ""),
                "template_hash": shape,
                "count": count,
                "share": round(share, 4),
                "lift": None,
                "examples": self.skeletons.example_ids(shape),
                **_bound(self.skeletons.error(shape), self.n),
            }
        ]

    def _lineage_findings(self) -> list[dict]:
        out = []
        if self.n >= MIN_COUNT:
            top, count = self.provenance.most_common(1)[0]
            share = count / self.n
            if share >= DOMINANT_SHARE and top != HUMAN:
                out.append(
                    {
                        "type": "dominant_source",
                        "title": f"{share:.0%} of the examples come from one source: {top}",
                        "source": top,
                        "count": count,
                        "share": round(share, 4),
                        "lift": None,
                        "examples": [],
                    }
                )
        return out

    def _repetition(self) -> dict:
        out = {}
        for provenance, texts in sorted(self.distinct_samples.items()):
            out[provenance] = {
                "sampled": len(texts),
                "distinct_2": distinct_n(texts, 2),
                "compression_ratio": compression_ratio(texts),
                "mean_agreement": round(self.agreement_sum[provenance] / self.agreement_n[provenance], 4)
                if self.agreement_n[provenance]
                else None,
            }
        return out

    def _swapped_pairs(self) -> dict | None:
        if self.n_dpo < 2:
            return None
        hashes, ids = [], []
        # A pair and its swap hash alike into one partition: each partition is joined on its own.
        for pairs, swapped in zip(self.pair_rows.partitions(), self.swapped_rows.partitions(), strict=True):
            hit = np.isin(pairs[:, 0], swapped[:, 0])
            hashes += pairs[hit, 0].tolist()
            ids += pairs[hit, 1].tolist()
        if not hashes:
            return None
        return {
            "type": "swapped_pairs",
            "pair_hashes": sorted(hashes),
            "title": f"{len(hashes)} preference pair(s) also appear with chosen and rejected swapped",
            "count": len(hashes),
            "share": _share(len(hashes), self.n_dpo),
            "lift": None,
            "examples": sorted(ids)[:EXAMPLES],
        }

    def same_prompt_groups(self, limit: int = 200) -> list[list[int]]:
        """Record ids of SFT examples that share a prompt but not an answer (up to ``limit`` groups)."""
        groups = []
        for rows in self.sft_rows.partitions():
            if len(rows) < 2:
                continue
            rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
            prompts, targets, ids = rows[:, 0], rows[:, 1], rows[:, 2]
            starts = np.flatnonzero(np.r_[True, prompts[1:] != prompts[:-1]])
            ends = np.r_[starts[1:], len(prompts)]
            # Only prompts that occur more than once, with a first and last answer that differ.
            several = (ends - starts > 1) & (targets[starts] != targets[ends - 1])
            for start, end in zip(starts[several], ends[several], strict=True):
                groups.append(ids[start:end].tolist())
                if len(groups) >= limit:
                    return groups
        return groups

    def close(self) -> None:
        """Let go of the files the joins at the end read (the report can no longer be made)."""
        for spill in (self.sft_rows, self.pair_rows, self.swapped_rows):
            spill.close()


def answers_disagree(texts: list[str], *, threshold: float = 0.5) -> bool:
    """Whether answers to one prompt differ materially: some pair shares under ``threshold`` of its words."""
    return any(similarity(a, b) < threshold for i, a in enumerate(texts) for b in texts[i + 1 :])


# --- Findings: keys, gates, and which examples a finding is about ---------------------------------------

# What a finding of each type does to a snapshot unless a project says otherwise: "block" (no job starts
# until the data is fixed or the finding acknowledged), "warn" (shown), "off" (not reported); and the share
# from which it applies.
DEFAULT_GATES: dict[str, dict] = {
    "recurring_opening": {"action": "warn", "min_share": MIN_SHARE},
    "recurring_closing": {"action": "warn", "min_share": MIN_SHARE},
    "recurring_phrase": {"action": "warn", "min_share": PHRASE_SHARE},
    "preferred_opening": {"action": "warn", "min_share": 0.1},
    "preferred_closing": {"action": "warn", "min_share": 0.1},
    "known_phrase": {"action": "warn", "min_share": 0.0},
    "conflicting_facts": {"action": "block", "min_share": 0.02},
    "same_prompt_different_answers": {"action": "warn", "min_share": 0.0},
    "swapped_pairs": {"action": "block", "min_share": 0.0},
    "pair_identical": {"action": "block", "min_share": 0.0},
    "pair_format_only": {"action": "warn", "min_share": 0.0},
    "pair_near_identical": {"action": "warn", "min_share": 0.01},
    "pair_empty": {"action": "warn", "min_share": 0.0},
    "pair_truncated": {"action": "warn", "min_share": 0.01},
    "pair_far_shorter": {"action": "warn", "min_share": 0.01},
    "pair_other_script": {"action": "warn", "min_share": 0.01},
    "length_bias": {"action": "warn", "min_share": 0.65},
    "position_bias": {"action": "warn", "min_share": 0.0},
    "template": {"action": "warn", "min_share": TEMPLATE_SHARE},
    "dominant_source": {"action": "warn", "min_share": DOMINANT_SHARE},
}
GATE_ACTIONS = ("off", "warn", "block")


def finding_key(finding: dict) -> str:
    """A finding's identity within an audit: its type and what it is about (a phrase, a slot, a source)."""
    about = next(
        (finding[k] for k in ("phrase", "slot", "source", "category") if finding.get(k) not in (None, "")),
        finding.get("template_hash", ""),
    )
    return f"{finding['type']}:{about}"[:300]


def gates_merge(*gate_sets: dict) -> dict[str, dict]:
    """The defaults overridden by each project's gates; where projects differ, the strictest wins
    (block over warn over off, the lower share)."""
    merged = {kind: dict(gate) for kind, gate in DEFAULT_GATES.items()}
    chosen: dict[str, dict] = {}
    for gates in gate_sets:
        for kind, gate in (gates or {}).items():
            if kind not in DEFAULT_GATES or not isinstance(gate, dict):
                continue
            action = gate.get("action", merged[kind]["action"])
            share = gate.get("min_share", merged[kind]["min_share"])
            current = chosen.get(kind)
            if current is None:
                chosen[kind] = {"action": action, "min_share": share}
            else:
                rank = GATE_ACTIONS.index
                current["action"] = max(current["action"], action, key=rank)
                current["min_share"] = min(current["min_share"], share)
    merged.update(chosen)
    return merged


def gates_validate(gates) -> dict[str, dict]:
    """A project's gates as given in a form or the API, checked: errors name the finding type and the fix."""
    from django.core.exceptions import ValidationError

    if not isinstance(gates, dict):
        raise ValidationError("Audit gates are an object: {finding type: {action, min_share}}.")
    clean = {}
    for kind, gate in gates.items():
        if kind not in DEFAULT_GATES:
            raise ValidationError(f"{kind!r} is not an audit finding type: use one of {', '.join(DEFAULT_GATES)}.")
        if not isinstance(gate, dict) or gate.get("action") not in GATE_ACTIONS:
            raise ValidationError(f"{kind}: action is one of {', '.join(GATE_ACTIONS)}.")
        share = gate.get("min_share", DEFAULT_GATES[kind]["min_share"])
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValidationError(f"{kind}: min_share is a number from 0 to 1 (a share of the examples).")
        clean[kind] = {"action": gate["action"], "min_share": float(share)}
    return clean


def apply_gates(findings: list[dict], gates: dict[str, dict]) -> list[dict]:
    """Each finding with ``gate``: block, warn, or info (under its gate's share); findings gated off are dropped."""
    out = []
    for finding in findings:
        gate = gates.get(finding["type"], {"action": "warn", "min_share": 0.0})
        if gate["action"] == "off":
            continue
        applies = (finding.get("share") or 0.0) >= gate["min_share"]
        out.append({**finding, "gate": gate["action"] if applies else "info"})
    order = {"block": 0, "warn": 1, "info": 2}
    return sorted(out, key=lambda f: (order[f["gate"]], -(f.get("share") or 0.0)))


def same_prompt_finding(groups: list[list[tuple[int, str, str]]], n_sft: int) -> dict | None:
    """The finding for SFT examples that share a prompt but answer it materially differently.

    ``groups``: for each candidate group, its records as (record id, prompt, answer)."""
    disagreeing = [g for g in groups if answers_disagree([answer for _, _, answer in g])]
    if not disagreeing:
        return None
    records = sum(len(g) for g in disagreeing)
    finding = {
        "type": "same_prompt_different_answers",
        "title": f"{len(disagreeing)} prompt(s) have materially different gold answers ({records} examples)",
        "count": records,
        "share": _share(records, n_sft),
        "lift": None,
        "prompt_hashes": sorted({_hash64(normalize(g[0][1])) for g in disagreeing}),
        "examples": [rid for g in disagreeing[:4] for rid, _, _ in g][:EXAMPLES],
    }
    finding["key"] = finding_key(finding)
    return finding


def matcher(finding: dict):
    """A predicate over ``AuditRecord`` that is True for the examples a finding is about, for excluding them
    from a new snapshot; None for findings about the data as a whole (biases, a dominant source)."""
    kind = finding["type"]
    phrase = finding.get("phrase", "")

    def opening(record):
        return opening_and_closing(record.target)[0]

    def closing(record):
        return opening_and_closing(record.target)[1]

    if kind == "recurring_opening":
        return lambda r: opening(r) == phrase
    if kind == "recurring_closing":
        return lambda r: closing(r) == phrase
    if kind == "recurring_phrase":
        return lambda r: f" {phrase} " in f" {' '.join(_WORD.findall(normalize(r.target)))} "
    if kind == "preferred_opening":
        return lambda r: r.kind == "dpo" and opening(r) == phrase
    if kind == "preferred_closing":
        return lambda r: r.kind == "dpo" and closing(r) == phrase
    if kind == "known_phrase":
        phrases = [p for p, category in KNOWN_PHRASES.items() if category == finding.get("category")]
        return lambda r: any(p in normalize(r.target) for p in phrases)
    if kind == "conflicting_facts":
        slot, majority = finding["slot"], finding["values"][0]["value"]
        return lambda r: any(s == slot and v != majority for s, v in facts(r.target))
    if kind.startswith("pair_"):
        issue = kind.removeprefix("pair_")
        return lambda r: r.kind == "dpo" and issue in pair_issues(r.target, r.rejected)
    if kind == "template":
        wanted = finding["template_hash"]
        return lambda r: _hash64(skeleton(r.target)) == wanted
    if kind == "swapped_pairs":
        hashes = set(finding.get("pair_hashes", []))
        return lambda r: r.kind == "dpo" and _pair_hash(r) in hashes
    if kind == "same_prompt_different_answers":
        prompts = set(finding.get("prompt_hashes", []))
        return lambda r: r.kind == "sft" and _hash64(normalize(r.prompt)) in prompts
    return None


def _pair_hash(record: AuditRecord) -> int:
    return _hash64(normalize(record.prompt) + "\x00" + normalize(record.target) + "\x00" + normalize(record.rejected))
