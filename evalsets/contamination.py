"""Contamination checking: which candidate training texts overlap an eval text.

Plain Python and numpy, no Django: the index takes ``(key, text)`` pairs for the eval side, the check
takes ``(key, text)`` pairs for the training side, and keys come back in the matches unchanged.

Two tests, on text normalized with :func:`normalize` (Unicode NFKC, case-folded, punctuation
dropped, whitespace collapsed):

- **exact**: the normalized texts are equal (texts of at least ``min_exact_tokens`` tokens);
- **n-gram overlap**: word n-grams (13 by default, as in the GPT-3 and PaLM contamination studies)
  are hashed to 64 bits and looked up in a sorted array of the eval n-gram hashes. For every
  (training text, eval text) pair that shares an n-gram, the *coverage* of each side is the share
  of its tokens that lie inside a shared n-gram; the pair's score is the larger of the two, so a
  truncated copy (the training text is covered) and an embedded copy (the eval text is covered)
  both score near 1, while a reworded copy keeps most of its coverage because only the n-grams
  around each changed word are lost.

**Shared spans count less.** Eval sets repeat themselves: a template or a sign-off appears in many
records. A token's weight is ``1 / df``, where ``df`` is the number of eval texts that contain the
most widely shared n-gram around it (1 for a token that only its own text has; identical eval texts
count once), and coverage is measured in weight, not in tokens. So a training text that shares
only a template with eval texts scores near 0 against each of them, while a copy of one eval item
still scores near 1 against that item: its distinctive words carry the score. A text whose whole
weight is below ``n`` (one n-gram's worth of distinctive words) is measured against ``n``: a text
that is nothing but shared boilerplate is caught by the exact test or not at all.

**One pair per copy.** A training text is reported against its best eval match. Another eval text
it also matches is reported too only when it still scores at or above the threshold once the
training text's n-grams that a better reported match already explains are left out: a copy of Q105
is not also reported as a copy of Q97 because both share a sentence, while a text that pastes two
eval items together is reported against both.

Texts shorter than ``n`` tokens have no n-grams and are checked for exact matches only. Token
hashes use Python's ``hash``, which is salted per process: an index is only valid in the process
that built it (it is rebuilt for every check, which takes seconds).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

DEFAULT_N = 13
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_EXACT_TOKENS = 5
CHUNK = 8192
# Odd 64-bit multiplier for the polynomial n-gram hash (arithmetic wraps mod 2**64).
_P = np.uint64(0x9E3779B97F4A7C15)
_NON_WORD = re.compile(r"[\W_]+")
# ASCII fast path (most texts): the same result as the regex, several times faster.
_ASCII_NON_WORD = bytes.maketrans(
    bytes(b for b in range(128) if not (chr(b).isalnum() or chr(b).isspace())),
    b" " * sum(1 for b in range(128) if not (chr(b).isalnum() or chr(b).isspace())),
)
# Prefilter bitmap: one bit per value of the top BITMAP_BITS bits of an n-gram hash. Most training
# n-grams are in no eval text, and one bit test rejects them without a binary search.
BITMAP_BITS = 28
# df is stored in 16 bits: an n-gram in more eval texts than that weighs (next to) nothing anyway.
MAX_DF = np.iinfo(np.uint16).max


def tokens(text: str) -> list[str]:
    """The words of a text after normalization: NFKC, case-folded, punctuation and symbols dropped."""
    if text.isascii():
        return text.lower().encode().translate(_ASCII_NON_WORD).decode().split()
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols turned into spaces, whitespace collapsed."""
    return " ".join(tokens(text))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _featurize(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Normalized texts, their token counts, and one 64-bit hash per token of all texts in order."""
    norms: list[str] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    all_tokens: list[str] = []
    for i, text in enumerate(texts):
        words = tokens(text)
        norms.append(" ".join(words))
        lengths[i] = len(words)
        all_tokens += words
    hashes = np.fromiter(map(hash, all_tokens), dtype=np.int64, count=len(all_tokens)).view(np.uint64)
    return norms, lengths, hashes


def _ngrams(hashes: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram hash, text index, start position) of every n-gram that lies inside one text."""
    total = len(hashes)
    if total < n:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), empty, empty
    m = total - n + 1
    grams = hashes[:m].copy()
    for j in range(1, n):
        grams *= _P
        grams += hashes[j : j + m]
    text_of = np.repeat(np.arange(len(lengths)), lengths)[:m]
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(m) - starts[text_of]
    inside = pos + n <= lengths[text_of]
    return grams[inside], text_of[inside], pos[inside]


