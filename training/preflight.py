"""Catch a bad job in seconds, not an hour in: check the config against the model and render the
first batch through the chat template, marking which tokens carry loss.

Loads the tokenizer and the model's config only (the model is built on the meta device: no weights,
no memory). Runs in a subprocess of the web process (``python -m training.preflight``) so the web
process never imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training.config import TrainingConfig

SAMPLE_EXAMPLES = 2
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _linear_names(model_config) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def _render(tokenizer, prompt: list[dict], completion: str, max_length: int) -> dict:
    """Token pieces with a loss flag, the way TRL tokenizes a conversational prompt–completion pair."""
    prompt_ids = list(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    full_ids = list(
        tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": completion}], tokenize=True, return_dict=True
        )["input_ids"]
    )
    if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
        full_ids.append(tokenizer.eos_token_id)
    kept = full_ids[:max_length]
    pieces = [{"text": tokenizer.decode([tid]), "loss": i >= len(prompt_ids)} for i, tid in enumerate(kept)]
    return {
        "pieces": pieces,
        "tokens": len(full_ids),
        "prompt_tokens": len(prompt_ids),
        "loss_tokens": max(0, len(kept) - len(prompt_ids)),
        "truncated": len(full_ids) > max_length,
    }


def check(*, base_model: str, config: dict, records: list[dict]) -> dict:
    """Return {ok, errors, warnings, samples, stats}; errors say what is wrong and how to fix it."""
    errors: list[str] = []
    warnings: list[str] = []
    samples: list[dict] = []
    stats: dict = {}
    try:
        cfg = TrainingConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        return {"ok": False, "errors": [str(exc)], "warnings": [], "samples": [], "stats": {}}

    from transformers import AutoConfig, AutoTokenizer

    try:
        model_config = AutoConfig.from_pretrained(base_model)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        return {
            "ok": False,
            "errors": [
                f"Cannot read the base model {base_model!r} ({exc.__class__.__name__}: {str(exc)[:300]}). Give a "
                f"local directory with config.json and tokenizer files, or a hub id the gpu worker can reach."
            ],
            "warnings": [],
            "samples": [],
            "stats": {},
        }
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    limit = next((getattr(model_config, k) for k in POSITION_KEYS if getattr(model_config, k, None)), None)
    stats["model_type"] = model_config.model_type
    stats["model_max_length"] = limit
    if limit and cfg.max_length > limit:
        errors.append(f"max length {cfg.max_length} exceeds the model's {limit}: set max_length to {limit} or less.")

    if cfg.target_modules != ["all-linear"]:
        linear = _linear_names(model_config)
        missing = [m for m in cfg.target_modules if m not in linear]
        stats["linear_modules"] = linear
        if missing:
            errors.append(
                f"target module(s) {', '.join(missing)} do not exist in this {model_config.model_type} model: "
                f"its linear layers are {', '.join(linear)} (or use all-linear)."
            )

    if not tokenizer.chat_template:
        errors.append(
            f"The tokenizer of {base_model} has no chat template: use a chat/instruct model or add a chat_template."
        )
        return {"ok": False, "errors": errors, "warnings": warnings, "samples": samples, "stats": stats}

    sft = [r for r in records if r["kind"] == "sft" or (r["kind"] == "dpo" and cfg.sft_on_chosen)]
    dpo = [r for r in records if r["kind"] == "dpo"]
    stats["sft_examples"] = len(sft) if "sft" in cfg.phases else 0
    stats["dpo_pairs"] = len(dpo) if "dpo" in cfg.phases else 0
    if "sft" in cfg.phases and not sft:
        errors.append("The snapshot has no SFT examples (gold answers): choose DPO, or a snapshot with gold answers.")
    if "dpo" in cfg.phases and not dpo:
        errors.append("The snapshot has no DPO pairs (preferences): choose SFT, or a snapshot with preference pairs.")

    lost = truncated = 0
    for r in sft[:200] if "sft" in cfg.phases else []:
        answer = r["completion"] if r["kind"] == "sft" else r["chosen"]
        rendered = _render(tokenizer, r["messages"], answer, cfg.max_length)
        truncated += rendered["truncated"]
        lost += rendered["loss_tokens"] == 0
        if len(samples) < SAMPLE_EXAMPLES:
            samples.append({"kind": "sft", "source_item_id": r.get("source_item_id"), **rendered})
    for i, r in enumerate(dpo[:200] if "dpo" in cfg.phases else []):
        for side in ("chosen", "rejected"):
            rendered = _render(tokenizer, r["messages"], r[side], cfg.max_length)
            truncated += rendered["truncated"]
            lost += rendered["loss_tokens"] == 0
            if i == 0:  # the first pair, both sides
                samples.append({"kind": "dpo", "side": side, "source_item_id": r.get("source_item_id"), **rendered})
    if lost:
        errors.append(
            f"{lost} example(s) lose their whole answer at max_length {cfg.max_length} (the prompt alone fills it): "
            f"raise max_length or shorten those prompts."
        )
    elif truncated:
        warnings.append(f"{truncated} example(s) are longer than max_length {cfg.max_length} and will be cut.")
    return {"ok": not errors, "errors": errors, "warnings": warnings, "samples": samples, "stats": stats}


def check_in_subprocess(*, base_model: str, config: dict, records: list[dict], timeout: int = 300) -> dict:
    """Run ``check`` in a fresh interpreter, so the caller never imports torch."""
    payload = json.dumps({"base_model": base_model, "config": config, "records": records})
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "training.preflight"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "errors": [f"The preflight took longer than {timeout}s: is the model path on a slow disk?"],
            "warnings": [],
            "samples": [],
            "stats": {},
        }
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "ok": False,
            "errors": ["The preflight crashed: " + " | ".join(tail)],
            "warnings": [],
            "samples": [],
            "stats": {},
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    data = json.loads(sys.stdin.read())
    result = check(base_model=data["base_model"], config=data["config"], records=data["records"])
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
