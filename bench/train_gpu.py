"""QLoRA SFT and DPO speed on one GPU: TRL's default recipe, a hand-tuned one and Goldset's defaults, in one process.

For a machine with an NVIDIA GPU. Builds a random-init model of a real shape (Llama 3.2 1B; 3.1 8B with
--shapes 1b,8b) from its config: nothing is downloaded, and speed does not depend on weight values.

Data (the same records for every arm): synthetic chat examples with a long-tailed length distribution,
as real SFT data has: each example's length in tokens is drawn from a log-normal with a median of
--median tokens (300), cut to --seq (1024); a short system turn, a user turn taking 20-60% of it, the
answer the rest. DPO pairs share the prompt; the rejected answer is 0.5-1.2x the chosen one. Lengths are
set in tokens of the tokenizer used, and the achieved distribution is printed.

Arms, each on a freshly loaded 4-bit NF4 (double quant) base with LoRA r=16 on every linear layer:
  (a) TRL default: SFTTrainer / DPOTrainer as the docs show them: gradient checkpointing on, padded
      batches of 8 sequences (SFT) or 4 pairs (DPO), LoRA weights cast to bf16 by TRL;
  (b) hand-tuned: the same with checkpointing off, liger-kernel's fused kernels (when installed) and the
      largest micro-batch that fits (found by probing the longest examples);
  (c) Goldset: a job's default config, trained by the runner's own trainer (settings from
      training.autoconfig, fp32 adapter weights, NaN guard, fitted examples).
Reported per arm: tokens/s (real tokens: padding excluded) over the steps after --warmup, peak GPU memory,
and MFU (TRL's compute_flops_per_token at the mean example length, x4/3 for DPO's reference forward, over
the GPU's bf16 dense peak from trl's table); then the ratios c/a, c/b and b/a against the targets.

Loss equivalence: Goldset's trainer against plain TRL with the schedule (constant lr, no warmup), the
optimizer (fused AdamW), the data order, the micro-batch and the packing aligned, over --check-steps
steps, on the padded path and on the packed (padding-free) path; every step's loss must agree within
LOSS_TOLERANCE, or the script exits with status 1.

    python bench/train_gpu.py                    # 1B shape, SFT and DPO
    python bench/train_gpu.py --shapes 1b,8b     # also the 8B shape
    python bench/train_gpu.py --dry-run          # tiny model on the CPU: checks the script; its figures are not
                                                 # measurements
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Largest per-step difference allowed between Goldset's losses and plain TRL's with everything aligned: bf16
# matmuls, bf16 (TRL) against fp32 (Goldset) adapter weights and liger's fused loss may differ by this much.
LOSS_TOLERANCE = 0.02
# Aims on an H200 with the Llama-3.2-1B shape.
TARGETS = {"sft": ("hand-tuned", 1.2), "dpo": ("TRL default", 2.0)}
DRY_RUN_NOTE = "[dry run: tiny model on the CPU, NOT a measurement]"

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
    *("the", "order", "refund", "password", "account", "settings", "support", "billing", "invoice", "delivery"),
    *("please", "thank", "you", "open", "choose", "reset", "track", "within", "thirty", "days", "receipt"),
]
GIB = 2**30


def say(line: str, dry_run: bool) -> None:
    print(f"{line}  {DRY_RUN_NOTE}" if dry_run else line, flush=True)


# --- model and data ------------------------------------------------------------------------------


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


class TextMaker:
    """Texts of a given length in tokens of this tokenizer (words cost 1-4 tokens each, so they are counted)."""

    def __init__(self, tokenizer, rng: random.Random):
        self.rng = rng
        self.cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}

    def text(self, tokens: int) -> str:
        words, total = [], 0
        while total < max(1, tokens):
            word = self.rng.choice(WORDS)
            words.append(word)
            total += self.cost[word]
        return " ".join(words)


def make_records(tokenizer, n: int, *, median: int, max_length: int, seed: int = 0) -> list[dict]:
    """n SFT examples and n DPO pairs whose rendered lengths follow a long-tailed distribution up to max_length."""
    rng = random.Random(seed)
    maker = TextMaker(tokenizer, rng)
    overhead = 12  # role markers and end-of-turn tokens of a system + user + assistant conversation
    records = []
    for i in range(n):
        total = min(max_length, max(48, int(rng.lognormvariate(math.log(median), 0.75))))
        body = total - overhead
        system = rng.randint(6, 24)
        user = int((body - system) * rng.uniform(0.2, 0.6))
        answer = max(4, body - system - user)
        messages = [
            {"role": "system", "content": maker.text(system)},
            {"role": "user", "content": maker.text(user)},
        ]
        base = {"messages": messages, "completion": "", "chosen": "", "rejected": "", "source_item_id": i}
        records.append({**base, "kind": "sft", "completion": maker.text(answer)})
        rejected = max(4, min(answer, int(answer * rng.uniform(0.5, 1.2))))
        records.append({**base, "kind": "dpo", "chosen": maker.text(answer), "rejected": maker.text(rejected)})
    return records


def describe(lengths: list[int], max_length: int) -> str:
    ordered = sorted(lengths)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    at_max = sum(1 for x in lengths if x >= max_length) / len(lengths)
    return (
        f"median {statistics.median(lengths):.0f} tokens, mean {statistics.mean(lengths):.0f}, p90 {p90}, "
        f"max {max(lengths)} of {max_length} allowed, {at_max:.1%} at the limit"
    )


# --- measuring -----------------------------------------------------------------------------------


def meter_callback(warmup: int):
    import torch
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        """Real tokens and wall time over the steps after the warm-up ones, the GPU synchronised at both ends."""

        def __init__(self):
            self.losses: dict[int, float] = {}
            self.start = self.end = None

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            mark = (time.perf_counter(), state.num_input_tokens_seen or 0)
            if state.global_step == warmup:
                self.start = mark
            elif state.global_step > warmup:
                self.end = mark

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

        @property
        def tokens_per_s(self) -> float:
            if self.start is None or self.end is None:
                return float("nan")
            return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])

    return Meter()


def flops_per_token(model_path: Path, mean_length: float, method: str) -> float:
    from transformers import AutoConfig
    from trl.trainer.utils import compute_flops_per_token

    per_token = compute_flops_per_token(AutoConfig.from_pretrained(model_path), int(mean_length))
    # DPO also runs the reference forward (one third of a training step's FLOPs) on every sequence.
    return per_token * 4 / 3 if method == "dpo" else per_token


def peak_flops() -> float | None:
    import torch
    from trl.trainer.utils import get_peak_flops

    return get_peak_flops(torch.cuda.get_device_name(0), "bfloat16") if torch.cuda.is_available() else None


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- the arms ------------------------------------------------------------------------------------


def plain_trainer(
    model_path, tokenizer, rows, *, method, batch, steps, seq, out, checkpointing, liger, packing, aligned
):
    """TRL's trainer as a user writes it from the TRL and PEFT docs (no Goldset code at all)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=bnb, dtype=torch.bfloat16, device_map={"": 0} if on_gpu else {"": "cpu"}
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        logging_steps=1,
        gradient_checkpointing=checkpointing,
        max_length=seq,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        report_to="none",
        save_strategy="no",
        learning_rate=2e-4 if method == "sft" else 5e-6,
        seed=42,
        data_seed=42,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_liger_kernel=liger,
    )
    if aligned:  # the loss check: the same schedule and optimizer as the Goldset side
        common.update(lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", learning_rate=1e-3)
    dataset = Dataset.from_list(rows)
    if method == "sft":
        args = SFTConfig(**common, packing=packing, padding_free=packing)
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    args = DPOConfig(**common, beta=0.1)
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def goldset_trainer(model_path, tokenizer, rows, *, method, steps, seq, out, **overrides):
    """The trainer a Goldset job trains with: the runner's own phase functions and a job's default config."""
    from training import runner
    from training.callbacks import MemorySink, ProgressCallback
    from training.config import TrainingConfig

    config = TrainingConfig(
        method=method, max_steps=steps, logging_steps=1, save_steps=10**6, max_length=seq, **overrides
    )
    model = runner.load_model(str(model_path), config)
    model, peft_config = runner.attach_adapter(model, None, config)
    choice = runner.choose_settings(model, config, phase=method)
    trainer = runner.build_trainer(
        phase=method,
        model=model,
        tokenizer=tokenizer,
        config=config,
        rows=rows,
        output_dir=out,
        choice=choice,
        callback=ProgressCallback(MemorySink(), phase=method),
        peft_config=peft_config,
    )
    settings = {
        "batch_size": choice.batch_size,
        "checkpointing": choice.gradient_checkpointing,
        "liger": choice.liger_kernel,
        "padding_free": choice.padding_free,
    }
    return trainer, settings, choice.reasons


def train_arm(trainer, *, warmup: int) -> dict:
    import torch

    meter = meter_callback(warmup)
    trainer.add_callback(meter)
    free_memory()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    result = {"tokens_per_s": meter.tokens_per_s, "peak_bytes": peak, "losses": meter.losses, "wall_s": wall}
    del trainer
    free_memory()
    return result


def largest_batch(model_path, tokenizer, rows, *, method, seq, out, candidates, liger) -> int:
    """The largest micro-batch whose first steps on the longest examples fit in memory (checkpointing off)."""
    import torch

    longest = sorted(rows, key=lambda r: len(json.dumps(r)), reverse=True)
    for batch in candidates:
        trainer = None
        try:
            trainer = plain_trainer(
                model_path,
                tokenizer,
                longest[: batch * 2],
                method=method,
                batch=batch,
                steps=2,
                seq=seq,
                out=out,
                checkpointing=False,
                liger=liger,
                packing=False,
                aligned=False,
            )
            trainer.train()
            return batch
        except torch.OutOfMemoryError:
            print(f"    hand-tuned {method.upper()}: micro-batch {batch} does not fit, trying {batch // 2}", flush=True)
        finally:
            del trainer
            free_memory()
    return 1


# --- main ----------------------------------------------------------------------------------------


def arm_line(key: str, name: str, arm: dict, *, how: str, fpt: float, peak: float | None, steps: int) -> tuple:
    mfu = arm["tokens_per_s"] * fpt / peak if peak and math.isfinite(arm["tokens_per_s"]) else None
    line = (
        f"({key}) {name:<12} {arm['tokens_per_s']:>10,.0f} tokens/s  peak {arm['peak_bytes'] / GIB:5.1f} GiB  "
        f"MFU {f'{mfu:.1%}' if mfu is not None else '—':>6}  ({how}; {arm['wall_s']:.1f}s for {steps} steps)"
    )
    return line, {"arm": name, "tokens_per_s": arm["tokens_per_s"], "peak_gib": arm["peak_bytes"] / GIB, "mfu": mfu}


def bench_method(model_path, tokenizer, rows, *, shape, method, args, fpt, peak, out) -> dict:
    """The three arms on one method's rows: figures printed, and returned for the summary."""
    from training import runner

    dry = args.dry_run
    plain_batch = 2 if dry else (8 if method == "sft" else 4)
    speed = {"method": method, "steps": args.steps, "seq": args.seq}
    a = train_arm(
        plain_trainer(
            model_path,
            tokenizer,
            rows,
            **speed,
            batch=plain_batch,
            out=out / "a",
            checkpointing=True,
            liger=False,
            packing=False,
            aligned=False,
        ),
        warmup=args.warmup,
    )
    liger = runner.liger_available()
    candidates = [32, 16, 8, 4, 2, 1] if method == "sft" else [16, 8, 4, 2, 1]
    hand_batch = (
        4
        if dry
        else largest_batch(
            model_path,
            tokenizer,
            rows,
            method=method,
            seq=args.seq,
            out=out / "probe",
            candidates=candidates,
            liger=liger,
        )
    )
    b = train_arm(
        plain_trainer(
            model_path,
            tokenizer,
            rows,
            **speed,
            batch=hand_batch,
            out=out / "b",
            checkpointing=False,
            liger=liger,
            packing=False,
            aligned=False,
        ),
        warmup=args.warmup,
    )
    trainer, chosen, reasons = goldset_trainer(model_path, tokenizer, rows, **speed, out=out / "c")
    c = train_arm(trainer, warmup=args.warmup)

    goldset_how = (
        f"batch {chosen['batch_size']}, checkpointing {'on' if chosen['checkpointing'] else 'off'}, "
        f"liger {'on' if chosen['liger'] else 'off'}, {'padding-free packed' if chosen['padding_free'] else 'padded'}, "
        f"fp32 LoRA weights"
    )
    arms = {
        "a": ("TRL default", a, f"batch {plain_batch}, checkpointing on, padded, bf16 LoRA weights"),
        "b": ("hand-tuned", b, f"batch {hand_batch}, checkpointing off, liger {'on' if liger else 'absent'}, padded"),
        "c": ("Goldset", c, goldset_how),
    }
    entry = {"shape": shape, "method": method, "dry_run": dry, "plain_batch": plain_batch, "hand_batch": hand_batch}
    for key, (name, arm, how) in arms.items():
        line, entry[key] = arm_line(key, name, arm, how=how, fpt=fpt, peak=peak, steps=args.steps)
        entry[key]["settings"] = how
        say(f"[{shape} {method.upper()}] {line}", dry)
    for reason in reasons:
        print(f"    Goldset: {reason}")
    ratios = {
        "c/a": c["tokens_per_s"] / a["tokens_per_s"],
        "c/b": c["tokens_per_s"] / b["tokens_per_s"],
        "b/a": b["tokens_per_s"] / a["tokens_per_s"],
    }
    against, aim = TARGETS[method]
    got = ratios["c/b"] if against == "hand-tuned" else ratios["c/a"]
    entry["ratios"], entry["aim"] = ratios, {"against": against, "at_least": aim, "met": None if dry else got >= aim}
    say(
        f"[{shape} {method.upper()}] Goldset/TRL default {ratios['c/a']:.2f}x, "
        f"Goldset/hand-tuned {ratios['c/b']:.2f}x, hand-tuned/TRL default {ratios['b/a']:.2f}x; "
        f"aim (1B shape, H200): >= {aim}x the {against} recipe: "
        + ("not judged on a dry run" if dry else "met" if got >= aim else "NOT met"),
        dry,
    )
    return entry


def data_line(tokenizer, records, *, method: str, seq: int):
    """The method's rows (fitted as a job fits them) and a line describing their lengths."""
    from training import examples, runner
    from training.config import TrainingConfig

    t0 = time.perf_counter()
    config = TrainingConfig(method=method, max_length=seq, sft_on_chosen=False)
    rows, fit = runner.phase_rows(tokenizer, records, config, phase=method, sink=_Quiet())
    lengths = [examples.render(tokenizer, r["prompt"], [a[0]["content"] for a in _answers(r)]).longest for r in rows]
    line = (
        f"data: {describe(lengths, seq)}; fitted in {time.perf_counter() - t0:.1f}s "
        f"({fit.prompt_truncated} prompts cut, {fit.left_out} left out)"
    )
    return rows, lengths, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1b", help="Comma-separated: 1b, 8b.")
    parser.add_argument("--methods", default="sft,dpo")
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per speed run.")
    parser.add_argument("--warmup", type=int, default=8, help="Steps left out of the tokens/s figure.")
    parser.add_argument("--check-steps", type=int, default=10, help="Steps compared by the loss check.")
    parser.add_argument("--seq", type=int, default=1024, help="max_length: the longest example, in tokens.")
    parser.add_argument("--median", type=int, default=300, help="Median example length, in tokens.")
    parser.add_argument("--examples", type=int, default=4096, help="SFT examples (and as many DPO pairs).")
    parser.add_argument("--dry-run", action="store_true", help="Tiny model on the CPU: checks the script, no figures.")
    args = parser.parse_args()

    import torch

    from training import runner
    from training.provenance import library_versions

    if args.dry_run:
        shapes = ["tiny"]
        args.steps, args.warmup, args.check_steps, args.seq, args.median, args.examples = 6, 2, 4, 128, 48, 64
        print(
            "DRY RUN: a tiny model on the CPU runs every arm and check end to end. The figures below check that "
            "the script works; they are NOT measurements and say nothing about GPU speed.\n"
        )
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA GPU: this benchmark needs one (use --dry-run to check the script on a CPU).")
        shapes = args.shapes.split(",")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_flops()
    print(f"device: {device}; bf16 dense peak {peak / 1e12:.0f} TFLOP/s" if peak else f"device: {device}")
    print("libraries: " + ", ".join(f"{k} {v}" for k, v in library_versions().items() if v))
    results, checks = [], []
    with tempfile.TemporaryDirectory(prefix="goldset-bench-") as tmp:
        for shape in shapes:
            t0 = time.perf_counter()
            model_path = build_model(shape, Path(tmp) / shape)
            tokenizer = runner.load_tokenizer(str(model_path))
            print(f"\n[{shape}] random-init model saved in {time.perf_counter() - t0:.1f}s")
            t0 = time.perf_counter()
            records = make_records(tokenizer, args.examples, median=args.median, max_length=args.seq)
            made = time.perf_counter() - t0
            print(f"[{shape}] {args.examples} SFT examples and {args.examples} DPO pairs made in {made:.1f}s")
            for method in args.methods.split(","):
                rows, lengths, line = data_line(tokenizer, records, method=method, seq=args.seq)
                print(f"[{shape} {method.upper()}] {line}")
                fpt = flops_per_token(model_path, statistics.mean(lengths), method)
                out = Path(tmp) / f"{shape}-{method}"
                entry = bench_method(
                    model_path, tokenizer, rows, shape=shape, method=method, args=args, fpt=fpt, peak=peak, out=out
                )
                entry["device"] = device
                results.append(entry)
                for packed in (False, True) if method == "sft" else (False,):
                    check = loss_check(
                        model_path,
                        tokenizer,
                        rows,
                        method=method,
                        packed=packed,
                        steps=args.check_steps,
                        seq=args.seq,
                        batch=entry["plain_batch"],
                        out=out / f"check-{packed}",
                    )
                    check["shape"] = shape
                    checks.append(check)
                    note = f": {check['note']}" if check["note"] else ""
                    print(
                        f"[{shape} {method.upper()}] loss check, {check['path']} path: {check['verdict']} (largest "
                        f"difference {check['max_diff']:.4g} over {check['steps']} steps, tolerance {LOSS_TOLERANCE})"
                        f"{note}"
                    )
    summary = {"dry_run": args.dry_run, "figures_are_measurements": not args.dry_run, "results": results}
    print("\nsummary (json):")
    print(json.dumps(_finite({**summary, "loss_checks": checks}), indent=1))
    return 1 if any(c["verdict"] == "FAIL" for c in checks) else 0


def loss_check(model_path, tokenizer, rows, *, method, packed, steps, seq, batch, out) -> dict:
    """Goldset's trainer against plain TRL with schedule, optimizer, data order, batch and packing aligned."""
    path = "packed (padding-free)" if packed else "padded"
    trainer, settings, _ = goldset_trainer(
        model_path,
        tokenizer,
        rows,
        method=method,
        steps=steps,
        seq=seq,
        out=out / "goldset",
        batch_size=batch,
        packing=packed,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        optimizer="adamw_torch_fused",
        learning_rate=1e-3,
        dpo_learning_rate=1e-3,
    )
    if packed and not settings["padding_free"]:
        del trainer
        free_memory()
        return {
            "path": path,
            "method": method,
            "verdict": "SKIPPED",
            "max_diff": float("nan"),
            "steps": 0,
            "note": "no variable-length attention kernel here (install flash-attn), so Goldset does not pack",
        }
    goldset = train_arm(trainer, warmup=0)["losses"]
    plain = train_arm(
        plain_trainer(
            model_path,
            tokenizer,
            rows,
            method=method,
            batch=batch,
            steps=steps,
            seq=seq,
            out=out / "plain",
            checkpointing=True,
            liger=False,
            packing=packed,
            aligned=True,
        ),
        warmup=0,
    )["losses"]
    common = sorted(set(goldset) & set(plain))
    diffs = [abs(goldset[s] - plain[s]) for s in common]
    worst = max(diffs) if diffs else float("nan")
    verdict = "PASS" if diffs and len(common) == steps and worst <= LOSS_TOLERANCE else "FAIL"
    return {
        "path": path,
        "method": method,
        "verdict": verdict,
        "max_diff": worst,
        "steps": len(common),
        "goldset": [goldset[s] for s in common],
        "plain": [plain[s] for s in common],
        "note": "",
    }


class _Quiet:
    def log(self, line: str) -> None:
        pass


def _answers(row: dict) -> list:
    return [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]]


def _finite(value):
    """JSON without NaN: a figure that could not be taken is null."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
