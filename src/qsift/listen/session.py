"""What every listener's session needs: time limits, the peer, a client-gone watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from qsift.errors import ClientTimeout
from qsift.model import Recipient

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """A request read to its end: the envelope's addresses (the body is in the spool)."""

    sender: str
    recipients: tuple[Recipient, ...]


def peer_ip(writer: asyncio.StreamWriter) -> str | None:
    """The client's IP address, or None on a unix socket."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


async def read_with_limits(step: Awaitable[T], seconds: float, *, what: str) -> T:
    """Await one step of reading a client, turning a stall into ClientTimeout."""
    try:
        # asyncio.timeout, not wait_for: wait_for wraps every read in a new task (Python 3.11), a
        # cost paid several times per message.
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError:
        raise ClientTimeout(f"{what} silent for {seconds:.0f} s") from None


@dataclass(frozen=True)
class Deadline:
    """When what the client is sending (a command line, a request) must be complete, in loop time.

    Unlike a silence limit, which every byte restarts, a client sending a byte a second does not push a
    deadline back (the slowloris attack; Postfix's smtpd_per_record_deadline for the same reason).
    """

    at: float
    seconds: float
    what: str

    @classmethod
    def after(cls, seconds: float, what: str) -> Deadline:
        return cls(asyncio.get_running_loop().time() + seconds, seconds, what)


async def read_within(step: Awaitable[T], silence: float, deadline: Deadline, *, what: str) -> T:
    """Await one read of the client under its silence limit and the deadline of what it is sending."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(min(loop.time() + silence, deadline.at)):
            return await step
    except TimeoutError:
        if loop.time() >= deadline.at:
            raise ClientTimeout(f"{deadline.what} not complete within {deadline.seconds:.0f} s") from None
        raise ClientTimeout(f"{what} silent for {silence:.0f} s") from None


class ClientGoneWatch:
    """Sets `event` when the client closes its side while we work on its message.

    A QMQP client sends nothing after its request, so any read result is either EOF (gone) or a
    protocol violation we ignore. SMTP clients may pipeline a QUIT behind DATA: those bytes go to
    `on_data` so the session can process them after answering.
    """

    def __init__(self, reader: asyncio.StreamReader, on_data: Callable[[bytes], None] | None = None) -> None:
        self._reader = reader
        self._on_data = on_data
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        try:
            while data := await self._reader.read(4096):
                if self._on_data is not None:
                    self._on_data(data)
        except (ConnectionError, OSError):
            pass
        self.event.set()

    async def __aenter__(self) -> ClientGoneWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
