"""Contamination check throughput and memory: N candidate training texts against 50k eval records.

    python bench/contamination_bench.py                  # 100k and 1M training texts
    python bench/contamination_bench.py --sizes 20000    # a quick run

Eval records have a prompt (~40 words) and an answer (~80 words), so 50k records are ~100k eval
texts. One record in ten is built on boilerplate, as real eval sets are: its prompt opens with one
of 20 templates (17 words, each shared by ~250 records), and pairs of those records also share a
closing sentence (17 words). Training texts (~80 words) are streamed from a generator, as the
service streams them from the database; 0.1% of them are planted near-duplicates (re-cased,
re-spaced, truncated, reworded or embedded eval texts), another 0.1% the same of boilerplate
records, and 0.1% are new questions written on the same templates. The run checks that every
planted copy is paired with its source, that no pair points at another eval record, and that
nothing else raises an alarm.
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _memory import PeakRSS  # noqa: E402

from evalsets.contamination import DEFAULT_N, DEFAULT_THRESHOLD, EvalIndex  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "ri", "zu", "be", "fo", "gi", "ha"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))))
    return sorted(words)


def sentence(rng: random.Random, vocab: list[str], k: int) -> str:
    return " ".join(rng.choices(vocab, k=k)).capitalize() + "."


TEMPLATES = 20
BOILERPLATE_EVERY = 10


def boilerplate(rng: random.Random, vocab: list[str]) -> tuple[list[str], list[str]]:
    """The templates prompts open with, and the closing sentences pairs of records share."""
    templates = [sentence(rng, vocab, 17) for _ in range(TEMPLATES)]
    closings = [sentence(rng, vocab, 17) for _ in range(1000)]
    return templates, closings


def eval_prompt(i: int, rng: random.Random, vocab: list[str], templates: list[str], closings: list[str]) -> str:
    question = sentence(rng, vocab, rng.randint(25, 55))
    if i % BOILERPLATE_EVERY:
        return question
    prompt = f"{templates[(i // BOILERPLATE_EVERY) % TEMPLATES]} {question}"
    if (i // BOILERPLATE_EVERY) % 5 < 2:  # two records in five share a closing sentence with one other
        prompt += " " + closings[(i // (2 * BOILERPLATE_EVERY)) % len(closings)]
    return prompt


def plant(text: str, how: int) -> str:
    words = text.split()
    # A light paraphrase: one word in the first quarter, a second one late in long texts.
    reworded = {len(words) // 4, 3 * len(words) // 4 if len(words) >= 60 else -1}
    return [
        text.upper(),
        "   ".join(words),
        " ".join(words[: len(words) * 2 // 3]),
        " ".join("changed" if i in reworded else w for i, w in enumerate(words)),
        "Forwarded message: " + text + " -- sent from my phone",
    ][how % 5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Training text counts, comma-separated.")
    parser.add_argument("--eval-records", type=int, default=50_000)
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args()
    rng = random.Random(20261128)
    vocab = vocabulary(50_000, rng)
    templates, closings = boilerplate(rng, vocab)
    eval_texts = []
    for i in range(args.eval_records):
        eval_texts.append(((i, "prompt"), eval_prompt(i, rng, vocab, templates, closings)))
        eval_texts.append(((i, "reference"), sentence(rng, vocab, rng.randint(50, 110))))
    templated_prompts = [eval_texts[2 * i] for i in range(0, args.eval_records, BOILERPLATE_EVERY)]

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        index = EvalIndex(n=args.n).add(eval_texts).build()
        build_s = time.perf_counter() - t0
    print(f"eval index: {args.eval_records:,} records, {len(index):,} texts, {index.ngram_count:,} {args.n}-grams")
    print(f"  built in {build_s:.1f} s, peak RSS {mem.peak_mib:,.0f} MiB (+{mem.delta_mib:,.0f} MiB)")

    pool = [sentence(rng, vocab, 80) for _ in range(20_000)]
    # New questions on the eval set's templates: they copy no eval record.
    lookalikes = [
        f"{templates[j % TEMPLATES]} {sentence(rng, vocab, 35)}" + (f" {closings[j]}" if j % 2 else "")
        for j in range(1000)
    ]
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        planted = {}

        def training_texts(size=size, planted=planted):
            for i in range(size):
                if i % 1000 == 999:
                    key, text = eval_texts[(i * 7919) % len(eval_texts)]
                    planted[i] = key
                    yield i, plant(text, i // 1000)
                elif i % 1000 == 499:
                    key, text = templated_prompts[(i * 7919) % len(templated_prompts)]
                    planted[i] = key
                    yield i, plant(text, i // 1000)
                elif i % 1000 == 249:
                    yield i, lookalikes[(i // 1000) % len(lookalikes)]
                else:
                    yield i, pool[i % len(pool)] if i < len(pool) else pool[i % len(pool)][::-1]

        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = index.check(training_texts(), threshold=args.threshold)
            elapsed = time.perf_counter() - t0
        found = {m.train_key for m in result.matches if m.eval_key == planted.get(m.train_key)}
        wrong = sum(1 for m in result.matches if m.train_key in planted and m.eval_key != planted[m.train_key])
        false_alarms = sum(1 for m in result.matches if m.train_key not in planted)
        results.append((size, elapsed))
        print(
            f"{size:>9,} training texts: {elapsed:6.1f} s, {size / elapsed:>9,.0f} texts/s, "
            f"{result.ngrams_checked / elapsed / 1e6:5.1f} M n-grams/s, peak RSS {mem.peak_mib:,.0f} MiB "
            f"(+{mem.delta_mib:,.0f} MiB during the check); planted {len(planted)}, found {len(found)}, "
            f"pairs pointing elsewhere {wrong}, false alarms {false_alarms} "
            f"(pairs below the threshold {result.below_threshold_count:,}, explained by a better match "
            f"{result.explained_count:,})"
        )
        if len(found) != len(planted) or wrong or false_alarms:
            raise SystemExit(
                "FAILED: a planted duplicate was missed, paired with another eval record, or an unrelated text "
                "was flagged"
            )
    if len(results) > 1:
        (s0, t0_), (s1, t1_) = results[0], results[-1]
        print(f"scaling: {s1 / s0:.0f}x the texts took {t1_ / t0_:.1f}x the time")


if __name__ == "__main__":
    main()
