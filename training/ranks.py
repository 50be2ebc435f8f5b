"""What the processes of one data-parallel job (``accelerate launch``, one per GPU) must agree on.

Each rank binds to its own GPU before measuring anything (``torch.cuda`` calls otherwise all land on
GPU 0); settings that shape the optimisation (the micro-batch above all: ranks with different ones
weight their gradients differently, or hang in a collective) are decided once, by rank 0, from the
smallest free memory of all ranks, and broadcast; files shared by the ranks are written by rank 0
only, the others waiting at a barrier. A single process (no process group) passes straight through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def start() -> None:
    """Bind this rank to its local GPU and join the job's process group (NCCL on GPUs, gloo on CPUs)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    if world_size() > 1 and _group() is None:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def device_name() -> str:
    import torch

    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def smallest(value: int | None) -> int | None:
    """The smallest of every rank's value (None stays None: no GPU anywhere)."""
    dist = _group()
    if dist is None or value is None:
        return value
    import torch

    tensor = torch.tensor([value], dtype=torch.int64, device=device_name())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def decide(choose: Callable[[], Any]) -> Any:
    """Run ``choose`` on rank 0 only and hand every rank its result (or its error, raised on every rank)."""
    dist = _group()
    if dist is None:
        return choose()
    outcome: list[Any] = [None]
    if is_main():
        try:
            outcome[0] = ("ok", choose())
        except Exception as exc:  # noqa: BLE001 — re-raised on every rank below, so none waits alone
            outcome[0] = ("error", exc)
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order (on every rank)."""
    dist = _group()
    if dist is None:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def main_first(work: Callable[[], Any]) -> Any:
    """Rank 0 does ``work`` (copying files, say) while the others wait; then all go on."""
    result = work() if is_main() else None
    dist = _group()
    if dist is not None:
        dist.barrier()
    return result
