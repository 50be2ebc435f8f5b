"""Goldset's training defaults against the plain QLoRA recipe, side by side in one process.

For a machine with an NVIDIA GPU. Builds a random-init model of a real shape (Llama 3.2 1B, and 3.1 8B
with --shapes 1b,8b) from its config: no download; speed does not depend on weight values. Then, on the
same synthetic data, runs
  (a) the plain recipe a user writes by hand: TRL SFTTrainer / DPOTrainer, 4-bit NF4 + double quant,
      LoRA r=16 on all linear layers, gradient checkpointing on, seq 1024, batch 8 (SFT) / 4 pairs (DPO);
  (b) a Goldset job with its default config (settings chosen by training.autoconfig from the model
      size and the GPU's free memory),
and prints tokens/s, peak GPU memory, the ratio b/a, the settings (b) chose, that the base layers
are 4-bit, and the loss of both at matched steps of an equal-batch run (same data, same order).

    python bench/train_gpu.py                    # 1B shape, SFT and DPO
    python bench/train_gpu.py --shapes 1b,8b     # also the 8B shape
    python bench/train_gpu.py --dry-run          # tiny shape on the CPU: checks the script, no figures
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    # Llama 3.2 1B and Llama 3.1 8B configs (public architecture numbers), random init.
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=512,
        tie_word_embeddings=False,
    ),
}
WORDS = [
    *("the", "order", "refund", "password", "account", "settings", "support"),
    *("please", "thank", "you", "open", "choose", "reset", "track"),
]


def build_model(shape: str, path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tinymodel import build_tokenizer

    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=131072,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    gc.collect()
    return path


def make_records(n: int, *, prompt_words: int, answer_words: int, seed: int = 0) -> list[dict]:
    """Synthetic SFT and DPO records whose rendered length is close to the sequence length."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    records = []
    for i in range(n):
        messages = [{"role": "user", "content": text(prompt_words)}]
        records.append(
            {
                "kind": "sft",
                "messages": messages,
                "completion": text(answer_words),
                "chosen": "",
                "rejected": "",
                "source_item_id": i,
            }
        )
        records.append(
            {
                "kind": "dpo",
                "messages": messages,
                "completion": "",
                "chosen": text(answer_words),
                "rejected": text(answer_words),
                "source_item_id": i,
            }
        )
    return records


def measure(rows: list[dict], warmup: int) -> float:
    """Mean tokens/s over the logged steps after the warm-up ones."""
    rates = [r["tokens_per_second"] for r in rows if r["step"] > warmup and r["tokens_per_second"]]
    return sum(rates) / len(rates) if rates else float("nan")


