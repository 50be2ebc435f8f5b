"""Multi-GPU training: the gpu task starts ``accelerate launch`` (DDP, one process per GPU) on this module.

Each rank binds to its own GPU, joins the process group and runs ``runner.run`` on the same spec (rank 0
decides the settings for all: ``training.ranks``); rank 0 reports through files the parent task tails
(``events.jsonl``: progress, steps, log lines and checkpoints) and the parent asks for a stop by
creating ``stop``. So the ranks stay Django-free and the task remains the only bridge to the database.
Ranks agree on stopping with an all-reduce, so no rank waits alone in a collective; ranks that hang
anyway (a collective that never completes) are killed by the parent once the job is failed as stalled.

    python -m training.launch SPEC.json          # what each rank runs
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(*, num_processes: int, spec_path: Path, cpu: bool = False, port: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line for a job spec (DDP across ``num_processes`` GPUs).

    A free rendezvous port per job, so two gpu workers on one machine never collide on the default one.
    On a CPU-only machine ``--multi_gpu`` still starts one process per rank (torchrun underneath) and the
    ranks join a gloo process group (accelerate's ``--cpu`` would run a single process): the same
    launcher and DDP code path, which is how it is tested without a GPU.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    command += ["--multi_gpu"] if num_processes > 1 else (["--cpu"] if cpu else [])
    command += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
    command += ["--main_process_port", str(port or free_port())]
    return command + ["-m", "training.launch", str(spec_path)]


class FileSink:
    """Rank 0 appends events as JSON lines; every rank reads the stop file."""

    def __init__(self, events: Path, stop: Path, rank: int):
        self.events, self.stop, self.rank = Path(events), Path(stop), rank
        self.last_step = 0

    def _emit(self, kind: str, **data) -> None:
        if self.rank == 0:
            with self.events.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"kind": kind, **data}) + "\n")

    def progress(self, row: dict) -> None:
        self._emit("progress", row=row)

    def log(self, line: str) -> None:
        self._emit("log", line=line)

    def checkpoint(self, path: str) -> None:
        self._emit("checkpoint", path=path)

    def heartbeat(self) -> None:
        self._emit("heartbeat")

    def advanced(self, *, phase: str, step: int, total_steps: int, seconds: float | None) -> None:
        self.last_step = step
        self._emit("advanced", phase=phase, step=step, total_steps=total_steps, seconds=seconds)

    def idle(self) -> None:
        self._emit("idle")

    def should_stop(self) -> bool:
        wanted = self.stop.exists()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            from training.ranks import device_name

            flag = torch.tensor([1 if wanted else 0], device=device_name())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        return wanted


def run_distributed(
    *, spec: dict, workdir: Path, num_processes: int, sink, cpu: bool = False, poll_s: float = 0.5
) -> dict:
    """Run the spec under accelerate launch, forwarding rank 0's events to ``sink``; returns the result dict."""
    from training.errors import TrainingError

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    events, stop, result = workdir / "events.jsonl", workdir / "stop", workdir / "result.json"
    for f in (events, stop, result):
        f.unlink(missing_ok=True)
    events.touch()
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "events": str(events), "stop": str(stop), "result": str(result)}))
    output = (workdir / "launch.log").open("w")
    proc = subprocess.Popen(
        accelerate_command(num_processes=num_processes, spec_path=spec_path, cpu=cpu),
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
        start_new_session=True,  # its own process group: the ranks can be killed together
    )
    offset = 0
    while True:
        finished = proc.poll() is not None
        with events.open(encoding="utf-8") as fh:
            fh.seek(offset)
            chunk = fh.read()
        complete, _, _rest = chunk.rpartition("\n")
        offset += len(complete.encode()) + (1 if complete else 0)
        for line in filter(None, complete.split("\n")):
            event = json.loads(line)
            if event["kind"] == "progress":
                sink.progress(event["row"])
            elif event["kind"] == "log":
                sink.log(event["line"])
            elif event["kind"] == "checkpoint":
                sink.checkpoint(event["path"])
            elif event["kind"] == "advanced":
                sink.advanced(
                    phase=event["phase"],
                    step=event["step"],
                    total_steps=event["total_steps"],
                    seconds=event["seconds"],
                )
            elif event["kind"] == "idle":
                sink.idle()
        if finished:
            break
        sink.heartbeat()
        if getattr(sink, "abandoned", False):
            # The job was failed under us (stalled ranks, say): free the GPUs rather than wait on a hang.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            output.close()
            raise TrainingError("The job was failed while its ranks ran (see above); they were stopped.")
        if sink.should_stop():
            stop.touch()
        time.sleep(poll_s)
    output.close()
    if proc.returncode != 0 or not result.exists():
        tail = (workdir / "launch.log").read_text(errors="replace").strip().splitlines()[-5:]
        outcome = json.loads(result.read_text()) if result.exists() else {}
        raise TrainingError(
            outcome.get("error") or f"accelerate launch exited with status {proc.returncode}: " + " | ".join(tail),
            checkpoint=outcome.get("checkpoint", ""),
        )
    return json.loads(result.read_text())


def main(spec_path: str) -> None:
    from training import ranks, runner
    from training.config import TrainingConfig

    spec = json.loads(Path(spec_path).read_text())
    rank = ranks.rank()
    ranks.start()
    sink = FileSink(spec["events"], spec["stop"], rank)
    try:
        outcome = runner.run(
            base_model=spec["base_model"],
            config=TrainingConfig.from_dict(spec["config"]),
            records=json.loads(Path(spec["records"]).read_text()),
            output_dir=Path(spec["output_dir"]),
            sink=sink,
            resume_from=Path(spec["resume_from"]) if spec.get("resume_from") else None,
            provenance=spec.get("provenance"),
        )
    except runner.TrainingError as exc:
        if rank == 0:
            Path(spec["result"]).write_text(json.dumps({"error": str(exc), "checkpoint": exc.checkpoint}))
        raise SystemExit(1) from exc
    if rank == 0:
        Path(spec["result"]).write_text(
            json.dumps(
                {
                    "status": outcome.status,
                    "manifest": outcome.manifest,
                    "last_checkpoint": outcome.last_checkpoint,
                    "adapter_dir": str(outcome.adapter_dir) if outcome.adapter_dir else None,
                },
                default=str,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1])
