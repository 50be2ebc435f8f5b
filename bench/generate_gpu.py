"""Eval responses per second: a generation run end to end, for the Llama 3.2 1B shape on one GPU.

For a machine with an NVIDIA GPU. Builds a random-init model of the real shape from its config (nothing
is downloaded; speed does not depend on weight values, and random weights rarely stop early, so every
response runs to --max-new-tokens: a fixed, known amount of work). The eval set is made here: --prompts
support questions of 30-150 words, frozen into an eval set version as the app freezes one.

End to end is the app's path: ``generation_run_start`` (the web side writes the prompt file and queues
the run) and ``generation_run_task`` (the gpu worker's task: claim, load, batched generation, outputs
written batch by batch, finish), in this process (no broker). Reported per batch size: wall seconds from
the start to the finished row, responses/s end to end, and beside it, labelled, the worker's own figures
from its log: model load seconds, generation seconds, responses/s and new tokens/s while generating, and
peak GPU memory. Batch size 1 (no batching) runs on --unbatched-prompts prompts only, as the baseline.

    python bench/generate_gpu.py                         # 1B shape, 400 prompts, batch sizes 1, 32, 128
    python bench/generate_gpu.py --batch-sizes 64,256
    python bench/generate_gpu.py --dry-run               # tiny model on the CPU: checks the script end to end;
                                                         # its figures are not measurements
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The embedded setup (SQLite under a scratch directory): the figures are about the model and the batching.
for name in ("DATABASE_URL", "REDIS_URL", "GOLDSET_DB_ALIAS"):
    os.environ.pop(name, None)
os.environ["GOLDSET_VAR_DIR"] = tempfile.mkdtemp(prefix="goldset-generate-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DRY_RUN_NOTE = "[dry run: tiny model on the CPU, NOT a measurement]"
SHAPES = {
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=2048,
    ),
}
WORDS = [
    "order",
    "refund",
    "parcel",
    "courier",
    "invoice",
    "account",
    "password",
    "billing",
    "shipping",
    "return",
    "window",
    "days",
    "express",
    "tracking",
    "label",
    "receipt",
    "manager",
    "policy",
    "replacement",
    "damaged",
    "missing",
    "late",
    "address",
    "subscription",
    "cancel",
    "renew",
    "discount",
]
BATCH = re.compile(r"batch of (\d+): (\d+) new tokens in ([\d.]+) s")
LOADED = re.compile(r"model loaded on (\S+) in ([\d.]+) s")


def setup_django():
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def build_model(shape: str, path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tinymodel import build_tokenizer

    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        **SHAPES[shape],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model.save_pretrained(path)
    del model
    return path


def frozen_version(n: int, seed: int = 0):
    """An eval set version of ``n`` support questions, each with two agreeing human reviews."""
    from django.contrib.auth import get_user_model

    from annotate.models import Annotation, Item, ItemResult
    from annotate.services.projects import project_create, user_grant_role
    from evalsets.services import evalset_freeze

    User = get_user_model()
    admin = User.objects.create_user("bench-admin", password="x")
    user_grant_role(user=admin, role="admin")
    reviewers = [User.objects.create_user(f"bench-r{i}", password="x") for i in range(2)]
    project = project_create(name="Bench", slug="bench", task_kinds=["gold"], created_by=admin, eval_share=1)
    rng = random.Random(seed)
    payload = {"action": "write", "answer": "A careful answer.", "source_index": None, "reason": ""}
    for i in range(n):
        prompt = f"Ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 150))) + "?"
        item = Item.objects.create(project=project, kind="gold", prompt=prompt, split="eval", content_hash=f"{i:064d}")
        for reviewer in reviewers:
            Annotation.objects.create(item=item, reviewer=reviewer, kind="gold", payload=payload)
        ItemResult.objects.create(
            item=item,
            kind="gold",
            status="consensus",
            payload=payload,
            agreement=1.0,
            reviewer_ids=[r.pk for r in reviewers],
        )
    return evalset_freeze(project=project, user=admin, changelog="Bench.").version, admin


def one_run(version, admin, model_dir: Path, *, batch_size: int, max_new_tokens: int, limit: int | None) -> dict:
    import torch

    from evalsets.judging.generate import DecodingConfig
    from evalsets.judging.services import runs
    from evalsets.judging.tasks import generation_run_task

    if limit is not None:  # the unbatched baseline answers a slice of the prompts
        original = runs.eval_prompts
        runs.eval_prompts = lambda v: original(v)[:limit]
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        run = runs.generation_run_start(
            label=f"bench batch {batch_size}",
            decoding=DecodingConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
            created_by=admin,
            version=version,
            base_model=str(model_dir),
        )
        outcome = generation_run_task(run.pk, run.worker_secret)
        wall = time.perf_counter() - began
    finally:
        if limit is not None:
            runs.eval_prompts = original
    run.refresh_from_db()
    if outcome != "succeeded":
        raise SystemExit(f"run {run.pk} {outcome}: {run.message}\n{run.log_tail}")
    batches = [tuple(map(float, m)) for m in BATCH.findall(run.log_tail)]
    loaded = LOADED.search(run.log_tail)
    generating = sum(b[2] for b in batches)
    tokens = sum(b[1] for b in batches)
    return {
        "batch": batch_size,
        "prompts": run.output_count,
        "wall_s": wall,
        "e2e_rps": run.output_count / wall,
        "load_s": float(loaded.group(2)) if loaded else float("nan"),
        "device": loaded.group(1) if loaded else "?",
        "gen_s": generating,
        "gen_rps": run.output_count / generating if generating else float("nan"),
        "gen_tps": tokens / generating if generating else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
        "mean_new_tokens": tokens / max(run.output_count, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--unbatched-prompts", type=int, default=16, help="prompts of the batch-size-1 baseline")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, few prompts")
    args = parser.parse_args()
    import torch

    if args.dry_run:
        shape, args.prompts, args.max_new_tokens, args.unbatched_prompts = "tiny", 24, 16, 6
        args.batch_sizes = "1,8"
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "No CUDA GPU here: run on a GPU machine, or pass --dry-run to check the script on the CPU."
            )
        shape = "1b"
    setup_django()
    from django.conf import settings

    scratch = Path(os.environ["GOLDSET_VAR_DIR"])
    settings.ARTIFACTS_DIR = scratch / "artifacts"
    settings.TRAINING_CANCEL_POLL_S = 1
    version, admin = frozen_version(args.prompts)
    began = time.perf_counter()
    model_dir = build_model(shape, scratch / f"model-{shape}")
    print(
        f"{shape} shape built in {time.perf_counter() - began:.1f} s; {args.prompts} eval prompts of 30-150 words; "
        f"max {args.max_new_tokens} new tokens, greedy; torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", CPU")
    )
    if args.dry_run:
        print(DRY_RUN_NOTE)
    header = (
        f"{'batch':>5} {'prompts':>7} {'wall s':>7} {'e2e resp/s':>10} | {'load s':>6} {'gen s':>7} "
        f"{'gen resp/s':>10} {'gen tok/s':>10} {'tok/resp':>8} {'peak GiB':>8}"
    )
    print(header)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        limit = args.unbatched_prompts if batch == 1 else None
        r = one_run(version, admin, model_dir, batch_size=batch, max_new_tokens=args.max_new_tokens, limit=limit)
        rows.append(r)
        print(
            f"{r['batch']:>5} {r['prompts']:>7} {r['wall_s']:>7.1f} {r['e2e_rps']:>10.2f} | {r['load_s']:>6.1f} "
            f"{r['gen_s']:>7.1f} {r['gen_rps']:>10.2f} {r['gen_tps']:>10.0f} {r['mean_new_tokens']:>8.1f} "
            f"{r['peak_gib']:>8.2f}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["e2e_rps"])
    base = next((r for r in rows if r["batch"] == 1), None)
    line = f"best: batch {best['batch']}, {best['e2e_rps']:.1f} eval responses/s end to end"
    if base:
        line += f" ({best['gen_rps'] / base['gen_rps']:.1f}x the unbatched generation rate)"
    print(line + (f" {DRY_RUN_NOTE}" if args.dry_run else ""))


if __name__ == "__main__":
    main()
