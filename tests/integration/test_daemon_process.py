"""`qsift serve` as a real process: the summary log line, SIGTERM draining, bounded memory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import free_port, qmqp_send

FAKE_QQ = Path(__file__).parents[1] / "fakes" / "qmail_queue.py"
QSIFT = str(Path(sys.executable).parent / "qsift")


def start(
    tmp_path: Path, forward: str, env: dict[str, str] | None = None, extra: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = tmp_path / "qsift.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\nlog_level = 2\nallow_root = true\n{extra}'
        f'[forward]\nmethod = "{forward}"\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n'
    )
    process = subprocess.Popen(
        [QSIFT, "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stderr is not None
    # The parent says "qsift ready" once every worker is serving; a worker may speak first.
    lines = [process.stderr.readline().decode()]
    while "qsift ready" not in lines[-1]:
        assert lines[-1], lines
        lines.append(process.stderr.readline().decode())
    return process, port


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "queue"
    directory.mkdir()
    return directory


def fake_qq(tmp_path: Path) -> str:
    wrapper = tmp_path / "qmail-queue"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_QQ}\n")
    wrapper.chmod(0o755)
    return f"qmail-queue:{wrapper}"


async def test_summary_line_names_outcome_client_envelope_and_message(tmp_path: Path) -> None:
    process, port = start(tmp_path, f"maildir:{tmp_path / 'Maildir'}")
    message = (
        b"From: alice@example.org\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n"
        b"Message-ID: <m1@example.org>\nSubject: hi\n\nhello\n"
    )
    answer = await qmqp_send(port, message, b"alice@example.org", [b"bob@example.net"])
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert answer.startswith("K250 2.0.0 Ok, id="), answer
    log = err.decode()
    assert re.search(
        r"Passed CLEAN, QMQP \[127\.0\.0\.1\] <alice@example\.org> -> <bob@example\.net>, "
        rf"Message-ID: <m1@example\.org>, mail_id: [\w-]{{12}}, size: {len(message)}, "
        r"queued_as: delivered as \S+, \d+ ms",
        log,
    ), log


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


async def test_sigterm_lets_the_message_in_flight_finish(tmp_path: Path, queue_dir: Path) -> None:
    process, port = start(
        tmp_path, fake_qq(tmp_path), {"FAKE_QQ_DIR": str(queue_dir), "FAKE_QQ_SLEEP": "1.5"}
    )
    in_flight = asyncio.create_task(qmqp_send(port, b"Subject: slow\n\nx\n", b"a@x.org", [b"b@y.net"]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    # The queue program is running under a worker: the message is in flight.
    while not any(child_pids(worker) for worker in child_pids(process.pid)):
        assert loop.time() < deadline and not in_flight.done()
        await asyncio.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    answer = await asyncio.wait_for(in_flight, 20)
    assert answer.startswith("K"), answer
    await asyncio.to_thread(process.communicate, timeout=20)
    assert process.returncode == 0
    assert len(list(queue_dir.glob("*.msg"))) == 1
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_memory_stays_bounded_for_a_large_message(tmp_path: Path) -> None:
    process, port = start(tmp_path, f"maildir:{tmp_path / 'Maildir'}")
    try:
        body = b"Subject: big\n\n" + (b"z" * 99 + b"\n") * 400_000  # 40 MB
        answer = await qmqp_send(port, body, b"a@x.org", [b"b@y.net"], timeout=120)
        assert answer.startswith("K"), answer
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        assert peak_kib < 120 * 1024, f"peak RSS {peak_kib} kB for a 40 MB message"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
