"""Celery tasks of the judging app.

``generation_run_task`` runs on the gpu queue, where the worker logs in as the trainer role
(``training_db()``): it reads its run row and its prompt file, and writes only through the
secret-checked services of ``judging.services.runs``. It never logs a prompt or a response, since
the trainer role may read the run's log.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections import deque

from celery import shared_task
from django.conf import settings

from training.db import training_db

log = logging.getLogger(__name__)


class RunSink:
    """The run's log (kept as its tail on the row), throttled progress and the cancel check."""

    def __init__(self, run_id: int, secret: str, using: str):
        from evalsets.judging.services import runs

        self.runs = runs
        self.run_id, self.secret, self.using = run_id, secret, using
        self.lines: deque[str] = deque(maxlen=runs.LOG_TAIL_LINES)
        self._last_check = 0.0
        self._stop = False

    def log(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        log.info("generation run %s: %s", self.run_id, line)

    def update(self, **fields) -> bool:
        return self.runs.generation_run_update(
            run_id=self.run_id, secret=self.secret, using=self.using, log_tail="\n".join(self.lines), **fields
        )

    def should_stop(self) -> bool:
        from evalsets.judging.models import GenerationRun

        now = time.monotonic()
        if not self._stop and now - self._last_check >= settings.TRAINING_CANCEL_POLL_S:
            self._last_check = now
            row = GenerationRun.objects.using(self.using).filter(pk=self.run_id).values("cancel_requested", "status")
            row = row.first() or {}
            self._stop = bool(row.get("cancel_requested")) or row.get("status") != GenerationRun.Status.RUNNING
        return self._stop


@shared_task(acks_late=True)
def generation_run_task(run_id: int, secret: str) -> str:
    """Claim a queued generation run, answer its prompts in batches and record how it ended."""
    from evalsets.judging import generate
    from evalsets.judging.models import GenerationRun
    from evalsets.judging.services import runs

    using = training_db()
    worker = socket.gethostname()
    if not runs.generation_run_claim(run_id=run_id, secret=secret, worker=worker, using=using):
        return "not claimed"
    run = GenerationRun.objects.using(using).get(pk=run_id)
    sink = RunSink(run_id, secret, using)
    sink.log(f"run {run_id} claimed by {worker}; database role: {_db_role(using)}")
    status, message = GenerationRun.Status.SUCCEEDED, ""
    totals = {"responses": 0, "tokens": 0, "seconds": 0.0}
    try:
        decoding = generate.DecodingConfig.from_dict(run.decoding)
        prompts = runs.read_prompts(run_id)
        identity = generate.model_identity(run.base_model, run.adapter_dir or None)
        trained_on, base_sha = identity.get("adapter_base_sha256"), identity["base_model"].get("sha256")
        if trained_on and base_sha and trained_on != base_sha:
            raise generate.GenerationError(
                f"The adapter was trained on a base model with sha256 {trained_on[:12]}…, but {run.base_model} now "
                f"hashes to {base_sha[:12]}…: restore the original base model, then retry the run."
            )
        sink.log(f"{len(prompts)} prompts; decoding: {decoding.label()}, batch size {decoding.batch_size}")
        sink.update(model_identity=identity, message="Loading the model")
        began = time.perf_counter()
        model, tokenizer = generate.load(run.base_model, run.adapter_dir or None)
        device = next(model.parameters()).device
        sink.log(f"model loaded on {device} in {time.perf_counter() - began:.1f} s")
        sink.update(message=f"Answering {len(prompts)} prompts")
        by_position = {p["position"]: p for p in prompts}
        for report in generate.generate(
            model, tokenizer, [p["messages"] for p in prompts], decoding, should_stop=sink.should_stop
        ):
            rows = []
            for answer in report.answers:
                prompt = by_position[answer.position]
                rows.append(
                    {
                        "position": answer.position,
                        "record_id": prompt.get("record_id"),
                        "check_key": prompt.get("check_key") or "",
                        "text": answer.text,
                        "new_tokens": answer.new_tokens,
                        "finish_reason": answer.finish_reason,
                    }
                )
            if not runs.generation_outputs_add(run_id=run_id, secret=secret, rows=rows, using=using):
                raise generate.GenerationError("The run stopped running under this worker (failed or cancelled).")
            totals["responses"] += len(rows)
            totals["tokens"] += report.new_tokens
            totals["seconds"] += report.seconds
            rate = len(rows) / report.seconds if report.seconds else 0.0
            sink.log(
                f"batch of {len(rows)}: {report.new_tokens} new tokens in {report.seconds:.2f} s "
                f"({rate:.1f} responses/s, {report.new_tokens / max(report.seconds, 1e-9):.0f} tokens/s); "
                f"{report.done}/{report.total} done"
            )
            sink.update(
                progress=report.done / report.total,
                message=f"{report.done} of {report.total} prompts answered",
                **_throughput(totals),
            )
        if totals["responses"] < len(prompts):
            status, message = GenerationRun.Status.CANCELLED, f"Cancelled after {totals['responses']} responses."
    except Exception as exc:  # noqa: BLE001 — every failure must reach the run page
        status = GenerationRun.Status.FAILED
        message = (
            str(exc)
            if isinstance(exc, generate.GenerationError | FileNotFoundError)
            else (f"{exc.__class__.__name__}: {exc}")
        )
        for line in traceback.format_exc().splitlines()[-8:]:
            sink.log(line)
    finally:
        runs.forget_prompts(run_id)
    if totals["seconds"]:
        figures = _throughput(totals)
        sink.log(
            f"{status}: {totals['responses']} responses, {totals['tokens']} new tokens in {totals['seconds']:.1f} s "
            f"of generation: {figures['responses_per_second']:.2f} responses/s, "
            f"{figures['tokens_per_second']:.0f} tokens/s"
        )
    else:
        figures = {}
        sink.log(f"{status}: {message}")
    runs.generation_run_finish(
        run_id=run_id,
        secret=secret,
        status=status,
        message=message[:5000],
        using=using,
        log_tail="\n".join(sink.lines),
        **figures,
    )
    return status


def _throughput(totals: dict) -> dict:
    seconds = max(totals["seconds"], 1e-9)
    return {
        "responses_per_second": round(totals["responses"] / seconds, 3),
        "tokens_per_second": round(totals["tokens"] / seconds, 1),
    }


def _db_role(using: str) -> str:
    from django.db import connections

    connection = connections[using]
    if connection.vendor != "postgresql":
        return connection.vendor
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


@shared_task
def generation_runs_fail_stale(stale_after_s: float | None = None) -> list[int]:
    """Periodic: fail running generation runs whose gpu worker went silent."""
    from evalsets.judging.services import runs

    limit = stale_after_s if stale_after_s is not None else settings.TRAINING_STALE_AFTER_S
    return runs.generation_runs_fail_stale(stale_after_s=limit)
