"""End-to-end plumbing for tests: a qsift daemon in the test's event loop and plain protocol clients.

The clients here are written independently of qsift.wire on purpose, so a symmetric bug in a codec
cannot make its own tests pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
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
) -> AsyncIterator[RunningDaemon]:
    """Start qsift on free loopback ports with the given forward method; stop and drain on exit."""
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
    daemon = Daemon(config.from_mapping(raw), drain_timeout=5, handle_signals=False)
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
