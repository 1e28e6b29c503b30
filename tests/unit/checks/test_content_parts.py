"""`inspect` with virus scanners that are given the parts: the decoded leaves it keeps for them are gone
once it returns, fails or is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from qsift.checks.content import CheckSettings, inspect
from qsift.checks.scanner_config import SpamSettings
from qsift.checks.scanner_set import ScannerSet
from qsift.checks.spam import SpamdScanner
from qsift.checks.virus import CommandScanner
from qsift.decode.walk import DecodeLimits
from qsift.errors import ScannerFailure
from tests.unit.decode.test_walk import mail_with


def settings(tmp_path: Path) -> CheckSettings:
    # Every leaf over 1 KiB goes to a file in a private directory under tmp_path.
    return CheckSettings(decode=DecodeLimits(memory_threshold=1024), tmp_dir=str(tmp_path))


def scanners(tmp_path: Path, command: str) -> ScannerSet:
    scanner = CommandScanner(
        "cat", command, ("{}",), (0,), (1,), re.compile("(x)"), timeout=5, tmp_dir=str(tmp_path / "scan")
    )
    (tmp_path / "scan").mkdir(exist_ok=True)
    return ScannerSet(primary=[scanner], scan_parts=True)


def decode_dirs(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith("qsift-decode-")]


async def test_the_leaves_are_removed_after_the_scan(tmp_path: Path) -> None:
    raw = mail_with(os.urandom(50_000), "a.bin")
    verdict = await inspect(
        io.BytesIO(raw), lambda: io.BytesIO(raw), len(raw), settings(tmp_path), scanners(tmp_path, "true")
    )
    assert verdict.category.name == "CLEAN" and verdict.leaves is None
    assert verdict.scanner_errors == () and decode_dirs(tmp_path) == []


async def test_the_leaves_are_removed_when_the_scanners_fail(tmp_path: Path) -> None:
    raw = mail_with(os.urandom(50_000), "a.bin")
    # A scanner that cannot be run fails on the first part.
    with pytest.raises(ScannerFailure, match="virus scanner failure on "):
        await inspect(
            io.BytesIO(raw),
            lambda: io.BytesIO(raw),
            len(raw),
            settings(tmp_path),
            scanners(tmp_path, "/nonexistent/scanner"),
        )
    assert decode_dirs(tmp_path) == []


async def test_the_leaves_are_removed_when_the_spam_scanner_holds_the_message(tmp_path: Path) -> None:
    raw = mail_with(os.urandom(50_000), "a.bin")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    checking = replace(
        scanners(tmp_path, "true"),
        spam=SpamdScanner("sa", address, connect_timeout=2),
        spam_settings=SpamSettings(type="spamd", address=address, failure="tempfail"),
    )
    with pytest.raises(ScannerFailure, match="spam scanner failure"):
        await inspect(io.BytesIO(raw), lambda: io.BytesIO(raw), len(raw), settings(tmp_path), checking)
    assert decode_dirs(tmp_path) == []


async def test_the_leaves_of_a_cancelled_check_are_removed_when_the_decoder_ends(tmp_path: Path) -> None:
    raw = mail_with(os.urandom(30_000_000), "big.bin")
    task = asyncio.create_task(
        inspect(
            io.BytesIO(raw), lambda: io.BytesIO(raw), len(raw), settings(tmp_path), scanners(tmp_path, "true")
        )
    )
    assert await until(lambda: bool(decode_dirs(tmp_path))), "the decoder never spilled a leaf"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert await until(lambda: not decode_dirs(tmp_path))


async def until(condition: Callable[[], bool], seconds: float = 30) -> bool:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return True
        await asyncio.sleep(0.005)
    return condition()
