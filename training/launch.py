"""Multi-GPU training: the gpu task starts ``accelerate launch`` (DDP, one process per GPU) on this module.

Each rank runs ``runner.run`` on the same spec; rank 0 reports through files the parent task tails
(``events.jsonl``: progress, log lines and checkpoints) and the parent asks for a stop by creating
``stop``. So the ranks stay Django-free and the task remains the only bridge to the database.
Ranks agree on stopping with an all-reduce, so no rank waits alone in a collective.

    python -m training.launch SPEC.json          # what each rank runs
"""

from __future__ import annotations

import json
import os
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
    On a CPU-only machine accelerate's ``--cpu`` runs a single process, so several processes go through
    torchrun (gloo backend) instead: the same DDP code path, which is how it is tested without a GPU.
    """
    if cpu and num_processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(num_processes),
        ]
        return command + ["-m", "training.launch", str(spec_path)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    command += ["--cpu"] if cpu else (["--multi_gpu"] if num_processes > 1 else [])
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

    def should_stop(self) -> bool:
        wanted = self.stop.exists()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            flag = torch.tensor([1 if wanted else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        return wanted


def run_distributed(
    *, spec: dict, workdir: Path, num_processes: int, sink, cpu: bool = False, poll_s: float = 0.5
) -> dict:
    """Run the spec under accelerate launch, forwarding rank 0's events to ``sink``; returns the result dict."""
    from training.runner import TrainingError

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
            elif event["kind"] == "checkpoint" and hasattr(sink, "checkpoint"):
                sink.checkpoint(event["path"])
        if finished:
            break
        sink.heartbeat()
        if sink.should_stop():
            stop.touch()
        time.sleep(poll_s)
    output.close()
    if proc.returncode != 0 or not result.exists():
        tail = (workdir / "launch.log").read_text(errors="replace").strip().splitlines()[-5:]
        error = json.loads(result.read_text()).get("error") if result.exists() else None
        raise TrainingError(error or f"accelerate launch exited with status {proc.returncode}: " + " | ".join(tail))
    return json.loads(result.read_text())


def main(spec_path: str) -> None:
    from training import runner
    from training.config import TrainingConfig

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
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
            Path(spec["result"]).write_text(json.dumps({"error": str(exc)}))
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
