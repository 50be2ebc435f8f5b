"""A trainer callback that reports progress through a small sink, so the runner needs no Django.

The Celery task gives a sink that writes to the job row and the progress table; tests and the
benchmark give in-memory ones.
"""

from __future__ import annotations

import time
from typing import Protocol

from transformers import TrainerCallback


class ProgressSink(Protocol):
    def progress(self, row: dict) -> None:
        """Record one progress row: phase, step, total_steps, epoch, loss, learning_rate, grad_norm, ..."""

    def should_stop(self) -> bool:
        """True once someone asked the job to stop (checked after every optimizer step)."""

    def heartbeat(self) -> None:
        """Prove the worker is alive."""

    def log(self, line: str) -> None:
        """Append a line to the job's log."""


class MemorySink:
    """Keeps everything in lists; stops after ``stop_after_step`` when given."""

    def __init__(self, stop_after_step: int | None = None):
        self.rows: list[dict] = []
        self.lines: list[str] = []
        self.beats = 0
        self.stop_after_step = stop_after_step
        self.last_step = 0

    def progress(self, row: dict) -> None:
        self.rows.append(row)

    def should_stop(self) -> bool:
        return self.stop_after_step is not None and self.last_step >= self.stop_after_step

    def heartbeat(self) -> None:
        self.beats += 1

    def log(self, line: str) -> None:
        self.lines.append(line)

    def checkpoint(self, path: str) -> None:
        self.lines.append(f"checkpoint {path}")


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value  # a non-finite loss is kept as is: the runner fails the job on it


class ProgressCallback(TrainerCallback):
    """Writes step, loss, lr, grad norm, tokens/s (and DPO rewards) at every log; stops when asked."""

    def __init__(self, sink: ProgressSink, *, phase: str):
        self.sink = sink
        self.phase = phase
        self._t0 = time.perf_counter()
        self._tokens0 = 0
        self.stopped_by_request = False
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen or 0
        self.sink.log(f"[{self.phase}] training starts: {state.max_steps} steps")
        self.sink.heartbeat()

    def on_step_end(self, args, state, control, **kwargs):
        self.sink.heartbeat()
        if hasattr(self.sink, "last_step"):
            self.sink.last_step = state.global_step
        if self.sink.should_stop():
            self.stopped_by_request = True
            control.should_training_stop = True
            # Keep what was learnt so far: a cancelled job can be resumed from this checkpoint.
            control.should_save = True
            self.sink.log(f"[{self.phase}] stop requested: saving a checkpoint at step {state.global_step}")
        return control

    def on_save(self, args, state, control, **kwargs):
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        checkpoint = getattr(self.sink, "checkpoint", None)
        if checkpoint is not None:
            checkpoint(path)
        self.sink.log(f"[{self.phase}] checkpoint saved at step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            # The final call carries train_loss / train_runtime only.
            if "train_loss" in logs:
                self.sink.log(
                    f"[{self.phase}] done: mean loss {logs['train_loss']:.4f} in {logs.get('train_runtime', 0):.1f}s"
                )
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen or 0
        elapsed = now - self._t0
        tokens_per_s = (tokens - self._tokens0) / elapsed if elapsed > 0 and tokens else None
        self._t0, self._tokens0 = now, tokens
        self.last_loss = _number(logs.get("loss"))
        row = {
            "phase": self.phase,
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": _number(state.epoch),
            "loss": self.last_loss,
            "learning_rate": _number(logs.get("learning_rate")),
            "grad_norm": _number(logs.get("grad_norm")),
            "tokens_per_second": tokens_per_s,
            "reward_margin": _number(logs.get("rewards/margins")),
            "reward_accuracy": _number(logs.get("rewards/accuracies")),
        }
        self.sink.progress(row)
        parts = [f"step {row['step']}/{row['total_steps']}", f"loss {row['loss']:.4f}"]
        if row["learning_rate"] is not None:
            parts.append(f"lr {row['learning_rate']:.2e}")
        if row["reward_margin"] is not None:
            parts.append(f"margin {row['reward_margin']:.4f}")
        self.sink.log(f"[{self.phase}] " + ", ".join(parts))
