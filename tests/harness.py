"""End-to-end plumbing for tests: a qsift daemon in the test's event loop and plain protocol clients.

The clients here are written independently of qsift.wire on purpose, so a symmetric bug in a codec
cannot make its own tests pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsift import config
from qsift.serve.daemon import Daemon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningDaemon:
    daemon: Daemon
    ports: dict[str, int]
    state_dir: Path

    @property
    def qmqp(self) -> int:
        return self.ports["qmqp"]

    @property
    def smtp(self) -> int:
        return self.ports["smtp"]

    @property
    def lmtp(self) -> int:
        return self.ports["lmtp"]


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path,
    forward: str,
    *,
    protocols: tuple[str, ...] = ("qmqp", "smtp", "lmtp"),
    limits: Mapping[str, Any] | None = None,
    listen_extra: Mapping[str, Any] | None = None,
    top: Mapping[str, Any] | None = None,
    forward_extra: Mapping[str, Any] | None = None,
    housekeeping_every: float = 3600.0,
) -> AsyncIterator[RunningDaemon]:
    """Start qsift on free loopback ports with the given forward method; stop and drain on exit. The
    configuration is built as a file's would be (`qsift config check`), every problem at once."""
    ports = {protocol: free_port() for protocol in protocols}
    raw: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "tmp_dir": str(tmp_path),
        "myhostname": "qsift.test",
        "log_level": 5,
        "limits": dict(limits or {}),
        "forward": {"method": forward, **(forward_extra or {})},
        "listen": [
            {"protocol": protocol, "address": f"127.0.0.1:{port}", **(listen_extra or {})}
            for protocol, port in ports.items()
        ],
        **(top or {}),
    }
    daemon = Daemon(
        config.from_mapping(raw), drain_timeout=5, handle_signals=False, housekeeping_every=housekeeping_every
    )
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert daemon.ready.is_set(), "daemon did not bind within 10 s"
    try:
        yield RunningDaemon(daemon, ports, tmp_path / "state")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def qmqp_request(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    inner = netstring(message) + netstring(sender) + b"".join(netstring(r) for r in recipients)
    return netstring(inner)


def parse_qmqp_response(data: bytes) -> str:
    """The response's payload ('K...', 'Z...', 'D...'); '' if the server closed without answering."""
    if not data:
        return ""
    length, colon, rest = data.partition(b":")
    assert colon and length.isdigit(), data[:50]
    payload = rest[: int(length)]
    assert rest[int(length) :] == b",", data[-50:]
    return payload.decode("utf-8", "replace")


async def qmqp_exchange(port: int, request: bytes, *, timeout: float = 30.0) -> str:
    """Send raw request bytes over QMQP, read to EOF, return the response payload ('' if none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_qmqp_response(data)


async def qmqp_send(port: int, message: bytes, sender: bytes, recipients: list[bytes], **kw: float) -> str:
    return await qmqp_exchange(port, qmqp_request(message, sender, recipients), **kw)


@dataclass
class SmtpTranscript:
    """What an SMTP/LMTP server answered at each step of one transaction."""

    greeting: tuple[int, str]
    mail: tuple[int, str] | None = None
    rcpts: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None
    #: The replies after the final dot: one for SMTP, one per accepted recipient for LMTP.
    final: list[tuple[int, str]] = field(default_factory=list)


class _LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def reply(self) -> tuple[int, str]:
        """One whole reply, multi-line ones joined; (0, '') if the server closed."""
        lines = []
        while True:
            while b"\r\n" not in self._buffer:
                data = self._sock.recv(65536)
                if not data:
                    return (0, "")
                self._buffer += data
            line, _, self._buffer = self._buffer.partition(b"\r\n")
            lines.append(line.decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(item[4:] for item in lines)


def _dot_stuffed(message: bytes) -> bytes:
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def smtp_transaction(
    port: int,
    message: bytes,
    sender: bytes,
    recipients: list[bytes],
    *,
    lmtp: bool = False,
    timeout: float = 30.0,
    mail_params: bytes = b"",
) -> SmtpTranscript:
    """One message over plain SMTP (or LMTP), step by step, without pipelining; blocking."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = _LineReader(sock)
        transcript = SmtpTranscript(reader.reply())
        if transcript.greeting[0] != 220:
            return transcript
        sock.sendall(b"LHLO client.test\r\n" if lmtp else b"EHLO client.test\r\n")
        assert reader.reply()[0] == 250
        sock.sendall(b"MAIL FROM:<" + sender + b">" + mail_params + b"\r\n")
        transcript.mail = reader.reply()
        accepted = 0
        for recipient in recipients:
            sock.sendall(b"RCPT TO:<" + recipient + b">\r\n")
            transcript.rcpts.append(reader.reply())
            accepted += transcript.rcpts[-1][0] // 100 == 2
        sock.sendall(b"DATA\r\n")
        transcript.data = reader.reply()
        if transcript.data[0] != 354:
            return transcript
        sock.sendall(_dot_stuffed(message))
        for _ in range(accepted if lmtp else 1):
            transcript.final.append(reader.reply())
        sock.sendall(b"QUIT\r\n")
        reader.reply()
    return transcript


async def smtp_send(
    port: int, message: bytes, sender: bytes, recipients: list[bytes], **kw: Any
) -> SmtpTranscript:
    return await asyncio.to_thread(smtp_transaction, port, message, sender, recipients, **kw)
