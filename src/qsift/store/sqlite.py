"""What the SQLite stores share: one write transaction at a time, taken at once."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


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