class _Deficits:
    """Token weights below 1, stored sparsely: the sorted global indexes of the tokens that lie in
    n-grams other texts share, and the running sum of ``1 - weight`` over them. Most tokens weigh 1,
    so the arrays stay small, and a text without shared n-grams costs nothing."""

    def __init__(self, token_index: np.ndarray, df: np.ndarray, n: int):
        # Each shared n-gram lowers the weight of its n tokens to 1/df; a token keeps the lowest.
        tokens = (token_index[:, None] + np.arange(n)).ravel()
        worst = np.repeat(df.astype(np.int64), n)
        order = np.lexsort((-worst, tokens))
        tokens, worst = tokens[order], worst[order]
        first = np.ones(len(tokens), dtype=bool)
        first[1:] = tokens[1:] != tokens[:-1]
        self.index = tokens[first]
        self.cum = np.concatenate(([0.0], np.cumsum(1.0 - 1.0 / worst[first])))

    def within(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Summed ``1 - weight`` of the tokens in [start, stop), for each pair of bounds."""
        return self.cum[np.searchsorted(self.index, stop)] - self.cum[np.searchsorted(self.index, start)]


def _deficits(token_index: np.ndarray, df: np.ndarray, n: int) -> _Deficits | None:
    shared = df > 1
    return _Deficits(token_index[shared], df[shared], n) if shared.any() else None


def _weights(lengths: np.ndarray, starts: np.ndarray, deficits: _Deficits | None, n: int) -> np.ndarray:
    """Each text's weight: its tokens less their deficits, at least ``n`` for a text that has n-grams."""
    weight = lengths.astype(np.float64)
    if deficits is not None:
        weight -= deficits.within(starts, starts + lengths)
    return np.where(lengths >= n, np.maximum(weight, n), weight)


def _covered(
    group: np.ndarray,
    pos: np.ndarray,
    n: int,
    groups: int,
    base: np.ndarray | None = None,
    deficits: _Deficits | None = None,
) -> np.ndarray:
    """Weight of the tokens covered by the n-grams starting at ``pos``, summed per group (overlaps
    counted once); ``base`` is each row's text start in the token numbering of ``deficits``."""
    order = np.lexsort((pos, group))
    g, p = group[order], pos[order]
    keep = np.ones(len(g), dtype=bool)
    keep[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    g, p = g[keep], p[keep]
    step = np.full(len(p), n, dtype=np.int64)
    same = g[1:] == g[:-1]
    step[:-1] = np.where(same, np.minimum(p[1:] - p[:-1], n), n)
    covered = np.bincount(g, weights=step, minlength=groups)
    if deficits is not None:
        start = base[order][keep] + p
        covered -= np.bincount(g, weights=deficits.within(start, start + step), minlength=groups)
    return covered


@dataclass(frozen=True)
class Match:
    """One training text that overlaps one eval text.

    ``secondary`` marks an eval text reported beside the training text's best match: its scores then
    count only the n-grams no better match of that training text explains.
    """

    train_key: Hashable
    eval_key: Hashable
    kind: str  # "exact" or "ngram"
    score: float
    train_coverage: float
    eval_coverage: float
    shared_ngrams: int
    secondary: bool = False


@dataclass
class CheckResult:
    n: int
    threshold: float
    texts_checked: int = 0
    ngrams_checked: int = 0
    offending_count: int = 0
    below_threshold_count: int = 0
    # Pairs at or above the threshold left out because a better match of the same training text
    # explains the n-grams they share (a template, a sentence two eval items have in common).
    explained_count: int = 0
    matches: list[Match] = field(default_factory=list)
    matches_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.offending_count == 0


@dataclass
class _Candidate:
    """One eval text a training text matches, scored; ``group`` names its rows in ``_Hits`` (-1: none)."""

    kind: str
    score: float
    train_coverage: float
    eval_coverage: float
    shared: int
    group: int = -1

    def match(self, train_key: Hashable, eval_key: Hashable, *, secondary: bool = False) -> Match:
        return Match(
            train_key,
            eval_key,
            self.kind,
            round(self.score, 4),
            self.train_coverage,
            self.eval_coverage,
            self.shared,
            secondary,
        )


@dataclass
class _Hits:
    """Every (training n-gram, eval occurrence) of a batch, grouped by (training text, eval text), with
    the training side's weights, for scoring a pair again without some of its n-grams."""

    group: np.ndarray
    t_pos: np.ndarray
    e_pos: np.ndarray
    t_base: np.ndarray | None
    e_base: np.ndarray | None
    p_text: np.ndarray
    p_owner: np.ndarray
    t_weight: np.ndarray
    t_deficits: _Deficits | None
    counted: int = 0  # pairs of texts that stay below the threshold: counted, never reported
    _order: np.ndarray | None = None
    _bounds: np.ndarray | None = None

    def rows(self, g: int) -> np.ndarray:
        if self._order is None:
            self._order = np.argsort(self.group, kind="stable")
            self._bounds = np.searchsorted(self.group[self._order], np.arange(len(self.p_text) + 1))
        return self._order[self._bounds[g] : self._bounds[g + 1]]


class EvalIndex:
    """Exact-text hashes, a sorted n-gram hash array and n-gram weights over the eval side."""

    def __init__(self, *, n: int = DEFAULT_N, min_exact_tokens: int = DEFAULT_MIN_EXACT_TOKENS):
        if n < 1:
            raise ValueError(f"n={n}: the n-gram size must be at least 1 (13 is the usual choice).")
        self.n = n
        self.min_exact_tokens = min_exact_tokens
        self.keys: list[Hashable] = []
        self._lengths: list[np.ndarray] = []
        self._exact: dict[int, list[int]] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._built = False
        self._ngrams_seen = 0

    def add(self, items: Iterable[tuple[Hashable, str]]) -> EvalIndex:
        """Index eval texts; call before ``build``."""
        if self._built:
            raise RuntimeError("The index is already built: create a new EvalIndex to add texts.")
        for batch in _chunks(items, CHUNK):
            base = len(self.keys)
            norms, lengths, hashes = _featurize([text for _, text in batch])
            self.keys.extend(key for key, _ in batch)
            self._lengths.append(lengths)
            repeated = np.zeros(len(batch), dtype=bool)
            for i, norm in enumerate(norms):
                if lengths[i] >= self.min_exact_tokens:
                    h = hash(norm)
                    # A text identical to one indexed before adds no n-grams of its own: it must not
                    # make its own words look shared (versions of a project repeat their prompts).
                    repeated[i] = lengths[i] >= self.n and h in self._exact
                    self._exact.setdefault(h, []).append(base + i)
            grams, text_of, pos = _ngrams(hashes, lengths, self.n)
            if repeated.any():
                keep = ~repeated[text_of]
                grams, text_of, pos = grams[keep], text_of[keep], pos[keep]
            self._parts.append((grams, (text_of + base).astype(np.int32), pos.astype(np.int32)))
        return self

    def build(self) -> EvalIndex:
        grams = np.concatenate([p[0] for p in self._parts]) if self._parts else np.empty(0, np.uint64)
        owners = np.concatenate([p[1] for p in self._parts]) if self._parts else np.empty(0, np.int32)
        pos = np.concatenate([p[2] for p in self._parts]) if self._parts else np.empty(0, np.int32)
        order = np.argsort(grams, kind="stable")
        self._grams, self._owners, self._pos = grams[order], owners[order], pos[order]
        self._df = self._document_frequency()
        self._len = np.concatenate(self._lengths) if self._lengths else np.empty(0, np.int64)
        self._start = np.cumsum(self._len) - self._len
        shared = self._df > 1
        self._deficits = _deficits(
            self._start[self._owners[shared]] + self._pos[shared], self._df[shared].astype(np.int64), self.n
        )
        self._weight = _weights(self._len, self._start, self._deficits, self.n)
        self._bitmap = np.zeros(2**BITMAP_BITS // 8, dtype=np.uint8)
        top = self._grams >> np.uint64(64 - BITMAP_BITS)
        np.bitwise_or.at(
            self._bitmap, (top >> np.uint64(3)).astype(np.int64), (1 << (top & np.uint64(7))).astype(np.uint8)
        )
        self._parts = []
        self._built = True
        return self

    def _document_frequency(self) -> np.ndarray:
        """Per sorted row, how many eval texts hold its n-gram. Within a run of one n-gram the owners
        ascend (texts were added in order and the sort is stable), so each change of owner is a new text."""
        grams, owners = self._grams, self._owners
        if not len(grams):
            return np.empty(0, dtype=np.uint16)
        new_gram = np.ones(len(grams), dtype=bool)
        new_gram[1:] = grams[1:] != grams[:-1]
        new_text = new_gram.copy()
        new_text[1:] |= owners[1:] != owners[:-1]
        starts = np.flatnonzero(new_gram)
        texts = np.add.reduceat(new_text.astype(np.int32), starts)
        return np.repeat(np.minimum(texts, MAX_DF).astype(np.uint16), np.diff(np.append(starts, len(grams))))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def ngram_count(self) -> int:
        return len(self._grams) if self._built else sum(len(p[0]) for p in self._parts)

    def check(
        self,
        items: Iterable[tuple[Hashable, str]],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_matches: int = 10_000,
    ) -> CheckResult:
        """Compare training texts with the index; each text's best match (and any other that stands on
        its own) offends when it scores at or above ``threshold``."""
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold={threshold}: use a share of a text in (0, 1], for example 0.5.")
        if not self._built:
            self.build()
        result = CheckResult(n=self.n, threshold=threshold)
        self._ngrams_seen = 0
        for batch in _chunks(items, CHUNK):
            for match in self._check_batch(batch, threshold, result):
                result.offending_count += 1
                if len(result.matches) < max_matches:
                    result.matches.append(match)
                else:
                    result.matches_truncated = True
            result.texts_checked += len(batch)
        result.ngrams_checked = self._ngrams_seen
        result.matches.sort(key=lambda m: (-m.score, str(m.train_key), str(m.eval_key)))
        return result

    def _check_batch(self, batch: list[tuple[Hashable, str]], threshold: float, result: CheckResult) -> list[Match]:
        n = self.n
        norms, lengths, hashes = _featurize([text for _, text in batch])
        candidates: dict[int, dict[int, _Candidate]] = {}
        for i, norm in enumerate(norms):
            if lengths[i] >= self.min_exact_tokens:
                for owner in self._exact.get(hash(norm), ()):
                    candidates.setdefault(i, {})[owner] = _Candidate("exact", 1.0, 1.0, 1.0, 0)
        grams, text_of, pos = _ngrams(hashes, lengths, n)
        self._ngrams_seen += len(grams)
        hits = None
        if len(grams) and len(self._grams):
            top = grams >> np.uint64(64 - BITMAP_BITS)
            maybe = np.nonzero((self._bitmap[(top >> np.uint64(3)).astype(np.int64)] >> (top & np.uint64(7))) & 1)[0]
            left = np.searchsorted(self._grams, grams[maybe], side="left")
            found = left < len(self._grams)
            found[found] = self._grams[left[found]] == grams[maybe][found]
            hit = maybe[found]
            if len(hit):
                hits = self._score_hits(grams[hit], text_of[hit], pos[hit], left[found], lengths, candidates, threshold)
                result.below_threshold_count += hits.counted
        matches = []
        for i, pairs in candidates.items():
            matches.extend(self._report(batch[i][0], pairs, hits, threshold, result))
        return matches

    def _score_hits(
        self, grams, text_of, pos, left, lengths, candidates: dict[int, dict[int, _Candidate]], threshold: float
    ) -> _Hits:
        n = self.n
        right = np.searchsorted(self._grams, grams, side="right")
        counts = right - left
        # One row per (training n-gram, eval text containing it).
        rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(left, counts)
        t_text = np.repeat(text_of, counts)
        t_pos = np.repeat(pos, counts)
        e_owner = self._owners[rows].astype(np.int64)
        e_pos = self._pos[rows].astype(np.int64)
        pair_key = t_text * len(self.keys) + e_owner
        uniq, group = np.unique(pair_key, return_inverse=True)
        group = group.ravel()
        # The training side's weights come from the same document frequencies, through its hits.
        t_start = np.cumsum(lengths) - lengths
        t_deficits = _deficits(t_start[text_of] + pos, self._df[left].astype(np.int64), n)
        t_weight = _weights(lengths, t_start, t_deficits, n)
        t_base = t_start[t_text] if t_deficits is not None else None
        e_base = self._start[e_owner] if self._deficits is not None else None
        cov_t = _covered(group, t_pos, n, len(uniq), t_base, t_deficits)
        cov_e = _covered(group, e_pos, n, len(uniq), e_base, self._deficits)
        shared = np.bincount(group, minlength=len(uniq))
        p_text, p_owner = np.divmod(uniq, len(self.keys))
        ct = np.minimum(1.0, cov_t / t_weight[p_text])
        ce = np.minimum(1.0, cov_e / self._weight[p_owner])
        score = np.maximum(ct, ce)
        # Pairs come sorted by training text. A text whose best pair stays below the threshold, and
        # that matches no eval text exactly, is only counted: most pairs end here (a shared template).
        starts = np.flatnonzero(np.concatenate(([True], p_text[1:] != p_text[:-1])))
        ahead = np.maximum.reduceat(score, starts) >= threshold
        ahead |= np.isin(p_text[starts], np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
        wanted = np.repeat(ahead, np.diff(np.append(starts, len(uniq))))
        for g in np.flatnonzero(wanted).tolist():
            i, owner = int(p_text[g]), int(p_owner[g])
            known = candidates.setdefault(i, {})
            if owner in known:  # an exact match scores 1 whatever its n-grams say
                known[owner].shared = int(shared[g])
                continue
            known[owner] = _Candidate("ngram", float(score[g]), float(ct[g]), float(ce[g]), int(shared[g]), g)
        hits = _Hits(group, t_pos, e_pos, t_base, e_base, p_text, p_owner, t_weight, t_deficits)
        hits.counted = int(len(uniq) - wanted.sum())
        return hits

    def _report(
        self, train_key: Hashable, pairs: dict[int, _Candidate], hits: _Hits | None, threshold: float, result
    ) -> list[Match]:
        """The best match of one training text, and the others that stand without what better ones explain."""
        ranked = sorted(pairs.items(), key=lambda p: (-p[1].score, p[1].kind != "exact", -p[1].shared, p[0]))
        best_owner, best = ranked[0]
        if best.score < threshold:
            result.below_threshold_count += len(ranked)
            return []
        reported = [best.match(train_key, self.keys[best_owner])]
        # An exact match explains every n-gram of the text.
        explained = hits.t_pos[hits.rows(best.group)] if best.kind != "exact" else None
        for owner, other in ranked[1:]:
            if other.score < threshold:
                result.below_threshold_count += 1
                continue
            alone = None if explained is None else self._without(hits, other.group, explained)
            if alone is None or alone.score < threshold:
                result.explained_count += 1
                continue
            reported.append(alone.match(train_key, self.keys[owner], secondary=True))
            explained = np.union1d(explained, hits.t_pos[hits.rows(other.group)])
        return reported

    def _without(self, hits: _Hits, g: int, explained: np.ndarray) -> _Candidate | None:
        """Pair ``g`` scored on the training n-grams that are not in ``explained`` only."""
        rows = hits.rows(g)
        rows = rows[~np.isin(hits.t_pos[rows], explained)]
        if not len(rows):
            return None
        i, owner = int(hits.p_text[g]), int(hits.p_owner[g])
        one = np.zeros(len(rows), dtype=np.int64)
        t_base = None if hits.t_base is None else hits.t_base[rows]
        e_base = None if hits.e_base is None else hits.e_base[rows]
        ct = _covered(one, hits.t_pos[rows], self.n, 1, t_base, hits.t_deficits)[0] / hits.t_weight[i]
        ce = _covered(one, hits.e_pos[rows], self.n, 1, e_base, self._deficits)[0] / self._weight[owner]
        ct, ce = float(min(1.0, ct)), float(min(1.0, ce))
        return _Candidate("ngram", max(ct, ce), ct, ce, len(rows), g)


def check_texts(
    eval_items: Iterable[tuple[Hashable, str]],
    train_items: Iterable[tuple[Hashable, str]],
    *,
    n: int = DEFAULT_N,
    threshold: float = DEFAULT_THRESHOLD,
    min_exact_tokens: int = DEFAULT_MIN_EXACT_TOKENS,
    max_matches: int = 10_000,
) -> CheckResult:
    """Index the eval texts, then check the training texts against them."""
    index = EvalIndex(n=n, min_exact_tokens=min_exact_tokens).add(eval_items).build()
    return index.check(train_items, threshold=threshold, max_matches=max_matches)
