"""The listener shell as a case table: what serve_connection does around a session, on real loopback sockets.

The session here is the smallest one that speaks a protocol (it writes a refusal's SMTP line); the QMQP
and SMTP sessions themselves are tested through the daemon in tests/integration.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qsift.answers import Row, reply_for_error
from qsift.config import loads
from qsift.errors import ClientTimeout, TooBusy, TooManyConnections
from qsift.listen.shell import Listening, serve_connection
from qsift.model import Reply
from qsift.pipeline import build_pipeline

Serve = Callable[[], Awaitable[None]]


class RecordingSession:
    """Serves by running `serve`; refuses by writing the reply's SMTP line, and remembers it."""

    name = "TEST"

    def __init__(self, writer: asyncio.StreamWriter, serve: Serve, served: list[str | None]) -> None:
        self._writer = writer
        self._serve = serve
        self._served = served

    async def serve(self) -> None:
        self._served.append(None)
        await self._serve()

    async def refuse(self, reply: Reply) -> None:
        self._served.append(reply.smtp_line())
        self._writer.write(reply.smtp_line().encode() + b"\r\n")
        await self._writer.drain()


async def _raise(error: BaseException) -> None:
    raise error


async def _return() -> None:
    return None


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Listening]:
    config = loads(f'state_dir = "{tmp_path}"\n')
    pipeline = build_pipeline(config)
    try:
        yield Listening(config.listeners[0], pipeline, None)
    finally:
        await pipeline.close()


async def _connect(listening: Listening, serve: Serve, served: list[str | None]) -> tuple[bytes, bool]:
    """One connection to a shell serving `serve`: what the client read, and whether the shell closed it."""

    def open_session(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str | None
    ) -> RecordingSession:
        return RecordingSession(writer, serve, served)

    server = await asyncio.start_server(
        functools.partial(serve_connection, listening, open_session), "127.0.0.1", 0
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(30):
            heard = await reader.read()  # to EOF: the shell closes every connection it served
        writer.close()
        await writer.wait_closed()
    return heard, reader.at_eof()


# (ACL lets the client in, what the session's serve does, what the client hears, the log line)
CASES = [
    (False, _return, Row.ACCESS_DENIED.reply().smtp_line(), "TEST: access denied to [127.0.0.1] on"),
    (True, _return, None, None),
    (True, functools.partial(_raise, TooBusy("too busy, try later")), Row.TOO_BUSY.reply().smtp_line(), None),
    (
        True,
        functools.partial(_raise, ClientTimeout("client silent")),
        None,
        "client silent; connection dropped",
    ),
    (
        True,
        functools.partial(_raise, ConnectionResetError("reset")),
        None,
        "connection from [127.0.0.1] lost",
    ),
    (True, functools.partial(_raise, RuntimeError("a bug")), None, "internal error serving [127.0.0.1]"),
]


@pytest.mark.parametrize(("allowed", "serve", "refusal", "logged"), CASES)
async def test_shell(
    listening: Listening,
    caplog: pytest.LogCaptureFixture,
    allowed: bool,
    serve: Serve,
    refusal: str | None,
    logged: str | None,
) -> None:
    if not allowed:
        listening = Listening(replace(listening.listener, acl=()), listening.pipeline, None)
    served: list[str | None] = []
    with caplog.at_level(logging.INFO, logger="qsift"):
        heard, closed = await _connect(listening, serve, served)
    assert closed
    assert served == ([] if not allowed else [None]) + ([refusal] if refusal else [])
    assert heard == (refusal.encode() + b"\r\n" if refusal else b"")
    if logged is not None:
        assert logged in caplog.text


async def test_past_the_per_client_cap_a_connection_is_refused_and_a_closed_one_gives_its_place_back(
    listening: Listening, caplog: pytest.LogCaptureFixture
) -> None:
    limits = replace(listening.listener.limits, max_connections_per_client=1)
    capped = replace(listening.listener, limits=limits, client_limit_exceptions=())
    listening = Listening(capped, listening.pipeline, None)
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        holding.set()
        await release.wait()

    served: list[str | None] = []
    first = asyncio.create_task(_connect(listening, hold, served))
    async with asyncio.timeout(30):
        await holding.wait()
    with caplog.at_level(logging.INFO, logger="qsift"):
        heard, closed = await _connect(listening, _return, served)
    too_many = reply_for_error(TooManyConnections("too many connections from [127.0.0.1]")).smtp_line()
    assert (heard, closed) == (too_many.encode() + b"\r\n", True)
    assert "TEST: [127.0.0.1] refused on" in caplog.text
    release.set()
    assert await first == (b"", True)
    assert await _connect(listening, _return, served) == (b"", True)
    assert served == [None, too_many, None]


def _limited(listening: Listening, spool_dir: str | None = None, **limits: Any) -> Listening:
    listener = replace(listening.listener, limits=replace(listening.listener.limits, **limits))
    return Listening(listener, listening.pipeline, spool_dir)


async def test_a_spool_failure_is_kept_and_the_rest_of_the_content_is_dropped(
    listening: Listening, tmp_path: Path
) -> None:
    """The spool spills to a directory that is not there: the first failure is kept to answer at the end."""
    failing = _limited(listening, str(tmp_path / "missing"), memory_spool=8)
    async with failing.message() as content:
        content.write(b"12345")
        content.write(b"past the memory limit")
        first = content.failure
        content.write(b"more")
        assert first is not None and "cannot spool message" in str(first)
        assert (content.failure, content.spool.size) == (first, 5)


async def test_a_message_past_the_slots_is_too_busy_and_a_finished_one_gives_its_slot_back(
    listening: Listening,
) -> None:
    one_slot = _limited(listening, max_sessions=1, busy_wait=0.05)
    async with one_slot.message():
        with pytest.raises(TooBusy):
            async with one_slot.message():
                pass
    async with one_slot.message() as content:
        content.write(b"x")
        assert (content.failure, one_slot.slots.in_use) == (None, 1)
    assert one_slot.slots.in_use == 0
