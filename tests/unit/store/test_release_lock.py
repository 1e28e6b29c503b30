"""The local quarantine's release lock: one release at a time from one quarantine directory, across the
worker processes that share it (each serves AM.PDP), so a message is not sent twice by two releases."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qsift.errors import SpoolError
from qsift.store import quarantine
from qsift.store.quarantine import FileReleaseLock, Quarantine


def test_a_second_release_waits_for_the_first(tmp_path: Path) -> None:
    store = Quarantine(str(tmp_path / "q"))
    first, second = store.release_lock("AAAAAAAAAAAA"), store.release_lock("BBBBBBBBBBBB")
    first.acquire()
    got: list[float] = []

    def wait_for_it() -> None:
        second.acquire()
        got.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting
    let_go = time.monotonic()
    first.release()
    waiter.join(5)
    assert got and got[0] >= let_go
    second.release()
    second.release()  # a second release is harmless
    store.close()


def test_a_process_holding_it_keeps_others_out_until_it_exits(tmp_path: Path) -> None:
    path = tmp_path / ".release.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from qsift.store.quarantine import FileReleaseLock; "
            f"FileReleaseLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lock = FileReleaseLock(str(path))
        waiter = threading.Thread(target=lock.acquire)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()
        holder.kill()  # a worker that dies holding it lets it go
        waiter.join(5)
        assert not waiter.is_alive()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_release_that_waits_too_long_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quarantine, "RELEASE_WAIT", 0.2)
    path = str(tmp_path / ".release.lock")
    held = FileReleaseLock(path)
    held.acquire()
    with pytest.raises(SpoolError, match="another release"):
        FileReleaseLock(path).acquire()
    held.release()
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) < 200  # no descriptor left open by the failure


def test_a_lock_file_that_cannot_be_opened_is_a_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot open"):
        FileReleaseLock(str(tmp_path / "missing" / ".release.lock")).acquire()
