"""The demo's base model: a tiny Llama with random weights, made locally, for trying the training flow.

It learns nothing useful (its weights are random and it is tiny); it exists so that a newcomer can take
the demo from review to a trained adapter on a laptop, offline. The job form offers it when it is there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.conf import settings

LABEL = "demo model: random weights, for trying the flow only"


def demo_base_model_path() -> Path:
    return Path(settings.VAR_DIR) / "models" / "demo-random-llama"


def demo_base_model() -> str:
    """The demo base model's path when it has been built, else ""."""
    path = demo_base_model_path()
    return str(path) if (path / "config.json").exists() else ""


def demo_base_model_build() -> tuple[Path | None, bool]:
    """Build the demo base model if the training extra is installed: (path or None, whether it was built now)."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return None, False
    path = demo_base_model_path()
    if (path / "config.json").exists():
        return path, False
    from training.tinymodel import build_tiny_model

    build_tiny_model(path, max_positions=2048)  # the demo's default max length fits
    (path / "README.md").write_text(f"# Goldset {LABEL}\n\nBuilt by `manage.py seed_demo`. Do not serve it.\n")
    return path, True
