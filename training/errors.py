"""The training failures a person can act on; importable without the training extra (no torch)."""

INSTALL_HINT = "pip install torch==2.13.0 -e '.[train]'"
TRAINING_MODULES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


class TrainingError(Exception):
    """A failure with a message a person can act on (shown on the job page).

    ``checkpoint``: the last checkpoint that is safe to resume from, when the failure leaves one.
    """

    def __init__(self, message: str, *, checkpoint: str = ""):
        super().__init__(message)
        self.checkpoint = checkpoint


def missing_extra_message(exc: ImportError, *, where: str) -> str:
    """Words for a worker that lacks the training extra (instead of a ModuleNotFoundError traceback)."""
    name = getattr(exc, "name", None) or str(exc)
    return (
        f"The training extra is not installed on {where} (cannot import {name}). Install it there with "
        f"`{INSTALL_HINT}` (the CPU build of torch; on a GPU machine install the CUDA build of torch first), "
        f"then restart the worker."
    )
