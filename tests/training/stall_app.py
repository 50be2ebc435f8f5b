"""The project's Celery app with one fault injected: the SFT data collator blocks for good after
``GOLDSET_TEST_BLOCK_AFTER_BATCHES`` batches, as a hung data loader, collective or network disk would.

The stall test starts its gpu worker with ``celery -A tests.training.stall_app``; nothing else in the
worker differs from production.
"""

import os
import threading

from config.celery import app  # the app `celery -A` finds here

__all__ = ["app"]


def _block_after(batches: int) -> None:
    from trl.trainer import sft_trainer

    collator = sft_trainer.DataCollatorForLanguageModeling
    original = collator.__call__
    calls = [0]
    never = threading.Event()

    def blocking(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > batches:
            never.wait()
        return original(self, *args, **kwargs)

    collator.__call__ = blocking


_block_after(int(os.environ["GOLDSET_TEST_BLOCK_AFTER_BATCHES"]))
