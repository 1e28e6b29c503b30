"""This process's share of max_servers: how many messages it carries at once, and how many it took so far.

The one mutable part of a pipeline. A message past the limit waits up to `busy_wait` seconds for a slot,
then hears "too busy, try later"; the acceptors stop taking connections while every slot is taken
(serve/accept.py), and the daemon recycles its worker after max_requests messages (`handled`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class MessageSlots:
    max_in_progress: int = 1_000_000
    busy_wait: float = 10.0
    #: Messages handed to the pipeline so far (max_requests counts them).
    handled: int = field(default=0, init=False)
    # Made on first use: a Semaphore belongs to the event loop it first waits on.
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    @property
    def full(self) -> bool:
        """Every slot is taken."""
        return self._slots is not None and self._slots.locked()

    async def take(self) -> bool:
        """Count a message and wait up to `busy_wait` for its slot; False when none came free."""
        self.handled += 1
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_progress)
        try:
            async with asyncio.timeout(self.busy_wait):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True

    def give_back(self) -> None:
        assert self._slots is not None  # taken before
        self._slots.release()
