"""`qsift serve` says "ready" only when it can serve: a run-as user who cannot run qsift is refused at
start, a worker says ready only after it has proved it can serve, and nothing after the downstream's
acceptance turns the answer into a dropped connection (which the client would retry: a duplicate)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qsift import config
from qsift.serve.daemon import Daemon
from tests.fakes.mta import fake_mta
from tests.harness import free_port, qmqp_send, running_daemon
from tests.integration.test_destinies import SENDER
from tests.integration.test_workers import QSIFT, config_text, readable_by_others

CLEAN = b"From: a@example.org\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: hi\n\nhello %d\n"


def start_until_ready_or_exit(config_file: Path, log: Path, timeout: float = 60) -> tuple[int | None, str]:
    """Start `qsift serve`; its exit code (None if it said "ready" and runs) and its log."""
    with log.open("wb") as sink:
        process = subprocess.Popen([QSIFT, "serve", "--config", str(config_file)], stderr=sink)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and "qsift ready" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return process.poll(), log.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_a_user_who_cannot_run_qsift_is_refused_at_start() -> None:
    """The issue's set-up: qsift in a venv under /root, `user = "nobody"`. Before, every worker said
    ready, forwarded each message and then dropped the connection (its first thread could not be made
    after the drop), so qmail delivered every message three times."""
    if readable_by_others(sys.base_prefix) and readable_by_others(sys.prefix):
        pytest.skip("this Python and qsift are readable by others: nothing to refuse")
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # tmp_path's parents are closed to nobody
    try:
        base.chmod(0o711)
        config_file = base / "qsift.toml"
        config_file.write_text(
            config_text(base / "state", f"smtp:[127.0.0.1]:{free_port()}", free_port(), 'user = "nobody"')
        )
        code, log = start_until_ready_or_exit(config_file, base / "log")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert code == 2, log
    assert "qsift ready" not in log
    refusal = [line for line in log.splitlines() if line.startswith("qsift: cannot start:")]
    assert len(refusal) == 1, log
    assert re.search(
        r"user 'nobody' cannot run qsift \(.+\): install qsift where nobody can read it", refusal[0]
    )


def test_workers_that_cannot_serve_are_not_reported_ready(tmp_path: Path) -> None:
    # The outcome record cannot be opened (a directory stands where its file should be).
    (tmp_path / "state" / "outcomes.sqlite").mkdir(parents=True, mode=0o700)
    (tmp_path / "state").chmod(0o700)
    config_file = tmp_path / "qsift.toml"
    config_file.write_text(config_text(tmp_path / "state", f"smtp:[127.0.0.1]:{free_port()}", free_port()))
    code, log = start_until_ready_or_exit(config_file, tmp_path / "log")
    assert code == 1, log
    assert "qsift ready" not in log
    assert "qsift: cannot start: 0 of 2 workers could serve (their errors are above)" in log, log


def daemon_config(tmp_path: Path, forward_port: int) -> config.Config:
    return config.from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "tmp_dir": str(tmp_path),
            "forward": {"method": f"smtp:[127.0.0.1]:{forward_port}"},
            "listen": [{"protocol": "qmqp", "address": f"127.0.0.1:{free_port()}"}],
        }
    )


async def test_a_worker_says_ready_only_after_a_round_trip_through_its_threads(tmp_path: Path) -> None:
    """The outcome record, the quarantine and the maildir forward work in threads: a worker whose
    threads cannot start (here: its executor already shut down) cannot serve, and must not say so."""
    broken = ThreadPoolExecutor(1)
    broken.shutdown()
    asyncio.get_running_loop().set_default_executor(broken)
    daemon = Daemon(daemon_config(tmp_path, free_port()), drain_timeout=5, handle_signals=False)
    running = asyncio.create_task(daemon.run())
    await asyncio.wait({running, asyncio.create_task(daemon.ready.wait())}, timeout=10)
    assert not daemon.ready.is_set()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        await asyncio.wait_for(running, 10)


async def test_an_error_after_the_downstream_accepted_is_answered_k_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The record of the delivery fails with an error no one expected (here: the threads it is written
    from are gone). The downstream has the message: the answer is K, and the log says what happened."""
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
    ):
        broken = ThreadPoolExecutor(1)
        broken.shutdown()
        asyncio.get_running_loop().set_default_executor(broken)
        answer = await qmqp_send(daemon.qmqp, CLEAN % 1, SENDER, [b"b@example.net"])
    assert answer.startswith("K250"), answer
    assert len(mta.accepted) == 1
    assert any("delivered but not recorded" in r.getMessage() for r in caplog.records)
