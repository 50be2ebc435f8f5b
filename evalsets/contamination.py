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


def _covered(group: np.ndarray, pos: np.ndarray, n: int, groups: int) -> np.ndarray:
    """Tokens covered by the n-grams starting at ``pos``, summed per group (overlaps counted once)."""
    order = np.lexsort((pos, group))
    g, p = group[order], pos[order]
    keep = np.ones(len(g), dtype=bool)
    keep[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    g, p = g[keep], p[keep]
    step = np.full(len(p), n, dtype=np.int64)
    same = g[1:] == g[:-1]
    step[:-1] = np.where(same, np.minimum(p[1:] - p[:-1], n), n)
    return np.bincount(g, weights=step, minlength=groups)


@dataclass(frozen=True)
class Match:
    """One training text that overlaps one eval text."""

    train_key: Hashable
    eval_key: Hashable
    kind: str  # "exact" or "ngram"
    score: float
    train_coverage: float
    eval_coverage: float
    shared_ngrams: int


@dataclass
class CheckResult:
    n: int
    threshold: float
    texts_checked: int = 0
    ngrams_checked: int = 0
    offending_count: int = 0
    below_threshold_count: int = 0
    matches: list[Match] = field(default_factory=list)
    matches_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.offending_count == 0


class EvalIndex:
    """Exact-text hashes and a sorted n-gram hash array over the eval side."""

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
            for i, norm in enumerate(norms):
                if lengths[i] >= self.min_exact_tokens:
                    self._exact.setdefault(hash(norm), []).append(base + i)
            grams, text_of, pos = _ngrams(hashes, lengths, self.n)
            self._parts.append((grams, (text_of + base).astype(np.int32), pos.astype(np.int32)))
        return self

    def build(self) -> EvalIndex:
        grams = np.concatenate([p[0] for p in self._parts]) if self._parts else np.empty(0, np.uint64)
        owners = np.concatenate([p[1] for p in self._parts]) if self._parts else np.empty(0, np.int32)
        pos = np.concatenate([p[2] for p in self._parts]) if self._parts else np.empty(0, np.int32)
        order = np.argsort(grams, kind="stable")
        self._grams, self._owners, self._pos = grams[order], owners[order], pos[order]
        self._len = np.concatenate(self._lengths) if self._lengths else np.empty(0, np.int64)
        self._bitmap = np.zeros(2**BITMAP_BITS // 8, dtype=np.uint8)
        top = self._grams >> np.uint64(64 - BITMAP_BITS)
        np.bitwise_or.at(
            self._bitmap, (top >> np.uint64(3)).astype(np.int64), (1 << (top & np.uint64(7))).astype(np.uint8)
        )
        self._parts = []
        self._built = True
        return self

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
        """Compare training texts with the index; matches scoring at or above ``threshold`` offend."""
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold={threshold}: use a share of a text in (0, 1], for example 0.5.")
        if not self._built:
            self.build()
        result = CheckResult(n=self.n, threshold=threshold)
        self._ngrams_seen = 0
        for batch in _chunks(items, CHUNK):
            for match in self._check_batch(batch):
                if match.score >= threshold:
                    result.offending_count += 1
                    if len(result.matches) < max_matches:
                        result.matches.append(match)
                    else:
                        result.matches_truncated = True
                else:
                    result.below_threshold_count += 1
            result.texts_checked += len(batch)
        result.ngrams_checked = self._ngrams_seen
        result.matches.sort(key=lambda m: (-m.score, str(m.train_key), str(m.eval_key)))
        return result

    def _check_batch(self, batch: list[tuple[Hashable, str]]) -> Iterator[Match]:
        n = self.n
        norms, lengths, hashes = _featurize([text for _, text in batch])
        exact_pairs: set[tuple[int, int]] = set()
        for i, norm in enumerate(norms):
            if lengths[i] >= self.min_exact_tokens:
                for owner in self._exact.get(hash(norm), ()):
                    exact_pairs.add((i, owner))
        grams, text_of, pos = _ngrams(hashes, lengths, n)
        self._ngrams_seen += len(grams)
        pairs: dict[tuple[int, int], tuple[float, float, int]] = {}
        if len(grams) and len(self._grams):
            top = grams >> np.uint64(64 - BITMAP_BITS)
            maybe = np.nonzero((self._bitmap[(top >> np.uint64(3)).astype(np.int64)] >> (top & np.uint64(7))) & 1)[0]
            left = np.searchsorted(self._grams, grams[maybe], side="left")
            found = left < len(self._grams)
            found[found] = self._grams[left[found]] == grams[maybe][found]
            hit = maybe[found]
            if len(hit):
                pairs = self._score_hits(grams[hit], text_of[hit], pos[hit], left[found], lengths)
        for i, owner in exact_pairs:
            shared = pairs.get((i, owner), (1.0, 1.0, 0))[2]
            yield Match(batch[i][0], self.keys[owner], "exact", 1.0, 1.0, 1.0, shared)
        for (i, owner), (cov_t, cov_e, shared) in pairs.items():
            if (i, owner) not in exact_pairs:
                score = max(cov_t, cov_e)
                yield Match(batch[i][0], self.keys[owner], "ngram", round(score, 4), cov_t, cov_e, shared)

    def _score_hits(self, grams, text_of, pos, left, lengths) -> dict[tuple[int, int], tuple[float, float, int]]:
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
        cov_t = _covered(group, t_pos, n, len(uniq))
        cov_e = _covered(group, e_pos, n, len(uniq))
        shared = np.bincount(group, minlength=len(uniq))
        out = {}
        for g, key in enumerate(uniq.tolist()):
            i, owner = divmod(key, len(self.keys))
            out[(i, owner)] = (
                float(min(1.0, cov_t[g] / lengths[i])),
                float(min(1.0, cov_e[g] / self._len[owner])),
                int(shared[g]),
            )
        return out


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
