"""Who may talk to a listener, how many connections one client may hold, and how many messages at once.

QMQP has no authentication and relays anything (qmail-qmqpd(8)), so every TCP listener checks the
client against its ACL. A refused client hears a temporary answer: a wrong ACL must make mail wait,
never bounce.

An idle connection costs a file descriptor and a little memory, not a slot: slots count messages in
progress (received, scanned, forwarded), so 500 idle clients cannot make a real one wait. What bounds
idle and slow connections is the per-client cap here (Postfix's anvil) and the listeners' deadlines.
Messages past `max_sessions` wait a bounded time for a slot and are then told to try later, so overload
never turns into an unbounded queue or a deadlock (DESIGN.md invariant 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from qsift.errors import TooBusy, TooManyConnections
from qsift.observe import metrics
from qsift.policy.bank import Network


def _address(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_allowed(peer_ip: str | None, acl: Sequence[Network]) -> bool:
    """True if the peer's address is in one of the ACL's networks.

    Unix-socket peers pass: the socket file's mode guards them.
    """
    if peer_ip is None:
        return True
    address = _address(peer_ip)
    return address is not None and any(address in network for network in acl)


class ConnectionsPerClient:
    """At most `limit` connections open at once from one client address (0: no cap).

    Addresses in `exceptions` are not counted: on one host every qmail-smtpd's qsift-queue and every
    Postfix smtp process connects from 127.0.0.1, and capping them would throttle the site's own mail.
    Unix-socket peers are not counted either (the socket file's mode says who they are).
    """

    def __init__(self, limit: int, exceptions: Sequence[Network]) -> None:
        self.limit = limit
        self._exceptions = tuple(exceptions)
        self._open: Counter[str] = Counter()

    def _counted(self, peer_ip: str | None) -> str | None:
        if not self.limit or peer_ip is None:
            return None
        address = _address(peer_ip)
        if address is None:
            return peer_ip
        if any(address in network for network in self._exceptions):
            return None
        return str(address)

    @contextlib.contextmanager
    def connection(self, peer_ip: str | None) -> Iterator[None]:
        """Count one connection for its address while it lasts; TooManyConnections past the cap."""
        key = self._counted(peer_ip)
        if key is None:
            yield
            return
        if self._open[key] >= self.limit:
            raise TooManyConnections(f"too many connections from [{key}]")
        self._open[key] += 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]


def xforward_allowed(peer_ip: str | None, hosts: Sequence[Network]) -> bool:
    """True if the peer may name another client with XFORWARD: its address is in `hosts`.

    A Unix-socket peer counts as 127.0.0.1, as Postfix's smtpd counts a local client for
    smtpd_authorized_xforward_hosts.
    """
    return client_allowed("127.0.0.1" if peer_ip is None else peer_ip, hosts)


class SessionSlots:
    """At most `limit` messages in progress; a newcomer waits up to `wait` seconds for a slot.

    `listener` names them in the metrics. `on_release` callbacks run whenever a slot comes free, so the
    worker can take new connections again (serve/daemon.py stops accepting while the slots are full).
    """

    def __init__(self, limit: int, wait: float, listener: str = "") -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._wait = wait
        self.limit = limit
        self.listener = listener
        self.in_use = 0
        self.on_release: list[Callable[[], None]] = []

    @property
    def full(self) -> bool:
        """No slot free, or messages already waiting for one (a slot just released is theirs)."""
        return self._semaphore.locked()

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
            for callback in self.on_release:
                callback()
