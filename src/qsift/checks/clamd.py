"""Scan a message with clamd (ClamAV's daemon) over a unix socket or TCP, with INSTREAM.

The message goes as it is, in chunks, and clamd unpacks it (MIME, archives, packed executables) itself;
nothing has to be written where clamd can read it, so clamd may run on another host or as another user.

Rules this module keeps, because each one costs mail or safety when broken:
- `scan` never raises for anything clamd does. Refused, timed out, reset, garbage: each is
  `VirusResult(error=...)`, and the caller decides what a failed scanner means (scanners.py).
- A message larger than clamd's StreamMaxLength is not sent and not called clean: clamd would cut the
  stream and answer an error anyway, after we had sent it megabytes. The answer is "unchecked" (not an
  error: clamd is fine, and asking again would not help), whether we saw the size first or clamd did.
- A connection that timed out or broke is closed, never reused: its next reply would be the old one.

Connections are reused through IDSESSION: up to `sessions` idle sessions are kept, and each scan takes one
(or opens one), so a busy filter does not pay a connect per message. clamd ends a session on its own
(IdleTimeout, restart), and the loss shows only when the session is next used; a scan that loses a reused
session is therefore retried once on a fresh one. Scanning is idempotent, so the retry cannot harm; a
fresh connection that breaks is not retried, since the message itself may be what broke clamd.

Each scan sends its command, its chunks and the end marker, then reads one reply. The manual's warning
that replies may arrive while the client still writes applies to clients that pipeline several commands;
with one command in flight the only early reply is "INSTREAM size limit exceeded", after which clamd
closes. So the client looks for a reply between chunks, and after a failed write still reads the reply
clamd left behind.

Why plain non-blocking sockets (loop.sock_*) and not asyncio streams: a stream transport that fails a
write closes the socket at once, throwing away the reply clamd sent before closing; and a stream sees a
session's EOF only once the loop has read it, where a socket can be asked (MSG_PEEK) right before reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import IO

from qsift.checks.scanners import ScannerAddress, VirusResult, parse_scanner_address
from qsift.errors import ConfigError, ProtocolError
from qsift.wire import clamd as wire

_READ_SIZE = 4096


#: The address type clamd's tests and callers name; the parser is every scanner client's.
ClamdAddress = ScannerAddress


def parse_address(address: str) -> ScannerAddress:
    """`unix:/path`, `host:port`, `[v6]:port` (clamd.conf's LocalSocket, TCPAddr and TCPSocket)."""
    return parse_scanner_address(address, default_port=None, what="clamd")


class _Failed(Exception):
    """The scan cannot be answered on this connection; the text goes into VirusResult.error."""


class _Lost(_Failed):
    """The connection broke before a reply: on a reused session, clamd has likely closed it."""


@dataclass
class _Session:
    """One connection in an IDSESSION; `last_request` numbers the commands sent (clamd counts from 1)."""

    sock: socket.socket
    parser: wire.ReplyParser = field(default_factory=wire.ReplyParser)
    replies: list[wire.Reply] = field(default_factory=list)
    eof: bool = False
    last_request: int = 0
    reused: bool = False
    #: Bytes to send before the next command (zIDSESSION on a new connection), sent with it.
    prefix: bytes = b""

    def idle_and_open(self) -> bool:
        """Whether clamd kept the session open and said nothing since the last reply."""
        if self.replies or self.parser.pending or self.eof:
            return False
        try:
            # b"" is clamd's close (IdleTimeout, restart); bytes are something nobody asked for.
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def take(self, data: bytes) -> None:
        if data:
            self.replies += self.parser.feed(data)
        else:
            self.eof = True

    def poll(self) -> bool:
        """Read what clamd sent, without waiting; True if it answered or closed."""
        try:
            self.take(self.sock.recv(_READ_SIZE))
        except BlockingIOError:
            return False
        return bool(self.replies) or self.eof

    def end(self) -> None:
        """Close with zEND, so clamd logs an orderly end; without waiting, as nothing comes back."""
        with contextlib.suppress(OSError):
            self.sock.send(wire.command("END"))
        self.sock.close()


class ClamdScanner:
    """A `VirusScanner` that asks one clamd."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        chunk_size: int = 256 * 1024,
        max_stream: int = 25 * 1024 * 1024,
        sessions: int = 4,
    ) -> None:
        if not 0 < chunk_size <= wire.MAX_CHUNK:
            raise ConfigError(f"clamd {name}: chunk size {chunk_size} out of range")
        self.name = name
        self.address = parse_address(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.chunk_size = chunk_size
        #: clamd's StreamMaxLength: larger messages are not sent.
        self.max_stream = max_stream
        #: Idle sessions kept for reuse; 0 opens and ends a session per scan.
        self.sessions = sessions
        self._idle: list[_Session] = []

    # --- the VirusScanner protocol --------------------------------------------------------------------

    async def scan(self, message: IO[bytes], size: int) -> VirusResult:
        if size > self.max_stream:
            return self._unchecked(f"larger than StreamMaxLength ({size} > {self.max_stream} bytes)")
        start = _tell(message)
        for attempt in (1, 2):
            try:
                session = await self._acquire()
            except _Failed as exc:
                return self._error(str(exc))
            try:
                reply = await self._instream(session, message, size)
            except _Lost as exc:
                session.sock.close()
                if attempt == 1 and session.reused and start is not None and _seek(message, start):
                    continue
                return self._error(str(exc))
            except _Failed as exc:
                session.sock.close()
                return self._error(str(exc))
            except BaseException:
                # Cancelled mid-exchange: the session is out of step, so it must not be reused.
                session.sock.close()
                raise
            scan = wire.parse_scan_reply(reply.text)
            if scan.status == "error":
                # clamd in trouble, or not clamd at all: a fresh connection is the safer next try.
                session.sock.close()
            else:
                self._release(session)
            return self._result(scan)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- health ---------------------------------------------------------------------------------------

    async def ping(self) -> str:
        """clamd's VERSION line ("ClamAV 1.0.7/27505/..."), or "" when clamd cannot be asked."""
        try:
            sock = await self._connect()
        except _Failed:
            return ""
        session = _Session(sock)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.get_running_loop().sock_sendall(sock, wire.command("VERSION"))
                version = (await _read_reply(session)).text
        except (_Failed, ProtocolError, TimeoutError, OSError):
            return ""
        finally:
            sock.close()
        return version if version.startswith("ClamAV ") else ""

    async def close(self) -> None:
        """End every idle session (zEND), so clamd sees orderly closes at shutdown."""
        idle, self._idle = self._idle, []
        for session in idle:
            session.end()

    # --- sessions -------------------------------------------------------------------------------------

    async def _acquire(self) -> _Session:
        while self._idle:
            session = self._idle.pop()
            if session.idle_and_open():
                session.reused = True
                return session
            session.sock.close()
        return _Session(await self._connect(), prefix=wire.command("IDSESSION"))

    def _release(self, session: _Session) -> None:
        if len(self._idle) < self.sessions:
            self._idle.append(session)
        else:
            session.end()

    async def _connect(self) -> socket.socket:
        address = self.address
        try:
            async with asyncio.timeout(self.connect_timeout):
                if address.path is not None:
                    return await _connect_unix(address.path)
                assert address.host is not None
                assert address.port is not None
                return await _connect_tcp(address.host, address.port)
        except TimeoutError:
            raise _Failed(f"connect to clamd at {address.describe()} timed out") from None
        except OSError as exc:
            raise _Failed(f"cannot connect to clamd at {address.describe()}: {exc.strerror or exc}") from None

    # --- one scan -------------------------------------------------------------------------------------

    async def _instream(self, session: _Session, message: IO[bytes], size: int) -> wire.Reply:
        session.last_request += 1
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    await self._send_stream(session, message, size)
                except OSError as exc:
                    # clamd may have answered and closed (size limit): its reply is still readable.
                    try:
                        reply = await _read_reply(session)
                    except (_Failed, OSError):
                        raise _Lost(f"connection to clamd lost while sending: {exc}") from None
                else:
                    reply = await _read_reply(session)
        except TimeoutError:
            raise _Failed(f"timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise _Lost(f"connection to clamd lost: {exc}") from None
        except ProtocolError as exc:
            raise _Failed(str(exc)) from None
        if reply.request not in (session.last_request, None):
            raise _Failed(f"clamd answered request {reply.request}, expected {session.last_request}")
        return reply

    async def _send_stream(self, session: _Session, message: IO[bytes], size: int) -> None:
        loop = asyncio.get_running_loop()
        head = session.prefix + wire.command("INSTREAM")
        session.prefix = b""
        left = size
        while left > 0:
            chunk = message.read(min(self.chunk_size, left))
            if not chunk:
                raise _Failed(f"message ended {left} bytes short of its size {size}")
            left -= len(chunk)
            data = head + wire.instream_chunk(chunk)
            head = b""
            if not left:
                # The end marker goes with the last chunk: a small message is one send, one segment.
                await loop.sock_sendall(session.sock, data + wire.INSTREAM_END)
                return
            await loop.sock_sendall(session.sock, data)
            if session.poll():
                return  # clamd answered before the end: the stream is refused
        await loop.sock_sendall(session.sock, head + wire.INSTREAM_END)

    # --- results --------------------------------------------------------------------------------------

    def _result(self, scan: wire.ScanReply) -> VirusResult:
        if scan.status == "found":
            return VirusResult(self.name, names=scan.names)
        if scan.status == "ok":
            return VirusResult(self.name)
        if "size limit exceeded" in scan.message:
            # clamd's StreamMaxLength is below `max_stream`: the configuration is wrong, but the message
            # is still one clamd will never check, the same answer as when it is not sent.
            return self._unchecked(f"larger than StreamMaxLength of clamd, which said {scan.message!r}")
        return self._error(f"clamd: {scan.message}")

    def _error(self, text: str) -> VirusResult:
        return VirusResult(self.name, error=f"{text} ({self.address.describe()})")

    def _unchecked(self, text: str) -> VirusResult:
        return VirusResult(self.name, unchecked=f"{text} ({self.address.describe()})")


async def _read_reply(session: _Session) -> wire.Reply:
    """The next whole reply; _Lost if clamd closes first. The caller bounds the wait."""
    loop = asyncio.get_running_loop()
    while not session.replies:
        if session.eof:
            raise _Lost("clamd closed the connection without a reply")
        session.take(await loop.sock_recv(session.sock, _READ_SIZE))
    # One command is in flight, so a second reply would be one nobody asked for.
    if len(session.replies) > 1 or session.parser.pending:
        raise ProtocolError(f"clamd sent more than one reply: {session.replies[1:] or 'a partial one'}")
    return session.replies.pop()


async def _connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return await _connected(sock, path)


async def _connect_tcp(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    failure: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, where in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        try:
            sock = await _connected(socket.socket(family, kind, proto), where)
        except OSError as exc:
            failure = exc
            continue
        # The command, the chunks and the end marker go as separate sends; Nagle would hold the last one
        # back until clamd acknowledged the one before (a delayed ACK: 40 ms per scan).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure


async def _connected(sock: socket.socket, where: str | tuple[object, ...]) -> socket.socket:
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, where)
    except BaseException:
        sock.close()
        raise
    return sock


def _tell(message: IO[bytes]) -> int | None:
    try:
        return message.tell()
    except (OSError, ValueError):
        return None


def _seek(message: IO[bytes], position: int) -> bool:
    try:
        message.seek(position)
    except (OSError, ValueError):
        return False
    return True
