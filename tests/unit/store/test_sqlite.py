"""Opening a store file that another process holds: the workers open the same files at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from qsift.store.outcomes import OutcomeStore
from qsift.store.quarantine import Quarantine


def _held_for_a_moment(path: Path) -> threading.Timer:
    """A writer in the middle of a transaction on a new file (not in WAL mode yet), as a sibling worker
    creating its schema is; it lets go after 0.3 s. (SQLite waits its busy timeout for a mere reader,
    but answers a switch of journal mode that meets a writer with "locked" at once.)"""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")

    def let_go() -> None:
        holder.execute("COMMIT")
        holder.close()

    timer = threading.Timer(0.3, let_go)
    timer.start()
    return timer


def test_the_outcome_record_waits_for_a_sibling_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    timer = _held_for_a_moment(path)
    store = OutcomeStore(str(path))  # was: sqlite3.OperationalError: database is locked, at once
    timer.join()
    assert store.lookup(["k"], not_before=0.0) == {}
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_quarantine_index_waits_for_a_sibling_instead_of_failing(tmp_path: Path) -> None:
    directory = tmp_path / "quarantine"
    directory.mkdir(mode=0o700)
    timer = _held_for_a_moment(directory / "index.sqlite")
    quarantine = Quarantine(str(directory))
    try:
        assert quarantine.list() == []
    finally:
        timer.join()
        quarantine.close()


def test_a_lock_that_is_not_let_go_still_fails_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qsift.store.sqlite.LOCK_WAIT", 0.2)
    path = tmp_path / "outcomes.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        OutcomeStore(str(path))
    holder.close()
