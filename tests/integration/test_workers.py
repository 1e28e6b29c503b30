"""`qsift serve` with worker processes: crash recovery, recycling, reload, status, privileges, and the
HOWTO's deadlock that cannot happen. Real processes, real sockets, a scripted downstream."""

from __future__ import annotations

import asyncio
import importlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import free_port, qmqp_send, running_daemon
from tests.integration.test_daemon_process import child_pids
from tests.integration.test_destinies import SENDER, banned_message

QSIFT = str(Path(sys.executable).parent / "qsift")
CLEAN = b"From: a@example.org\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: hi\n\nhello %d\n"


def config_text(state: Path, forward: str, port: int, extra: str = "", forward_extra: str = "") -> str:
    return (
        f'state_dir = "{state}"\nlog_level = 2\nallow_root = true\nworkers = 2\n{extra}\n'
        f'[forward]\nmethod = "{forward}"\n{forward_extra}\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n'
    )


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, config: Path, log: Path) -> None:
        self.process, self.port, self.config, self.log = process, port, config, log

    def workers(self) -> list[int]:
        return sorted(child_pids(self.process.pid))

    async def settled_workers(self, count: int = 2, timeout: float = 10) -> list[int]:
        """The workers, once there are `count` of them (one may be on its way out or in)."""
        deadline = time.monotonic() + timeout
        while len(workers := self.workers()) != count:
            assert time.monotonic() < deadline, workers
            await asyncio.sleep(0.05)
        return workers

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if re.search(pattern, text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log_text()}")


@contextmanager
def serving(
    tmp_path: Path,
    forward: str,
    extra: str = "",
    command: tuple[str, ...] = (QSIFT,),
    forward_extra: str = "",
) -> Iterator[Served]:
    port = free_port()
    config = tmp_path / "qsift.toml"
    config.write_text(config_text(tmp_path / "state", forward, port, extra, forward_extra))
    log = tmp_path / "log"
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, "serve", "--config", str(config)], stderr=sink)
    served = Served(process, port, config, log)
    try:
        served.wait_for_log("qsift ready")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@asynccontextmanager
async def sink(script: Script | None = None) -> AsyncIterator[FakeMta]:
    async with fake_mta(script) as mta:
        yield mta


async def test_two_workers_share_the_listener_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    async with sink() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}") as served:
            first = served.workers()
            assert len(first) == 2, first
            answers = await asyncio.gather(
                *(qmqp_send(served.port, CLEAN % n, SENDER, [b"b@example.net"]) for n in range(20))
            )
            assert all(a.startswith("K250") for a in answers), answers
            os.kill(first[0], signal.SIGKILL)
            await asyncio.to_thread(served.wait_for_log, r"died \(killed by SIGKILL\)")
            deadline = time.monotonic() + 10
            while len(served.workers()) < 2 or first[0] in served.workers():
                assert time.monotonic() < deadline, served.workers()
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(
                *(qmqp_send(served.port, CLEAN % n, SENDER, [b"c@example.net"]) for n in range(20))
            )
            assert all(a.startswith("K250") for a in answers), answers
    assert len(mta.accepted) == 40


async def test_a_message_in_a_killed_worker_is_retried_not_half_delivered(tmp_path: Path) -> None:
    # A scanner that takes its time: the worker dies while the message is being checked.
    started = tmp_path / "started"
    program = tmp_path / "scanner"
    program.write_text(f"#!/bin/sh\ntouch {started}\nsleep 2\nexit 0\n")
    program.chmod(0o755)
    extra = f'[virus]\nscanners = [{{ type = "command", command = "{program}", args = ["{{}}"] }}]\n'
    async with sink() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", extra) as served:
            sending = asyncio.create_task(qmqp_send(served.port, CLEAN % 1, SENDER, [b"b@example.net"]))
            deadline = time.monotonic() + 10
            while not started.exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            busy = [pid for pid in served.workers() if child_pids(pid)]  # the one running the scanner
            assert len(busy) == 1, busy
            os.kill(busy[0], signal.SIGKILL)
            # The connection closes (or resets) without an answer: the client retries.
            try:
                answer = await asyncio.wait_for(sending, 10)
            except ConnectionResetError:
                answer = ""
            assert answer == "", answer
            assert mta.deliveries == []
            retry = await qmqp_send(served.port, CLEAN % 1, SENDER, [b"b@example.net"], timeout=20)
            assert retry.startswith("K250"), retry
    assert len(mta.accepted) == 1


async def test_max_requests_recycles_a_worker(tmp_path: Path) -> None:
    async with sink() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", "max_requests = 3") as served:
            first = set(served.workers())
            for n in range(12):
                answer = await qmqp_send(served.port, CLEAN % n, SENDER, [b"b@example.net"])
                assert answer.startswith("K250"), answer
            await asyncio.to_thread(served.wait_for_log, r"made way for a fresh one")
            assert not first & set(await served.settled_workers())
    assert len(mta.accepted) == 12


