"""ContentChecks decodes in threads of its own, never more than content.DECODER_THREADS at once (each
extra thread a worker had cost it memory: docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from qsift.checks import content
from qsift.checks.content import DECODER_THREADS, CheckSettings
from qsift.pipeline.checking import ContentChecks

MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.net\r\nDate: Thu, 3 Dec 2026 20:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\nSubject: x\r\n\r\nhello\r\n"
)


async def test_messages_are_decoded_in_its_own_few_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    decode = content.check_message
    threads: list[str] = []
    at_once = [0, 0]  # now, most
    counting = threading.Lock()

    def watched(*args: Any, **kwargs: Any) -> content.Verdict:
        with counting:
            threads.append(threading.current_thread().name)
            at_once[0] += 1
            at_once[1] = max(at_once)
        time.sleep(0.05)  # long enough for every message to be waiting at once
        with counting:
            at_once[0] -= 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(content, "check_message", watched)
    checks = ContentChecks(CheckSettings())
    verdicts = await asyncio.gather(*(checks.offline(MESSAGE) for _ in range(8)))
    await checks.close()
    assert [v.category.name for v in verdicts] == ["CLEAN"] * 8
    assert len(threads) == 8 and all(name.startswith("qsift-decode") for name in threads)
    assert at_once[1] == len(set(threads)) == DECODER_THREADS


async def test_after_close_nothing_more_is_decoded() -> None:
    checks = ContentChecks(CheckSettings())
    assert (await checks.offline(MESSAGE)).category.name == "CLEAN"
    await checks.close()
    with pytest.raises(RuntimeError, match="after shutdown"):
        await checks.offline(MESSAGE)