def plain_recipe(model_path: Path, records: list[dict], *, method: str, steps: int, seq: int, batch: int, out: Path):
    """What a user writes by hand from the TRL and PEFT docs (no Goldset code but the progress callback)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from training.callbacks import MemorySink, ProgressCallback
    from training.runner import count_4bit_layers, dpo_rows, sft_rows

    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=bnb, dtype=torch.bfloat16, device_map={"": 0} if on_gpu else {"": "cpu"}
    )
    four, linear = count_4bit_layers(model)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        logging_steps=1,
        gradient_checkpointing=True,
        max_length=seq,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        report_to="none",
        save_strategy="no",
        learning_rate=2e-4 if method == "sft" else 5e-6,
        seed=42,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    sink = MemorySink()
    callback = ProgressCallback(sink, phase=method)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    if method == "sft":
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=Dataset.from_list(sft_rows(records, sft_on_chosen=False)),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[callback],
        )
    else:
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=0.1),
            train_dataset=Dataset.from_list(dpo_rows(records)),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[callback],
        )
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if on_gpu else 0
    del trainer, model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return {
        "rows": sink.rows,
        "peak": peak,
        "four_bit": f"{four}/{linear}",
        "settings": {"batch_size": batch, "gradient_checkpointing": True, "liger_kernel": False, "padding_free": False},
    }


def goldset_job(model_path: Path, records: list[dict], *, method: str, steps: int, seq: int, out: Path, **overrides):
    """A Goldset job with its default config: the runner the gpu worker calls."""
    from training import runner
    from training.callbacks import MemorySink
    from training.config import TrainingConfig

    config = TrainingConfig(
        method=method,
        max_steps=steps,
        logging_steps=1,
        save_steps=10**6,
        max_length=seq,
        sft_on_chosen=False,
        **overrides,
    )
    sink = MemorySink()
    result = runner.run(base_model=str(model_path), config=config, records=records, output_dir=out, sink=sink)
    phase = result.metrics[method]
    return {
        "rows": sink.rows,
        "peak": phase.get("peak_gpu_bytes") or 0,
        "four_bit": f"{phase['base_linear_layers_4bit']}/{phase['base_linear_layers']}",
        "settings": phase["settings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1b", help="Comma-separated: 1b, 8b.")
    parser.add_argument("--methods", default="sft,dpo")
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=5, help="Steps left out of the tokens/s mean.")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dry-run", action="store_true", help="Tiny shape on the CPU, 4 steps: checks the script.")
    args = parser.parse_args()

    import torch

    if args.dry_run:
        shapes, args.steps, args.warmup, args.seq = ["tiny"], 4, 1, 128
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA GPU: this benchmark needs one (use --dry-run to check the script on a CPU).")
        shapes = args.shapes.split(",")
    gib = 2**30
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}")
    words = max(8, int(args.seq * 0.8))  # the tokenizer makes ~1 token per word here
    results = []
    with tempfile.TemporaryDirectory(prefix="goldset-bench-") as tmp:
        for shape in shapes:
            t0 = time.perf_counter()
            model_path = build_model(shape, Path(tmp) / shape)
            print(f"\n[{shape}] random-init model saved in {time.perf_counter() - t0:.0f}s")
            for method in args.methods.split(","):
                per = words if method == "sft" else words // 2
                records = make_records(64 * 16, prompt_words=words // 8, answer_words=per - words // 8)
                plain_batch = 8 if method == "sft" else 4
                if args.dry_run:
                    plain_batch = 2
                a = plain_recipe(
                    model_path,
                    records,
                    method=method,
                    steps=args.steps,
                    seq=args.seq,
                    batch=plain_batch,
                    out=Path(tmp) / f"{shape}-{method}-a",
                )
                b = goldset_job(
                    model_path,
                    records,
                    method=method,
                    steps=args.steps,
                    seq=args.seq,
                    out=Path(tmp) / f"{shape}-{method}-b",
                )
                ta, tb = measure(a["rows"], args.warmup), measure(b["rows"], args.warmup)
                # Same data, same order, same batch: Goldset's speed settings must not change the losses.
                c = goldset_job(
                    model_path,
                    records,
                    method=method,
                    steps=min(args.steps, 10),
                    seq=args.seq,
                    out=Path(tmp) / f"{shape}-{method}-c",
                    batch_size=plain_batch,
                    packing=False,
                )
                losses_a = [r["loss"] for r in a["rows"]][: len(c["rows"])]
                losses_c = [r["loss"] for r in c["rows"]]
                drift = max((abs(x - y) for x, y in zip(losses_a, losses_c, strict=False)), default=float("nan"))
                results.append(
                    {
                        "shape": shape,
                        "method": method,
                        "plain_tokens_s": ta,
                        "goldset_tokens_s": tb,
                        "ratio": tb / ta if ta else float("nan"),
                        "plain_peak_gib": a["peak"] / gib,
                        "goldset_peak_gib": b["peak"] / gib,
                        "goldset_settings": b["settings"],
                        "four_bit_plain": a["four_bit"],
                        "four_bit_goldset": b["four_bit"],
                        "loss_drift_equal_batch": drift,
                        "losses_plain": losses_a,
                        "losses_goldset": losses_c,
                    }
                )
                s = b["settings"]
                print(
                    f"[{shape} {method.upper()}] (a) plain:   {ta:>9,.0f} tokens/s  peak {a['peak'] / gib:5.1f} GiB  "
                    f"batch {plain_batch}, checkpointing on; 4-bit linear layers {a['four_bit']}"
                )
                print(
                    f"[{shape} {method.upper()}] (b) Goldset: {tb:>9,.0f} tokens/s  peak {b['peak'] / gib:5.1f} GiB  "
                    f"batch {s['batch_size']}, checkpointing {'on' if s['activation_checkpointing'] else 'off'}, "
                    f"liger {'on' if s['liger_kernel'] else 'off'}, "
                    f"padding-free {'on' if s['padding_free'] else 'off'}; "
                    f"4-bit linear layers {b['four_bit']}"
                )
                print(
                    f"[{shape} {method.upper()}] ratio b/a: {tb / ta if ta else float('nan'):.2f}x   "
                    f"largest loss difference over {len(losses_c)} equal-batch steps: {drift:.4f}"
                )
                for reason in s["reasons"]:
                    print(f"    - {reason}")
    print("\nsummary (json):")
    print(
        json.dumps(
            [
                {
                    k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v)
                    for k, v in r.items()
                    if not k.startswith("losses")
                }
                for r in results
            ],
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