async def test_sighup_reloads_and_a_bad_configuration_is_refused(tmp_path: Path) -> None:
    async with sink() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}") as served:
            answer = await qmqp_send(served.port, banned_message(), SENDER, [b"b@example.net"])
            assert "BOUNCE" in answer, answer
            good = served.config.read_text() + '[destiny]\nbanned = "reject"\n'
            served.config.write_text(good)
            served.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(served.wait_for_log, r"SIGHUP: configuration .* read")
            await asyncio.to_thread(served.wait_for_log, r"qsift ready.*\n(.|\n)*qsift ready")
            answer = await qmqp_send(served.port, banned_message(), SENDER, [b"b@example.net"])
            assert answer.startswith("D554 5.7.0 Reject"), answer
            served.config.write_text(good + "no_such_key = 1\n")
            served.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(served.wait_for_log, r"no_such_key.*keeping the running configuration")
            answer = await qmqp_send(served.port, banned_message(), SENDER, [b"c@example.net"])
            assert answer.startswith("D554 5.7.0 Reject"), answer
            await served.settled_workers()


def test_status_shows_every_worker(tmp_path: Path) -> None:
    with serving(tmp_path, f"maildir:{tmp_path / 'Maildir'}") as served:
        result = subprocess.run(
            [QSIFT, "status", "--config", str(served.config)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("worker")]
        assert len(lines) == 2, result.stdout
        assert all(re.match(r"worker \d pid \d+: idle, 0 messages, max RSS \d+ KiB", line) for line in lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can be refused for being root, or drop to a user")
def test_root_must_say_so_or_name_a_user(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "qsift.toml"
    config.write_text(
        config_text(tmp_path / "state", "maildir:/nonexistent", port).replace("allow_root = true", "")
    )
    result = subprocess.run(
        [QSIFT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "running as root: set `user`" in result.stderr


def readable_by_others(path: str) -> bool:
    """Whether a user other than root can reach and read `path` (the Python installation, here)."""
    current = Path(path)
    return all(part.stat().st_mode & 0o005 for part in [current, *current.parents] if part.exists())


#: What `qsift serve` imports beyond the standard library (pyproject.toml's dependencies).
RUNTIME_PACKAGES = ("qsift", "libarchive", "magic", "prometheus_client")


def qsift_for_others(base: Path) -> tuple[str, ...] | None:
    """A command that runs this qsift and that a dropped user can run too: this Python when others can
    read it; else (a Python under /root, as on this image) a venv of the system's Python 3.11+ in `base`
    with a copy of qsift and its packages, wherever the checkout is; None when neither can be had."""
    if readable_by_others(sys.base_prefix):
        return (QSIFT,)
    system = "/usr/bin/python3"
    if not os.path.exists(system):
        return None
    version_check = "import sys; sys.exit(sys.version_info < (3, 11))"
    if subprocess.run([system, "-c", version_check], check=False).returncode != 0:
        return None
    venv = base / "python"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    (site,) = venv.glob("lib/python3*/site-packages")
    for name in RUNTIME_PACKAGES:
        package = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(package, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    return (str(venv / "bin" / "python"), "-m", "qsift.cli")


@contextmanager
def dir_with_qsift_for_others() -> Iterator[tuple[Path, tuple[str, ...]]]:
    """A fresh directory under /tmp that other users can pass through (tmp_path's parents are closed to
    them) and the `qsift_for_others` command made in it; the test is skipped without one. Removed on exit."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o711)
        command = qsift_for_others(base)
        if command is None:
            pytest.skip(f"no Python that other users can read ({sys.base_prefix} is closed to them)")
        yield base, command
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
async def test_workers_drop_to_the_user_after_binding(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    with dir_with_qsift_for_others() as (base, command):
        async with sink() as mta:
            with serving(base, f"smtp:[127.0.0.1]:{mta.port}", 'user = "nobody"', command) as served:
                answer = await qmqp_send(served.port, CLEAN % 1, SENDER, [b"b@example.net"])
                assert answer.startswith("K250"), answer
                for pid in [served.process.pid, *served.workers()]:
                    uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
                    assert uids is not None and set(uids.group(1).split()) == {str(nobody.pw_uid)}
                state = base / "state"
                assert state.stat().st_uid == nobody.pw_uid and state.stat().st_mode & 0o777 == 0o700
        # An existing state directory others can read is refused, with the fix in the message.
        state.chmod(0o755)
        result = subprocess.run(
            [*command, "serve", "--config", str(base / "qsift.toml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2 and f"chmod 700 {state}" in result.stderr, result.stderr


async def test_no_deadlock_when_the_reinjection_listener_takes_fewer_than_max_servers(tmp_path: Path) -> None:
    """The HOWTO's deadlock: filter children all waiting for a re-injection listener with a smaller
    tcpserver -c. Here: 12 sessions at once, max_servers 4, a downstream serving one connection at a
    time and slow to answer. Every message gets a definite answer in bounded time, nothing hangs."""
    script = Script(max_connections=1, final_delay=0.2)
    async with (
        fake_mta(script) as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            limits={"busy_wait": 1},
            top={"max_servers": 4},
        ) as daemon,
    ):
        started = time.monotonic()
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(qmqp_send(daemon.qmqp, CLEAN % n, SENDER, [b"b@example.net"]) for n in range(12))
            ),
            30,
        )
        elapsed = time.monotonic() - started
    letters = [a[:1] for a in answers]
    assert set(letters) <= {"K", "Z"}, answers
    assert letters.count("K") == len(mta.accepted) >= 4
    assert all("4.3.2 id=" in a and "too busy" in a for a in answers if a.startswith("Z")), answers
    assert mta.peak == 1
    assert elapsed < 15, elapsed
