"""On SQLite, writing transactions take turns in order, within and across processes.

SQLite admits one writer at a time (``BEGIN IMMEDIATE``, see settings) and makes the others poll with
growing sleeps (up to 100 ms each), which leaves the CPU idle under load while writers sleep. Here
threads of a process queue on a lock and processes on an ``flock`` beside the database file; each
waiter is woken the moment the holder is done. PostgreSQL needs no turns: its row locks do the job.
"""

import threading
from contextlib import contextmanager

from django.db import connection

try:
    import fcntl
except ImportError:  # Windows: SQLite's busy handler alone serializes writers across processes
    fcntl = None

_threads = threading.RLock()
_depth = threading.local()


@contextmanager
def _process_turn():
    """Across processes: an exclusive lock on a file beside the database, held by the outermost turn.

    Where there is no flock (Windows) or no database file (in memory), SQLite's lock alone serializes."""
    depth = getattr(_depth, "value", 0)
    name = str(connection.settings_dict.get("NAME") or "")
    outermost = depth == 0 and fcntl is not None and name not in ("", ":memory:") and not name.startswith("file:")
    _depth.value = depth + 1
    try:
        if not outermost:
            yield
            return
        with open(name + ".queue-turn", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # let go when the file closes
            yield
    finally:
        _depth.value = depth


@contextmanager
def write_turn():
    """Take this thread's turn to write (SQLite); reentrant, so a nested write takes it again freely."""
    if connection.vendor != "sqlite":
        yield
        return
    with _threads, _process_turn():
        yield
