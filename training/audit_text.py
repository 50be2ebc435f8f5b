"""The audit's text detectors in a process of their own: ``python -m training.audit_text <snapshot id> <records>``.

The worker that audits a large snapshot starts this beside itself, so that the detectors that read the
answers' text (known phrases, facts, templates, phrases anywhere) run on a second core while it runs the
rest. It reads the snapshot's answers through its own connection and writes the detectors' state, pickled,
to stdout for the worker to take over (``Auditor.adopt_text``).
"""

from __future__ import annotations

import os
import pickle
import sys


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from annotate.audit import Auditor
    from training.audits import _pages
    from training.models import TrainingSnapshot

    snapshot_id, expected = int(argv[0]), int(argv[1])
    snapshot = TrainingSnapshot.objects.get(pk=snapshot_id)
    auditor = Auditor(expected=expected, parts="text")
    for page in _pages(snapshot, text_only=True):
        auditor.feed_many(page)
    pickle.dump(auditor.text_state(), sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
