"""Forward by running a qmail-queue program: message on fd 0, envelope on fd 1, custom error on fd 6.

This removes the HOWTO's second qmail-smtpd: qsift hands clean mail straight to the real
qmail-queue (`qmail-queue:/var/qmail/bin/qmail-queue`). The exit code is mapped as qmail.c maps it
(0 queued, 11-40 permanent, everything else temporary) and a notqmail-style custom error (`D…`/`Z…`
written to fd 6, exit 82) is read and passed on.

posix_spawn places the three pipes at exactly fds 0, 1 and 6 without a pre-exec hook (unsafe beside
the event loop's threads); every other descriptor of ours is close-on-exec (PEP 446).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import IO

from qsift.answers import Row
from qsift.model import Delivered, Envelope, ForwardResult, RecipientResult, Reply, address_bytes
from qsift.spool import MessageBody
from qsift.wire.qmail_queue import answer_for_exit, encode_envelope
from qsift.wire.smtp_data import to_lf

CUSTOM_ERROR_FD = 6
_MAX_CUSTOM_ERROR = 255  # qmail.c reads at most this much from the error pipe


class QmailQueueForwarder:
    def __init__(self, program: str, timeout: float) -> None:
        self.program = program
        self.timeout = timeout
        self.method = f"qmail-queue:{program}"

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
            status, custom = await asyncio.wait_for(self._run(envelope, spool), self.timeout)
        except TimeoutError:
            return self._result(envelope, _temp(f"{self.method} timed out after {self.timeout:.0f} s"))
        except OSError as exc:
            return self._result(envelope, _temp(f"cannot run {self.method}: {exc.strerror or exc}"))
        letter, text = answer_for_exit(status, custom)
        if letter == "K":
            reply = Row.QUEUED_BY_PROGRAM.reply(program=self.program)
            result = self._result(envelope, reply, queued_as=reply.text)
            if delivered is not None:
                await delivered(result.per_recipient)
            return result
        row = Row.PROGRAM_REFUSED if letter == "D" else Row.PROGRAM_FAILED
        return self._result(envelope, row.reply(method=self.method, text=text))

    def _result(self, envelope: Envelope, reply: Reply, queued_as: str | None = None) -> ForwardResult:
        results = tuple(RecipientResult(r, reply) for r in envelope.recipients)
        return ForwardResult(self.method, results, queued_as=queued_as)

    async def _run(self, envelope: Envelope, spool: MessageBody) -> tuple[int, bytes]:
        message_r, message_w = os.pipe()
        envelope_r, envelope_w = os.pipe()
        error_r, error_w = os.pipe()
        try:
            # posix_spawn returns as soon as the child exists (vfork); it does not wait for it.
            pid = os.posix_spawn(  # noqa: ASYNC221
                self.program,
                [self.program],
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, message_r, 0),
                    (os.POSIX_SPAWN_DUP2, envelope_r, 1),
                    (os.POSIX_SPAWN_DUP2, error_w, CUSTOM_ERROR_FD),
                ],
            )
        except BaseException:
            for fd in (message_w, envelope_w, error_r):
                os.close(fd)
            raise
        finally:
            for fd in (message_r, envelope_r, error_w):
                os.close(fd)
        message_pipe = os.fdopen(message_w, "wb", buffering=0)
        envelope_pipe = os.fdopen(envelope_w, "wb", buffering=0)
        error_pipe = os.fdopen(error_r, "rb", buffering=0)
        try:
            custom = await self._feed(envelope, spool, message_pipe, envelope_pipe, error_pipe)
        except BaseException:
            _kill(pid)
            await asyncio.to_thread(os.waitpid, pid, 0)
            raise
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        return _exit_code(status), custom

    async def _feed(
        self,
        envelope: Envelope,
        spool: MessageBody,
        message_pipe: IO[bytes],
        envelope_pipe: IO[bytes],
        error_pipe: IO[bytes],
    ) -> bytes:
        error_reader = asyncio.create_task(_read_pipe(error_pipe, _MAX_CUSTOM_ERROR))
        record = encode_envelope(
            address_bytes(envelope.sender), [address_bytes(a) for a in envelope.addresses]
        )
        try:
            # qmail-queue reads all of fd 0 before it looks at fd 1, so the order matters.
            await _write_pipe(message_pipe, to_lf(spool.chunks()))
            await _write_pipe(envelope_pipe, iter((record,)))
        except BrokenPipeError:
            # The program exited early (refused the message); its exit code says why.
            pass
        except BaseException:
            error_reader.cancel()
            raise
        finally:
            # Closing twice is harmless on a file object; the transports close theirs already.
            message_pipe.close()
            envelope_pipe.close()
        return await error_reader


class _PipeWriter(asyncio.BaseProtocol):
    """Flow control for a write pipe: wait while the kernel buffer is full, notice the reader leaving,
    and know when the pipe is closed (everything written, or the reader gone)."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = False
        self.closed = asyncio.Event()
        self.error: Exception | None = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.writable.set()
        self.closed.set()


async def _write_pipe(pipe: IO[bytes], chunks: Iterator[bytes]) -> None:
    """Write every chunk to a pipe without blocking the loop, then close it (EOF for the reader) once
    the reader has had every byte; BrokenPipeError if it went away first."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(_PipeWriter, pipe)
    try:
        for chunk in chunks:
            if protocol.lost:
                break
            transport.write(chunk)
            await protocol.writable.wait()
    except BaseException:
        transport.abort()
        raise
    if protocol.lost:  # the reader went away before the end
        raise BrokenPipeError
    # The transport may still hold up to its high-water mark (64 KiB) that the reader has not taken:
    # close() sends it, then the EOF. Going on before that (and closing the file under it) cut the end
    # off the message a slow qmail-queue was reading, which it then queued as if whole.
    transport.close()
    await protocol.closed.wait()
    if protocol.error is not None:
        raise BrokenPipeError from protocol.error


async def _read_pipe(pipe: IO[bytes], limit: int) -> bytes:
    """Read a pipe to EOF, keeping the first `limit` bytes.

    qmail.c reads to EOF too, so the program never blocks on a full pipe, and uses only the start.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    kept = b""
    try:
        while chunk := await reader.read(4096):
            kept += chunk[: max(0, limit - len(kept))]
    finally:
        transport.close()
    return kept


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    # Killed by a signal: qmail.c says "qq crashed", a temporary failure.
    return 81


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _temp(text: str) -> Reply:
    return Row.LOCAL_FAILURE.reply(detail=text)
