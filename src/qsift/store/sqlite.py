"""What the SQLite stores share: how a file shared by the workers is opened, and one write transaction
at a time, taken at once."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Literal

#: How long a connection waits for another process's lock (SQLite's busy timeout), in seconds.
LOCK_WAIT = 30.0
_RETRY_PAUSE = 0.05
#: SQLite's page cache per connection, KiB. Its default, 2 MiB, filled up in every worker once the outcome
#: record passed 2 MiB (about 10,000 messages) and stayed so; the workers' commits invalidate each other's
#: caches anyway, and a key lookup reads three or four pages (docs/benchmarks.md, memory).
_CACHE_KIB = 256


def open_shared(path: str, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
    """A connection to the database at `path` in WAL mode (readers and the one writer of every worker
    process side by side), autocommit, usable from the daemon's threads."""
    db = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
    try:
        _write_ahead(db)
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    except BaseException:
        db.close()
        raise
    return db


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so once set). Switching needs the file to itself, and SQLite
    answers "database is locked" at once instead of waiting its busy timeout: two workers opening a new
    file together made one of them die at start. So a switch that meets a lock is tried again."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_PAUSE)


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction for a connection opened with isolation_level=None: BEGIN IMMEDIATE takes the
    write lock at once (workers sharing the file never deadlock upgrading a read), COMMIT when the block
    ends, ROLLBACK if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
