"""The daemon accepts exactly what a stock qmail-qmqpc sends (qmail-protocols.md §4), warts included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.qmail_qmqpc import run_qmail_qmqpc
from tests.harness import RunningDaemon, running_daemon


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[RunningDaemon]:
    async with running_daemon(tmp_path, f"maildir:{tmp_path / 'Maildir'}", protocols=("qmqp",)) as running:
        yield running


def delivered(tmp_path: Path) -> list[bytes]:
    new = tmp_path / "Maildir" / "new"
    return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []


async def test_stock_qmail_qmqpc_request_is_accepted_and_delivered_unaltered(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    # Over 1024 bytes, so the model writes it in several substdio-sized pieces as the C program does.
    message = b"Received: from x\nSubject: stock\n\n" + b"line of text\n" * 300
    envelope = b"Falice@example.org\0Tbob@example.net\0Tcarol@example.net\0\0"
    result = await asyncio.to_thread(run_qmail_qmqpc, "127.0.0.1", daemon.qmqp, message, envelope)
    assert result.exit_code == 0
    (stored,) = delivered(tmp_path)
    assert stored.endswith(message)
    assert b"Return-Path: <alice@example.org>\n" in stored
    assert stored.count(b"Delivered-To: ") == 2


async def test_stock_qmail_qmqpc_gets_31_for_a_permanent_refusal(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    envelope = b"Falice@example.org\0\0"  # qmail-qmqpc sends a request without recipients: D 5.5.1
    result = await asyncio.to_thread(
        run_qmail_qmqpc, "127.0.0.1", daemon.qmqp, b"Subject: x\n\nx\n", envelope
    )
    assert result.exit_code == 31
    assert delivered(tmp_path) == []
