"""Forward into a maildir: the demo target, and a way to run qsift with no MTA behind it.

Delivery follows the maildir rules (write in tmp/, fsync, rename into new/) so a reader never sees a
half-written file and a crash never leaves a message that looks delivered. The message is stored in
qmail's LF form with a Return-Path and one Delivered-To per recipient, as qmail-local writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time

from qsift.answers import Row
from qsift.model import Delivered, Envelope, ForwardResult, RecipientResult
from qsift.spool import MessageBody
from qsift.wire.smtp_data import to_lf

_counter = itertools.count(1)


class MaildirForwarder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.method = f"maildir:{path}"

    def close(self) -> None:
        """Nothing is kept open between messages."""

    async def forward(
        self,
        envelope: Envelope,
        spool: MessageBody,
        client_gone: asyncio.Event | None = None,
        delivered: Delivered | None = None,
    ) -> ForwardResult:
        try:
            name = await asyncio.to_thread(self._deliver, envelope, spool)
        except OSError as exc:
            reply = Row.MAILDIR_FAILED.reply(error=exc.strerror or exc)
            return ForwardResult(self.method, tuple(RecipientResult(r, reply) for r in envelope.recipients))
        reply = Row.MAILDIR_DELIVERED.reply(name=name)
        results = tuple(RecipientResult(r, reply) for r in envelope.recipients)
        if delivered is not None:
            await delivered(results)
        return ForwardResult(self.method, results, queued_as=f"delivered as {name}")

    def _deliver(self, envelope: Envelope, spool: MessageBody) -> str:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        name = f"{int(time.time())}.P{os.getpid()}Q{next(_counter)}.{socket.gethostname()}"
        tmp_path = os.path.join(self.path, "tmp", name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_trace_headers(envelope))
                for chunk in to_lf(spool.chunks()):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp_path, os.path.join(self.path, "new", name))
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        _fsync_dir(os.path.join(self.path, "new"))
        return name


def _trace_headers(envelope: Envelope) -> bytes:
    lines = [f"Return-Path: <{envelope.sender}>\n"]
    lines += [f"Delivered-To: {address}\n" for address in envelope.addresses]
    return "".join(lines).encode("utf-8", "surrogateescape")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
