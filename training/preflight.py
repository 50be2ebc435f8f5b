"""Catch a bad job in seconds, not an hour in: check the config against the model, fit every example into
max_length the way the runner will, and render the first examples through the chat template, marking
which tokens carry loss.

Runs on a worker (the ``training_preflight_run`` task), never in the web process: it needs the training
extra and the model files. Loads the tokenizer and the model's config only (the model is built on the
meta device: no weights, no memory).
"""

from __future__ import annotations

from collections.abc import Callable

from training import examples
from training.config import TrainingConfig

SAMPLE_EXAMPLES = 2
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")

Progress = Callable[[float, str], None]


def _linear_names(model_config) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def _pieces(tokenizer, rendered: examples.Rendered, index: int) -> list[dict]:
    ids = rendered.sequences[index]
    return [{"text": tokenizer.decode([tid]), "loss": i >= rendered.prompt_len} for i, tid in enumerate(ids)]


def _sample(tokenizer, example: examples.Example, fitted: examples.Fitted, *, kind: str, index: int, side=None):
    rendered = fitted.rendered
    return {
        "kind": kind,
        **({"side": side} if side else {}),
        "source_item_id": example.source_item_id,
        "status": fitted.status,
        "pieces": _pieces(tokenizer, rendered, index),
        "tokens": len(rendered.sequences[index]),
        "original_tokens": fitted.original_tokens,
        "prompt_tokens": rendered.prompt_len,
        "loss_tokens": rendered.loss_tokens()[index],
        "truncated": fitted.status == examples.TRUNCATED,
    }


def _failed(errors: list[str], stats: dict | None = None) -> dict:
    return {"ok": False, "errors": errors, "warnings": [], "samples": [], "stats": stats or {}}


def check(*, base_model: str, config: dict, records: list[dict], progress: Progress | None = None) -> dict:
    """Return {ok, errors, warnings, samples, stats}; errors say what is wrong and how to fix it."""
    report = progress or (lambda share, stage: None)
    errors: list[str] = []
    warnings: list[str] = []
    samples: list[dict] = []
    stats: dict = {}
    try:
        cfg = TrainingConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        return _failed([str(exc)])

    from transformers import AutoConfig, AutoTokenizer

    report(0.05, "reading the base model's config and tokenizer")
    try:
        model_config = AutoConfig.from_pretrained(base_model)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        return _failed(
            [
                f"Cannot read the base model {base_model!r} ({exc.__class__.__name__}: {str(exc)[:300]}). Give a "
                f"local directory with config.json and tokenizer files, or a hub id the gpu worker can reach."
            ]
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    limit = next((getattr(model_config, k) for k in POSITION_KEYS if getattr(model_config, k, None)), None)
    stats["model_type"] = model_config.model_type
    stats["model_max_length"] = limit
    if limit and cfg.max_length > limit:
        errors.append(f"max length {cfg.max_length} exceeds the model's {limit}: set max_length to {limit} or less.")

    if cfg.target_modules != ["all-linear"]:
        report(0.1, "listing the model's linear layers")
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

    fits: dict[str, dict] = {}
    phases = [(p, examples.phase_examples(records, phase=p, sft_on_chosen=cfg.sft_on_chosen)) for p in cfg.phases]
    stats["sft_examples"] = len(dict(phases).get("sft", []))
    stats["dpo_pairs"] = len(dict(phases).get("dpo", []))
    for phase, phase_examples in phases:
        if not phase_examples:
            what = "SFT examples (gold answers)" if phase == "sft" else "DPO pairs (preferences)"
            other = "DPO" if phase == "sft" else "SFT"
            errors.append(f"The snapshot has no {what}: choose {other}, or a snapshot that has them.")
            continue
        fit = examples.FitReport()
        start = 0.15 + 0.8 * (len(fits) / len(phases))
        span = 0.8 / len(phases)

        def step(done: int, total: int, phase=phase, start=start, span=span) -> None:
            report(start + span * done / total, f"fitting {phase.upper()} examples into {cfg.max_length} tokens")

        for i, (example, fitted) in enumerate(
            examples.fit_examples(tokenizer, phase_examples, max_length=cfg.max_length, progress=step)
        ):
            fit.add(fitted.status, example.source_item_id)
            if i < SAMPLE_EXAMPLES and fitted.status != examples.LEFT_OUT:
                if phase == "sft":
                    samples.append(_sample(tokenizer, example, fitted, kind="sft", index=0))
                elif i == 0:  # the first pair, both sides
                    for index, side in enumerate(("chosen", "rejected")):
                        samples.append(_sample(tokenizer, example, fitted, kind="dpo", index=index, side=side))
        fits[phase] = fit.as_dict()
        if fit.left_out == fit.examples:
            errors.append(
                f"Every {phase.upper()} example is longer than max_length {cfg.max_length} even with its prompt cut "
                f"(the answer, or the system turn, alone fills it): raise max_length or shorten the answers."
            )
        elif fit.left_out:
            warnings.append(
                f"{fit.left_out} {phase.upper()} example(s) will be left out: their answer does not fit whole in "
                f"max_length {cfg.max_length} (items {', '.join(map(str, fit.left_out_items[:10]))}"
                f"{', …' if fit.left_out > 10 else ''})."
            )
        if fit.prompt_truncated:
            warnings.append(
                f"{fit.prompt_truncated} {phase.upper()} example(s) are longer than max_length {cfg.max_length}: "
                f"their prompt is cut from the left (the system turn and the whole answer stay)."
            )
    stats["fit"] = fits
    report(1.0, "done")
    return {"ok": not errors, "errors": errors, "warnings": warnings, "samples": samples, "stats": stats}
