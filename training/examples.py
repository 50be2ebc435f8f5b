"""Snapshot records as training examples that fit ``max_length`` without losing any token that carries loss.

TRL cuts an over-long example at its end, which takes the answer's tail and its end-of-turn token: the
model then learns not to stop. Here the prompt gives way instead: whole turns are dropped from the left
(the leading system turns always stay), then the start of the oldest remaining turn is cut; an example
that still does not fit (its answer alone, or its system turn, is too long) is left out. Both outcomes
are counted, by the preflight before the job is queued and by the runner into the manifest.

Token counts follow TRL's own tokenization of conversational prompt–completion rows (the chat template
with and without the generation prompt, the answer starting where they diverge), so a fitted example
is never cut again by the trainer. Needs a tokenizer only (no model, no torch computation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

KEPT = "kept"
TRUNCATED = "prompt_truncated"
LEFT_OUT = "left_out"
# Item ids listed per outcome in reports (the counts are always complete).
LISTED_ITEMS = 50


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """Leading tokens two sequences share: where TRL starts the answer."""
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def _ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


@dataclass(frozen=True)
class Rendered:
    """One prompt with its answers as TRL tokenizes them."""

    prompt_len: int
    sequences: list[list[int]]  # prompt + answer, one per answer

    @property
    def longest(self) -> int:
        return max(len(s) for s in self.sequences)

    def loss_tokens(self) -> list[int]:
        return [len(s) - self.prompt_len for s in self.sequences]


def render(tokenizer, messages: list[dict], answers: list[str]) -> Rendered:
    prompt_ids = _ids(tokenizer, messages, add_generation_prompt=True)
    sequences = [_ids(tokenizer, messages + [{"role": "assistant", "content": a}]) for a in answers]
    prompt_len = min(common_prefix_length(prompt_ids, s) for s in sequences)
    return Rendered(prompt_len, sequences)


@dataclass(frozen=True)
class Fitted:
    messages: list[dict]
    status: str  # KEPT, TRUNCATED or LEFT_OUT
    rendered: Rendered  # of the fitted messages (of the original ones when left out)
    original_tokens: int


def fit(tokenizer, messages: list[dict], answers: list[str], max_length: int) -> Fitted:
    """The prompt shortened from the left until prompt + longest answer fits, or LEFT_OUT when nothing does."""
    whole = render(tokenizer, messages, answers)
    if whole.longest <= max_length:
        return Fitted(messages, KEPT, whole, whole.longest)

    def fitting(candidate: list[dict]) -> Rendered | None:
        rendered = render(tokenizer, candidate, answers)
        return rendered if rendered.longest <= max_length else None

    system = 0
    while system < len(messages) and messages[system]["role"] == "system":
        system += 1
    head, body = messages[:system], messages[system:]
    # Whole turns first; the kept part starts on a user turn, since many templates insist on alternation.
    for start in range(1, len(body)):
        if body[start]["role"] == "user" and (rendered := fitting(head + body[start:])):
            return Fitted(head + body[start:], TRUNCATED, rendered, whole.longest)
    last = max((i for i, m in enumerate(body) if m["role"] == "user"), default=len(body) - 1)
    if last < 0:
        return Fitted(messages, LEFT_OUT, whole, whole.longest)
    kept = body[last:]
    turn = kept[0]

    def with_text(text: str) -> list[dict]:
        return head + [{**turn, "content": text}] + kept[1:]

    if fitting(with_text("")) is None:
        return Fitted(messages, LEFT_OUT, whole, whole.longest)
    pieces = list(tokenizer(turn["content"], add_special_tokens=False)["input_ids"])
    # Fewest leading tokens of the turn to drop; re-tokenizing a cut text can merge differently, so
    # every candidate is measured through the template rather than counted.
    low, high = 1, len(pieces)
    best = with_text("")
    while low <= high:
        middle = (low + high) // 2
        candidate = with_text(tokenizer.decode(pieces[middle:]))
        if fitting(candidate) is not None:
            best, high = candidate, middle - 1
        else:
            low = middle + 1
    return Fitted(best, TRUNCATED, render(tokenizer, best, answers), whole.longest)


@dataclass(frozen=True)
class Example:
    """What one phase trains on from one record: a prompt and one answer (SFT) or chosen + rejected (DPO)."""

    messages: list[dict]
    answers: list[str]
    source_item_id: int | None


def phase_examples(records: list[dict], *, phase: str, sft_on_chosen: bool) -> list[Example]:
    """SFT: gold answers (and the chosen side of pairs when asked); DPO: the pairs."""
    examples = []
    for r in records:
        if phase == "sft" and r["kind"] == "sft":
            examples.append(Example(r["messages"], [r["completion"]], r.get("source_item_id")))
        elif phase == "sft" and r["kind"] == "dpo" and sft_on_chosen:
            examples.append(Example(r["messages"], [r["chosen"]], r.get("source_item_id")))
        elif phase == "dpo" and r["kind"] == "dpo":
            examples.append(Example(r["messages"], [r["chosen"], r["rejected"]], r.get("source_item_id")))
    return examples


@dataclass
class FitReport:
    """How a phase's examples fared against max_length."""

    examples: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    left_out: int = 0
    truncated_items: list = field(default_factory=list)
    left_out_items: list = field(default_factory=list)

    def add(self, status: str, item_id) -> None:
        self.examples += 1
        if status == KEPT:
            self.kept += 1
        elif status == TRUNCATED:
            self.prompt_truncated += 1
            if len(self.truncated_items) < LISTED_ITEMS:
                self.truncated_items.append(item_id)
        else:
            self.left_out += 1
            if len(self.left_out_items) < LISTED_ITEMS:
                self.left_out_items.append(item_id)

    def as_dict(self) -> dict:
        return {
            "examples": self.examples,
            "kept": self.kept,
            "prompt_truncated": self.prompt_truncated,
            "left_out": self.left_out,
            "truncated_items": self.truncated_items,
            "left_out_items": self.left_out_items,
        }


def fit_examples(
    tokenizer,
    examples: list[Example],
    *,
    max_length: int,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Example, Fitted]]:
    """Each example with its fitted form; ``progress(done, total)`` every few hundred examples."""
    total = len(examples)
    for done, example in enumerate(examples, start=1):
        yield example, fit(tokenizer, example.messages, example.answers, max_length)
        if progress is not None and (done % 200 == 0 or done == total):
            progress(done, total)


def training_rows(
    tokenizer, records: list[dict], *, phase: str, max_length: int, sft_on_chosen: bool
) -> tuple[list[dict], FitReport]:
    """The rows TRL trains on for one phase (conversational prompt–completion / preference), and the fit report."""
    report = FitReport()
    rows = []
    examples = phase_examples(records, phase=phase, sft_on_chosen=sft_on_chosen)
    for example, fitted in fit_examples(tokenizer, examples, max_length=max_length):
        report.add(fitted.status, example.source_item_id)
        if fitted.status == LEFT_OUT:
            continue
        answers = [[{"role": "assistant", "content": a}] for a in example.answers]
        if phase == "sft":
            rows.append({"prompt": fitted.messages, "completion": answers[0]})
        else:
            rows.append({"prompt": fitted.messages, "chosen": answers[0], "rejected": answers[1]})
    return rows, report
