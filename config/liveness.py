"""Is the process running a piece of background work still alive? A lock that dies with its holder says.

The worker takes the work's lock before it claims the row and keeps it until the work ends. A row that says
RUNNING while its lock is free was left by a process that died (SIGKILL, out of memory, a lost machine):
PostgreSQL releases a session's advisory locks when its connection ends, and the kernel releases an
``flock`` when the process that holds it exits. So anyone may check, at any time, without heartbeats or
clocks, and a live worker is never mistaken for a dead one: its lock is held from before the row said
RUNNING until after it stopped saying so.

PostgreSQL: a session advisory lock (two-key form, a namespace per kind of work). SQLite (the embedded
demo, one machine): an ``flock`` on a file under ``VAR_DIR/locks``.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection


def _namespace(kind: str) -> int:
    return zlib.crc32(kind.encode()) & 0x7FFFFFFF


def _lock_file(kind: str, pk: int) -> Path:
    folder = Path(settings.VAR_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{pk}.lock"


@contextmanager
def held(kind: str, pk: int) -> Iterator[bool]:
    """Hold the work's lock for the block; yields False (and holds nothing) when another process has it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_namespace(kind), pk])
            got = cursor.fetchone()[0]
        try:
            yield got
        finally:
            if got and connection.connection is not None and not connection.connection.closed:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_namespace(kind), pk])
        return
    fd = os.open(_lock_file(kind, pk), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def abandoned(kind: str, pk: int) -> bool:
    """True when nobody holds the work's lock (its worker is gone); checking takes and drops it at once."""
    with held(kind, pk) as got:
        return got
