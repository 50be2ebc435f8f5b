"""A training job's configuration: one frozen dataclass, every field with a default and a one-line help.

Django-free, so the runner, the preflight, the benchmark and the web form share it. Stored on the job
row as JSON (``to_dict``) and written into the adapter's manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

METHODS = ("sft", "dpo", "sft_dpo")
AUTO = "auto"
TRI_STATE = (AUTO, "on", "off")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
QUANT_TYPES = ("nf4", "fp4")


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, list | dict | tuple):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainingConfig:
    """QLoRA SFT / DPO settings. ``auto`` fields are chosen from the model size and the GPU's free memory."""

    method: str = _f("sft", "sft, dpo, or sft_dpo (SFT, then DPO on the SFT adapter).")
    # --- quantization (QLoRA) -------------------------------------------------------------------
    load_in_4bit: bool = _f(True, "Load the base model in 4 bits (QLoRA). Off: LoRA on a bf16/fp32 base.")
    quant_type: str = _f("nf4", "4-bit data type: nf4 (normal float, the QLoRA default) or fp4.")
    double_quant: bool = _f(True, "Quantize the quantization constants too (saves ~0.4 bit per weight).")
    compute_dtype: str = _f("bfloat16", "dtype of the matrix multiplies (the LoRA weights themselves stay fp32).")
    # --- LoRA -----------------------------------------------------------------------------------
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    target_modules: list[str] = _f(["all-linear"], "Module names to adapt, or all-linear for every linear layer.")
    # --- optimisation ---------------------------------------------------------------------------
    learning_rate: float = _f(2e-4, "Peak learning rate of the SFT phase.")
    dpo_learning_rate: float = _f(5e-6, "Peak learning rate of the DPO phase.")
    lr_scheduler: str = _f("cosine", "Learning-rate schedule (any transformers scheduler name).")
    warmup_ratio: float = _f(
        0.03, "Share of the steps spent warming the learning rate up (at least one step when above 0)."
    )
    weight_decay: float = _f(0.0, "Weight decay on the LoRA weights.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    optimizer: str = _f(
        "adamw_torch_fused", "Optimizer (e.g. adamw_torch_fused: one kernel per step; paged_adamw_8bit)."
    )
    epochs: float = _f(1.0, "Passes over the snapshot (ignored when max_steps > 0).")
    max_steps: int = _f(0, "Stop after this many optimizer steps; 0 = train for `epochs`.")
    batch_size: int | str = _f(AUTO, "Micro-batch per device (sequences for SFT, pairs for DPO), or auto.")
    gradient_accumulation: int = _f(1, "Micro-batches per optimizer step.")
    max_length: int = _f(
        1024, "Longest sequence in tokens (prompt + answer); a longer prompt is cut from the left, never the answer."
    )
    packing: bool = _f(True, "SFT: pack short examples into full-length rows, padding-free (no cross-attention).")
    gradient_checkpointing: str = _f(AUTO, "Recompute activations to save memory: auto, on or off.")
    liger_kernel: str = _f(AUTO, "Fused Triton kernels from liger-kernel (GPU only): auto, on or off.")
    dpo_beta: float = _f(0.1, "DPO temperature: how far the policy may move from the reference.")
    sft_on_chosen: bool = _f(True, "Also train SFT on the chosen side of every preference pair.")
    seed: int = _f(42, "Seed for data order, LoRA init and dropout.")
    # --- bookkeeping ----------------------------------------------------------------------------
    logging_steps: int = _f(5, "Write progress (loss, lr, grad norm, tokens/s) every this many steps.")
    save_steps: int = _f(50, "Save a resumable checkpoint every this many steps.")
    save_total_limit: int = _f(2, "Checkpoints kept on disk (the newest ones).")
    stall_after_s: int = _f(
        0, "Fail the job when no step finishes for this many seconds; 0 = auto (10x its median step, 5 min at least)."
    )

    def __post_init__(self) -> None:
        problems = list(self.problems())
        if problems:
            raise ValueError(" ".join(problems))

    def problems(self):
        """Each impossible setting, in words a person can act on."""
        if self.method not in METHODS:
            yield f"method {self.method!r} is unknown: choose sft, dpo or sft_dpo."
        if self.quant_type not in QUANT_TYPES:
            yield f"quant_type {self.quant_type!r} is unknown: choose nf4 or fp4."
        if self.compute_dtype not in COMPUTE_DTYPES:
            yield f"compute_dtype {self.compute_dtype!r} is unknown: choose one of {', '.join(COMPUTE_DTYPES)}."
        if self.lora_r < 1:
            yield f"lora_r must be at least 1 (got {self.lora_r})."
        if self.lora_alpha < 1:
            yield f"lora_alpha must be at least 1 (got {self.lora_alpha})."
        if not 0 <= self.lora_dropout < 1:
            yield f"lora_dropout must be in [0, 1) (got {self.lora_dropout})."
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            yield "target_modules must name at least one module (e.g. q_proj, v_proj) or be all-linear."
        for name in ("learning_rate", "dpo_learning_rate", "dpo_beta", "max_grad_norm"):
            if getattr(self, name) <= 0:
                yield f"{name} must be greater than 0 (got {getattr(self, name)})."
        if self.epochs <= 0 and self.max_steps <= 0:
            yield "Set epochs above 0 or max_steps above 0: as given, the job would train for no steps."
        if self.max_steps < 0:
            yield f"max_steps must be 0 (use epochs) or positive (got {self.max_steps})."
        if self.batch_size != AUTO and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            yield f"batch_size must be a positive whole number or auto (got {self.batch_size!r})."
        if self.gradient_accumulation < 1:
            yield f"gradient_accumulation must be at least 1 (got {self.gradient_accumulation})."
        if self.max_length < 16:
            yield f"max_length {self.max_length} is too short to hold a prompt and an answer: use 16 or more."
        if not 0 <= self.warmup_ratio < 1:
            yield f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})."
        for name in ("gradient_checkpointing", "liger_kernel"):
            if getattr(self, name) not in TRI_STATE:
                yield f"{name} must be auto, on or off (got {getattr(self, name)!r})."
        if self.stall_after_s < 0:
            yield f"stall_after_s must be 0 (auto) or a number of seconds (got {self.stall_after_s})."
        for name in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                yield f"{name} must be at least 1 (got {getattr(self, name)})."

    @property
    def phases(self) -> list[str]:
        return ["sft", "dpo"] if self.method == "sft_dpo" else [self.method]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from stored JSON; unknown keys are an error (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown config field(s) {', '.join(unknown)}: known fields are {', '.join(sorted(known))}."
            )
        return cls(**data)

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)


def config_help() -> dict[str, str]:
    """Field name → one-line help, for forms and docs."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainingConfig)}
