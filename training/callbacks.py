"""A trainer callback that reports progress through a small sink, so the runner needs no Django.

The Celery task gives a sink that writes to the job row and the progress table; tests and the
benchmark give in-memory ones. The callback also guards the run: a non-finite gradient stops it before
the optimizer applies that step, so every checkpoint on disk holds finite weights.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch
from transformers import TrainerCallback


class ProgressSink(Protocol):
    def progress(self, row: dict) -> None:
        """Record one progress row: phase, step, total_steps, epoch, loss, learning_rate, grad_norm, ..."""

    def should_stop(self) -> bool:
        """True once someone asked the job to stop (checked after every optimizer step)."""

    def heartbeat(self) -> None:
        """Prove the worker is alive."""

    def advanced(self, *, phase: str, step: int, total_steps: int, seconds: float | None) -> None:
        """A training step finished in ``seconds`` (checkpoint saving left out); None: a phase's loop starts."""

    def idle(self) -> None:
        """No step is due for a while (loading a model, saving the adapter): nothing can stall now."""

    def log(self, line: str) -> None:
        """Append a line to the job's log."""

    def checkpoint(self, path: str) -> None:
        """A resumable checkpoint was saved at ``path``."""


class MemorySink:
    """Keeps everything in lists; stops after ``stop_after_step`` when given."""

    def __init__(self, stop_after_step: int | None = None):
        self.rows: list[dict] = []
        self.lines: list[str] = []
        self.steps: list[tuple[str, int, float | None]] = []
        self.checkpoints: list[str] = []
        self.beats = 0
        self.stop_after_step = stop_after_step
        self.last_step = 0

    def progress(self, row: dict) -> None:
        self.rows.append(row)

    def should_stop(self) -> bool:
        return self.stop_after_step is not None and self.last_step >= self.stop_after_step

    def heartbeat(self) -> None:
        self.beats += 1

    def advanced(self, *, phase: str, step: int, total_steps: int, seconds: float | None) -> None:
        self.last_step = step
        self.steps.append((phase, step, seconds))

    def idle(self) -> None:
        pass

    def log(self, line: str) -> None:
        self.lines.append(line)

    def checkpoint(self, path: str) -> None:
        self.checkpoints.append(path)
        self.lines.append(f"checkpoint {path}")


class NonFiniteError(Exception):
    """Training produced a NaN or an infinity; raised before the optimizer applies it."""

    def __init__(self, *, phase: str, step: int, what: str, value: float, learning_rate: float | None):
        self.phase, self.step, self.what, self.value, self.learning_rate = phase, step, what, value, learning_rate
        super().__init__(f"{phase.upper()} {what} became {value} at step {step}")


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class ProgressCallback(TrainerCallback):
    """Writes step, loss, lr, grad norm, tokens/s (and DPO rewards) at every log; stops when asked or on NaN/inf.

    Runs on every rank of a data-parallel job (rank 0's sink is the one that writes): the gradients it
    checks are already averaged across ranks, so every rank stops at the same step.
    """

    def __init__(self, sink: ProgressSink, *, phase: str):
        self.sink = sink
        self.phase = phase
        self.stopped_by_request = False
        self.last_loss: float | None = None
        self._window_start = time.perf_counter()  # start of the tokens/s window
        self._window_tokens = 0
        self._saving_s = 0.0  # checkpoint saving inside the current window: not training time
        self._step_mark = time.perf_counter()  # end of the previous step (or of its checkpoint save)

    def on_train_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._window_start = self._step_mark = now
        self._window_tokens = state.num_input_tokens_seen or 0
        self._saving_s = 0.0
        self.sink.log(f"[{self.phase}] training starts: {state.max_steps} steps")
        self.sink.heartbeat()
        self.sink.advanced(phase=self.phase, step=state.global_step, total_steps=state.max_steps, seconds=None)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads:
            return
        # One host sync per optimizer step; a NaN anywhere makes the total NaN (clipping turns inf into NaN).
        norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(norm):
            optimizer = kwargs.get("optimizer")
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            raise NonFiniteError(
                phase=self.phase, step=state.global_step + 1, what="gradient norm", value=norm.item(), learning_rate=lr
            )

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        seconds, self._step_mark = now - self._step_mark, now
        self.sink.heartbeat()
        self.sink.advanced(phase=self.phase, step=state.global_step, total_steps=state.max_steps, seconds=seconds)
        if self.sink.should_stop():
            self.stopped_by_request = True
            control.should_training_stop = True
            # Keep what was learnt so far: a cancelled job can be resumed from this checkpoint.
            control.should_save = True
            self.sink.log(f"[{self.phase}] stop requested: saving a checkpoint at step {state.global_step}")
        return control

    def on_save(self, args, state, control, **kwargs):
        now = time.perf_counter()
        # The save ran between this step's end and now: neither a step nor training throughput.
        self._saving_s += now - self._step_mark
        self._step_mark = now
        self.sink.checkpoint(f"{args.output_dir}/checkpoint-{state.global_step}")
        self.sink.log(f"[{self.phase}] checkpoint saved at step {state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.sink.idle()

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
        training_s = now - self._window_start - self._saving_s
        tokens_per_s = (tokens - self._window_tokens) / training_s if training_s > 0 and tokens else None
        self._window_start, self._window_tokens, self._saving_s = now, tokens, 0.0
        self.last_loss = _number(logs.get("loss"))
        if self.last_loss is not None and not math.isfinite(self.last_loss):
            raise NonFiniteError(
                phase=self.phase,
                step=state.global_step,
                what="loss",
                value=self.last_loss,
                learning_rate=_number(logs.get("learning_rate")),
            )
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
