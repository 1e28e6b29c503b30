"""Taking connections off a listening socket the workers share, only while this worker has room.

asyncio's own server accepts whatever arrives, so a worker whose slots were all taken would accept a
client only to tell it "too busy" while a sibling had free slots. This acceptor stops watching the
socket while its worker is full, and the kernel hands the connection to a worker that still watches
(every worker's event loop polls the same socket). When every worker is full, a connection would wait
in the backlog without end: so a full worker still takes what has waited `grace` seconds, and that
client waits its bounded `busy_wait` for a slot and then hears "try later" (DESIGN.md invariant 5).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from qsift.observe.log import logger

#: How long a full worker leaves waiting connections to siblings with room, in seconds.
FULL_WORKER_GRACE = 0.5
#: The pause after the process ran out of file descriptors or memory (asyncio's own server waits 1 s).
_RESOURCE_PAUSE = 1.0
#: Connections a full worker takes in one go: a bound, so a flood cannot keep its loop busy.
_MOST_AT_ONCE = 128
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor:
    """Accepts connections on `sock` for `protocols` while `has_room()`; `room_changed()` re-checks."""

    def __init__(
        self,
        sock: socket.socket,
        protocols: Callable[[], asyncio.Protocol],
        has_room: Callable[[], bool],
        grace: float = FULL_WORKER_GRACE,
    ) -> None:
        self.sock = sock
        self._protocols = protocols
        self._has_room = has_room
        self._grace = grace
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._watch()

    def stop(self) -> None:
        """Accept nothing more; connections already accepted still get their transport."""
        self._stopped = True
        self._unwatch()

    def room_changed(self) -> None:
        if not self._stopped and not self._watching and self._has_room():
            self._watch()

    def _watch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._watching:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_readable(self) -> None:
        if self._has_room():
            self._accept()
            return
        # Full: leave the connection to a sibling with room; take it ourselves only if none does.
        self._unwatch()
        self._timer = self._loop.call_later(self._grace, self._take_what_waited)

    def _take_what_waited(self) -> None:
        self._timer = None
        if self._stopped:
            return
        for _ in range(_MOST_AT_ONCE):
            if not self._accept():
                break
        if self._has_room():
            self._watch()
        else:
            self._timer = self._loop.call_later(self._grace, self._take_what_waited)

    def _accept(self) -> bool:
        """Accept one connection; False if none was waiting (or none could be taken)."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            logger.error(
                "cannot accept on %s: %s; pausing %.0f s", self.sock.getsockname(), exc, _RESOURCE_PAUSE
            )
            self._unwatch()
            self._timer = self._loop.call_later(_RESOURCE_PAUSE, self._watch)
            return False
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return True

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocols, conn)
        except OSError as exc:  # the client went away before its transport was made
            logger.info("connection lost before it was served: %s", exc)
            conn.close()
