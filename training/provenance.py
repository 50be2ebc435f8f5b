"""Where a trained adapter came from: code, libraries, hardware and the base model's identity.

Written into every job's manifest.json; Django-free like the runner that calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from training import ranks
from training.errors import TrainingError

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "liger-kernel")
ROOT = Path(__file__).resolve().parent.parent


def hardware() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    else:
        info["gpus"] = []
    info["world_size"] = ranks.world_size()
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    info["driver"] = gpu_driver_version()
    return info


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version, from nvidia-smi (None on a machine without one)."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> dict:
    """Which Goldset trained this: the package version and, in a git checkout, the commit and whether it was edited."""
    info: dict = {"goldset": None, "git_commit": None, "git_dirty": None}
    with contextlib.suppress(metadata.PackageNotFoundError):
        info["goldset"] = metadata.version("goldset")
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return info
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
        status = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return info
    info["git_commit"], info["git_dirty"] = commit or None, bool(status.strip())
    return info


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def files_signature(path: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times: a cheap check that a hashed directory is still the same."""
    return [(f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in _files(path)]


def model_fingerprint(base_model: str) -> dict:
    """Where the base came from: a local dir gets a sha256 over its files; a hub id its resolved revision."""
    path = Path(base_model)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in _files(path):
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return {"source": "local", "path": str(path), "sha256": digest.hexdigest()}
    return {"source": "hub", "id": base_model, "revision": None}


class BaseModelRecord:
    """The base model's identity, taken when it is first loaded and checked at every later load of the job."""

    def __init__(self, base_model: str):
        self.base_model = base_model
        self.fingerprint: dict | None = None
        self._signature = None

    def take(self) -> dict:
        """The fingerprint (rank 0 only: the others write no manifest)."""
        return model_fingerprint(self.base_model) if ranks.is_main() else {}

    def loaded(self, model) -> None:
        revision = getattr(model.config, "_commit_hash", None)
        path = Path(self.base_model)
        if self.fingerprint is None:
            self.fingerprint = self.take()
            if revision:
                self.fingerprint["revision"] = revision
            self._signature = files_signature(path) if path.is_dir() else None
            return
        changed = (self._signature is not None and files_signature(path) != self._signature) or (
            revision and self.fingerprint.get("revision") not in (None, revision)
        )
        if changed:
            raise TrainingError(
                f"The base model {self.base_model!r} changed while the job ran (its files differ from those hashed "
                f"at the first load): keep base models read-only, then retry the job."
            )
