"""Batched generation for eval prompts, free of Django: load a base (and an adapter), answer prompts.

Prompts are sorted by length and answered in left-padded batches with the KV cache, so a batch wastes
little on padding and each new token costs one forward step over the batch. Greedy decoding unless a
temperature is set; the seed makes sampling repeatable for the same batches.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


class GenerationError(Exception):
    """A run cannot go on, in words a person can act on."""


@dataclass(frozen=True)
class DecodingConfig:
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily; above 0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling share (sampling only)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest response, in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (greedy ignores it)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts answered together (left-padded)."})

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 5:
            raise ValueError(f"temperature {self.temperature} is out of range: use 0 (greedy) up to 5.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p} is out of range: use a share above 0 and at most 1.")
        if not 1 <= self.max_new_tokens <= 32768:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} is out of range: use 1 to 32768.")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"batch_size {self.batch_size} is out of range: use 1 to 1024.")
        if self.seed < 0:
            raise ValueError("seed must be 0 or more.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecodingConfig:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data or {}) - set(known))
        if unknown:
            raise ValueError(
                f"Unknown decoding settings {', '.join(unknown)}: use {', '.join(cls.__dataclass_fields__)}."
            )
        return cls(**known)

    def label(self) -> str:
        if self.greedy:
            return f"greedy, max {self.max_new_tokens} new tokens"
        return (
            f"sampling T={self.temperature} top-p={self.top_p} seed={self.seed}, max {self.max_new_tokens} new tokens"
        )


@dataclass
class Answer:
    position: int
    text: str
    new_tokens: int
    finish_reason: str


@dataclass
class BatchReport:
    done: int
    total: int
    answers: list[Answer]
    seconds: float
    new_tokens: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(base_model: str, adapter_dir: str | None) -> dict:
    """The base model's fingerprint (sha256 of a local directory, or a hub id) and the adapter manifest's sha256."""
    from training.provenance import model_fingerprint

    identity = {"base_model": model_fingerprint(base_model), "adapter_manifest_sha256": None}
    if adapter_dir:
        manifest = Path(adapter_dir) / "manifest.json"
        if not manifest.is_file():
            raise GenerationError(
                f"The adapter {adapter_dir} has no manifest.json: only adapters trained by Goldset can be judged."
            )
        identity["adapter_manifest_sha256"] = file_sha256(manifest)
        identity["adapter_base_sha256"] = (json.loads(manifest.read_text()).get("base_model") or {}).get("sha256")
    return identity


def load(base_model: str, adapter_dir: str | None = None):
    """(model, tokenizer) ready to generate: bf16 on a GPU, fp32 on the CPU, the adapter merged in (exact on
    a full-precision base), the tokenizer padding on the left."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_model)
    except OSError:
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_model)
        except OSError as exc:
            raise GenerationError(f"Cannot load the tokenizer of {base_model!r}: {exc}.") from exc
    if not tokenizer.chat_template:
        raise GenerationError(f"The tokenizer of {base_model} has no chat template: use an instruct/chat model.")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.bfloat16 if cuda else torch.float32, device_map={"": 0 if cuda else "cpu"}
        )
    except OSError as exc:
        raise GenerationError(f"Cannot load the base model {base_model!r}: {exc}.") from exc
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    return model, tokenizer


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    ids.discard(None)
    return ids


def generate(
    model,
    tokenizer,
    prompts: list[list[dict]],
    decoding: DecodingConfig,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[BatchReport]:
    """Answer each prompt (chat turns) once; yields one report per batch, answers keyed by prompt position."""
    import torch

    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    encoded = []
    for position, messages in enumerate(prompts):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        room = limit - decoding.max_new_tokens
        if room < 1:
            raise GenerationError(
                f"max_new_tokens {decoding.max_new_tokens} leaves no room for a prompt in the model's "
                f"{limit}-token context: lower it."
            )
        # A prompt longer than the context keeps its end (the question and the generation prompt).
        encoded.append((position, list(ids)[-room:]))
    order = sorted(encoded, key=lambda e: len(e[1]))
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    done = 0
    for start in range(0, len(order), decoding.batch_size):
        if should_stop():
            return
        batch = order[start : start + decoding.batch_size]
        width = max(len(ids) for _, ids in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=device)
        kwargs = {"max_new_tokens": decoding.max_new_tokens, "pad_token_id": pad, "use_cache": True}
        if decoding.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(decoding.seed + start)
            kwargs.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=None)
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        answers, tokens = [], 0
        for (position, _), row in zip(batch, out[:, width:].tolist(), strict=True):
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            kept = row if cut is None else row[:cut]
            kept = [t for t in kept if t != pad]
            tokens += len(kept) + (0 if cut is None else 1)
            answers.append(
                Answer(
                    position=position,
                    text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    new_tokens=len(kept),
                    finish_reason="length" if cut is None else "eos",
                )
            )
        done += len(batch)
        yield BatchReport(done=done, total=len(order), answers=answers, seconds=seconds, new_tokens=tokens)
