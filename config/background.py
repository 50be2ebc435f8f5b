"""One shape for work that runs in the background (imports, agreement reports, checks, audits, training).

A row holds the work's state: ``status``, ``progress`` (0..1), ``message`` (what it is doing, or why it
failed), ``started_at`` and ``finished_at``. A worker claims the row with a conditional update before it
starts, so a redelivered task message does nothing; it reports progress and finishes through the same
few updates. The page shows ``templates/partials/progress.html``, which polls one URL while the work
runs; ``poll_response`` answers that poll and tells htmx to stop once the work has finished.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import models, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django_htmx.http import HttpResponseStopPolling


class BackgroundWork(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="0..1 while running.")
    message = models.TextField(blank=True, help_text="What the work is doing, or why it failed.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def percent(self) -> int:
        return 100 if self.status == self.Status.SUCCEEDED else int(round(100 * max(0.0, min(self.progress, 1.0))))

    # Single-row state changes, each one conditional UPDATE (no read-modify-write race).
    @classmethod
    def claim(cls, pk: int, *, message: str = "Starting") -> bool:
        """Move a queued row to running; False when it was not queued (already claimed, or cancelled)."""
        now = timezone.now()
        return bool(
            cls.objects.filter(pk=pk, status=cls.Status.QUEUED).update(
                status=cls.Status.RUNNING, started_at=now, progress=0.0, message=message
            )
        )

    @classmethod
    def report_progress(cls, pk: int, fraction: float, message: str) -> None:
        cls.objects.filter(pk=pk, status=cls.Status.RUNNING).update(
            progress=round(max(0.0, min(fraction, 1.0)), 4), message=message[:500]
        )

    @classmethod
    def finish(cls, pk: int, status: str, message: str = "", **fields) -> bool:
        """Record how the work ended (with any result fields of the model); False when it had already ended."""
        done = {"status": status, "message": message, "finished_at": timezone.now(), **fields}
        if status == cls.Status.SUCCEEDED:
            done["progress"] = 1.0
        return bool(cls.objects.filter(pk=pk).exclude(status__in=cls.FINISHED).update(**done))


def poll_response(request: HttpRequest, template: str, context: dict, *, work: BackgroundWork) -> HttpResponse:
    """The polled fragment; once the work has finished, htmx swaps it in and stops polling."""
    response = render(request, template, context)
    if request.htmx and work.is_finished:
        return HttpResponseStopPolling(response.content, headers={"Content-Type": response["Content-Type"]})
    return response


log = logging.getLogger(__name__)


def send_on_commit(task, pk: int, *extra, argsrepr: str | None = None) -> None:
    """Send the task for the row once the transaction commits. With the broker down the row still commits, as
    QUEUED, and the request that asked for the work does not fail: ``requeue`` sends it later (imports,
    reports, audits), or the page shows it waiting (training jobs, whose secret only the lost message held,
    are cancelled and retried)."""

    def send():
        try:
            if argsrepr is None:
                task.delay(pk, *extra)
            else:  # a secret among the arguments: the worker's log shows this instead
                task.apply_async((pk, *extra), argsrepr=argsrepr)
        except Exception:
            log.warning("%s(%s): the task queue is unreachable; the row stays queued.", task.name, pk, exc_info=True)

    transaction.on_commit(send, robust=True)


def requeue(model: type[BackgroundWork], task, *, older_than_s: float) -> list[int]:
    """Send the task again for rows still QUEUED after ``older_than_s`` (a broker that restarted empty, or was
    down when they were sent). A duplicate is harmless: the worker claims a row once."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(model.objects.filter(status=model.Status.QUEUED, created_at__lt=cutoff).values_list("pk", flat=True))
    for pk in ids:
        task.delay(pk)
    return ids
