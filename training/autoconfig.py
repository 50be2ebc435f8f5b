"""Choose the speed settings a person would otherwise hand-tune, from the model's shape and the GPU's free memory.

A pure function (no torch, no Django) so it is unit-tested on any machine. The memory model is
deliberately simple and was calibrated on an H200 with a random-init Llama-3.2-1B (QLoRA NF4, LoRA r=16
on all linear layers, seq 1024): checkpointing off + liger at micro-batch 8 peaked at 10.7 GiB and at 16
at 20.2 GiB, i.e. ~1.2 MiB of activations per token; without liger the fp32 logits add ~3 bytes per
vocabulary entry per token. Checkpointing keeps only each layer's input (2 bytes × hidden per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
# A micro-batch beyond this many tokens buys no more throughput on current GPUs, only memory.
MAX_TOKENS_PER_MICRO_BATCH = 16 * 1024
# Keep this share of the free memory for the allocator's fragmentation and the CUDA context.
MEMORY_HEADROOM = 0.85
FIXED_OVERHEAD = 1 * GIB
# Below this micro-batch, checkpointing with a bigger batch is faster than no checkpointing.
MIN_FAST_BATCH = 4


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a decoder-only transformer."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    num_params: int

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @classmethod
    def from_config(cls, config, num_params: int | None = None) -> ModelShape:
        """From a transformers model config (duck-typed: any object with the usual attribute names)."""
        h = config.hidden_size
        inter = getattr(config, "intermediate_size", None) or 4 * h
        layers = config.num_hidden_layers
        vocab = config.vocab_size
        if num_params is None:
            heads = config.num_attention_heads
            kv = getattr(config, "num_key_value_heads", None) or heads
            head_dim = getattr(config, "head_dim", None) or h // heads
            attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
            mlp = 3 * h * inter
            tied = getattr(config, "tie_word_embeddings", False)
            num_params = layers * (attn + mlp) + vocab * h * (1 if tied else 2)
        return cls(h, inter, layers, vocab, num_params)


@dataclass(frozen=True)
class AutoChoice:
    """The settings chosen, and why, in words for the job page."""

    batch_size: int
    gradient_checkpointing: bool
    liger_kernel: bool
    padding_free: bool
    estimated_peak_bytes: int
    reasons: list[str] = field(default_factory=list)


def weight_bytes(shape: ModelShape, *, load_in_4bit: bool, lora_r: int) -> int:
    """Base weights (4-bit linear layers, bf16 embeddings) plus LoRA weights, gradients and Adam state."""
    body = shape.num_params - shape.embedding_params
    base = body * 0.5625 + shape.embedding_params * 2 if load_in_4bit else shape.num_params * 2
    per_layer_lora = lora_r * (4 * 2 * shape.hidden_size + 3 * (shape.hidden_size + shape.intermediate_size))
    lora = shape.num_layers * per_layer_lora * (4 + 4 + 8)  # fp32 weights, grads, two Adam moments
    return int(base + lora)


def activation_bytes_per_token(shape: ModelShape, *, checkpointing: bool, liger: bool) -> int:
    """Activations kept for the backward pass, per token of a micro-batch."""
    per_layer = 2 * (10 * shape.hidden_size + 2.5 * shape.intermediate_size)
    layers = 2 * shape.hidden_size * shape.num_layers + per_layer if checkpointing else per_layer * shape.num_layers
    logits = 0 if liger else 3 * shape.vocab_size
    return int(layers + logits)


def choose(
    shape: ModelShape,
    *,
    method: str,
    max_length: int,
    free_bytes: int | None,
    load_in_4bit: bool = True,
    lora_r: int = 16,
    packing: bool = True,
    liger_available: bool = False,
    varlen_attention: bool = False,
    batch_size: int | str = "auto",
    gradient_checkpointing: str = "auto",
    liger_kernel: str = "auto",
) -> AutoChoice:
    """Pick micro-batch, checkpointing, fused kernels and padding-free batches for one training phase.

    ``free_bytes`` is the GPU's free memory, or None on a CPU (then the choice is the safe small one).
    ``method`` is the phase, sft or dpo: a DPO micro-batch of n pairs holds 2n sequences.
    ``varlen_attention``: a variable-length attention kernel (flash-attn) is installed, so packed rows
    cost no more than their tokens; without it SDPA would need a dense block mask per row, so on a
    GPU packing is left off and rows are padded instead.
    Explicit settings (anything but "auto") are kept as given.
    """
    reasons: list[str] = []
    seqs_per_example = 2 if method == "dpo" else 1
    padding_free = method == "sft" and packing and (varlen_attention or free_bytes is None)
    if padding_free:
        reasons.append("SFT examples are packed into full rows without padding (each keeps its own attention).")
    elif method == "sft" and packing:
        reasons.append("Packing is off: install flash-attn for padding-free packed batches (variable-length kernel).")
    use_liger = liger_kernel == "on" or (liger_kernel == "auto" and liger_available and free_bytes is not None)
    if use_liger:
        reasons.append("liger-kernel fuses RMSNorm, SwiGLU, RoPE and the loss (no full fp32 logits).")
    elif liger_kernel == "auto" and free_bytes is not None:
        reasons.append("liger-kernel is not installed: pip install liger-kernel for ~30% more tokens/s.")

    fixed = weight_bytes(shape, load_in_4bit=load_in_4bit, lora_r=lora_r) + FIXED_OVERHEAD

    def peak(batch: int, ckpt: bool) -> int:
        tokens = batch * seqs_per_example * max_length
        return fixed + tokens * activation_bytes_per_token(shape, checkpointing=ckpt, liger=use_liger)

    if free_bytes is None:
        batch = batch_size if batch_size != "auto" else 4
        ckpt = gradient_checkpointing == "on"
        reasons.append("No GPU: small micro-batch, checkpointing only when asked for.")
        return AutoChoice(int(batch), ckpt, use_liger, padding_free, peak(int(batch), ckpt), reasons)

    budget = int(free_bytes * MEMORY_HEADROOM)
    if fixed > budget:
        raise ValueError(
            f"The model needs about {fixed / GIB:.1f} GiB for its weights alone but the GPU has "
            f"{free_bytes / GIB:.1f} GiB free: use a GPU with more memory, load_in_4bit, or a smaller model."
        )
    cap = max(1, MAX_TOKENS_PER_MICRO_BATCH // (seqs_per_example * max_length))
    candidates = [batch_size] if batch_size != "auto" else [b for b in (32, 16, 8, 4, 2, 1) if b <= cap]
    ckpt_options = {"on": [True], "off": [False], "auto": [False, True]}[gradient_checkpointing]

    for ckpt in ckpt_options:
        for batch in candidates:
            if peak(batch, ckpt) > budget:
                continue
            if ckpt is False and gradient_checkpointing == "auto" and batch < min(MIN_FAST_BATCH, cap):
                # Too little room without checkpointing: a bigger batch with it is faster.
                break
            if ckpt:
                reasons.append("Checkpointing on: without it the activations of a useful micro-batch do not fit.")
            else:
                reasons.append("Checkpointing off: the activations fit in memory, so nothing is recomputed.")
            reasons.append(
                f"Micro-batch {batch} ({'pairs' if seqs_per_example == 2 else 'sequences'} of up to {max_length} "
                f"tokens), estimated peak {peak(batch, ckpt) / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free."
            )
            return AutoChoice(int(batch), ckpt, use_liger, padding_free, peak(batch, ckpt), reasons)
    smallest = peak(1, True)
    raise ValueError(
        f"Even one {'pair' if seqs_per_example == 2 else 'sequence'} of {max_length} tokens with checkpointing needs "
        f"about {smallest / GIB:.1f} GiB but the GPU has {free_bytes / GIB:.1f} GiB free: lower max_length "
        f"or use a GPU with more memory."
    )
