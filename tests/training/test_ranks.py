"""The ranks of one data-parallel job decide their settings once, together (two gloo processes on the CPU)."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.training

GIB = 1024**3
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_layers": 16,
    "vocab_size": 128256,
    "num_params": 1_235_814_400,
}


def _rank(rank: int, world: int, port: int, free_by_rank: list[int], out: str) -> None:
    """One rank, as ``runner.choose_settings`` runs it: its own GPU's free memory, then the shared decision."""
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    from training import autoconfig, ranks

    shape = autoconfig.ModelShape(**LLAMA_1B)
    free = ranks.smallest(free_by_rank[rank])
    choice = ranks.decide(lambda: autoconfig.choose(shape, method="sft", max_length=1024, free_bytes=free))
    try:  # a decision that fails on rank 0 fails on every rank, so none waits alone in a collective
        ranks.decide(lambda: autoconfig.choose(shape, method="sft", max_length=1024, free_bytes=GIB))
        error = None
    except ValueError as exc:
        error = str(exc)
    copied = ranks.main_first(lambda: (Path(out) / "copied").write_text("once"))
    seen = (Path(out) / "copied").read_text()  # written by rank 0 before any rank goes on
    everyone = ranks.gather({"rank": rank, "batch": choice.batch_size})
    (Path(out) / f"{rank}.json").write_text(
        json.dumps(
            {
                "free": free,
                "batch": choice.batch_size,
                "checkpointing": choice.gradient_checkpointing,
                "error": error,
                "copied_here": copied is not None,
                "seen": seen,
                "everyone": everyone,
            }
        )
    )
    dist.destroy_process_group()


def test_ranks_with_different_free_memory_train_with_the_settings_rank_0_chose_for_the_smallest(tmp_path):
    import torch.multiprocessing as mp

    from training.launch import free_port

    # Rank 0's GPU has 80 GiB free, rank 1's only 12 (another process holds the rest): deciding alone,
    # rank 0 would pick a micro-batch rank 1 cannot hold, and their gradients would be weighted differently.
    free_by_rank = [80 * GIB, 12 * GIB]
    mp.spawn(_rank, args=(2, free_port(), free_by_rank, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]

    from training import autoconfig

    alone = [
        autoconfig.choose(autoconfig.ModelShape(**LLAMA_1B), method="sft", max_length=1024, free_bytes=f)
        for f in free_by_rank
    ]
    assert alone[0].batch_size != alone[1].batch_size  # what each would have chosen on its own
    assert [r["free"] for r in results] == [12 * GIB, 12 * GIB]
    assert {(r["batch"], r["checkpointing"]) for r in results} == {
        (alone[1].batch_size, alone[1].gradient_checkpointing)
    }
    assert results[0]["error"] == results[1]["error"] and "for its weights alone" in results[0]["error"]
    assert [r["copied_here"] for r in results] == [True, False] and {r["seen"] for r in results} == {"once"}
    assert (
        results[0]["everyone"]
        == results[1]["everyone"]
        == [
            {"rank": 0, "batch": alone[1].batch_size},
            {"rank": 1, "batch": alone[1].batch_size},
        ]
    )
