"""Who may talk to a listener, and how many at once.

QMQP has no authentication and relays anything (qmail-qmqpd(8)), so every TCP listener checks the
client against its ACL. A refused client hears a temporary answer: a wrong ACL must make mail wait,
never bounce. Sessions past `max_sessions` wait a bounded time for a slot and are then told to try
later, so overload never turns into an unbounded queue or a deadlock (DESIGN.md invariant 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Sequence

from qsift.config import Network
from qsift.errors import TooBusy
from qsift.observe import metrics


def client_allowed(peer_ip: str | None, acl: Sequence[Network]) -> bool:
    """True if the peer's address is in one of the ACL's networks.

    Unix-socket peers pass: the socket file's mode guards them.
    """
    if peer_ip is None:
        return True
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in acl)


def xforward_allowed(peer_ip: str | None, hosts: Sequence[Network]) -> bool:
    """True if the peer may name another client with XFORWARD: its address is in `hosts`.

    A Unix-socket peer counts as 127.0.0.1, as Postfix's smtpd counts a local client for
    smtpd_authorized_xforward_hosts.
    """
    return client_allowed("127.0.0.1" if peer_ip is None else peer_ip, hosts)


class SessionSlots:
    """At most `limit` sessions in progress; a newcomer waits up to `wait` seconds for a slot.

    `listener` names them in the metrics."""

    def __init__(self, limit: int, wait: float, listener: str = "") -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._wait = wait
        self.limit = limit
        self.listener = listener
        self.in_use = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._wait)
        except TimeoutError:
            metrics.busy(self.listener)
            raise TooBusy("too busy, try later") from None
        self.in_use += 1
        metrics.sessions_in_progress(self.listener, self.in_use)
        try:
            yield
        finally:
            self.in_use -= 1
            metrics.sessions_in_progress(self.listener, self.in_use)
            self._semaphore.release()
