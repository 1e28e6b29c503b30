"""The message from fd 0, with its size known before the first byte goes out and never held whole.

QMQP puts the request's length first, so the size must be known before sending. A regular file on fd 0
is measured with fstat and read in place; a pipe (what qmail-smtpd gives) is read to EOF, in memory up
to MEMORY_LIMIT and past that into an unnamed file in $TMPDIR.
"""

from __future__ import annotations

import errno
import os
import stat

from qsift.queue_client.outcome import Fatal
from qsift.wire.qmail_queue import ExitCode

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterator

#: Messages up to this size stay in memory; most mail is far smaller, and a temp file costs syscalls.
MEMORY_LIMIT = 1 << 20
READ_SIZE = 1 << 17
SEND_SIZE = 1 << 18


class Message:
    """The message bytes: in memory, or `length` bytes of a file descriptor from `offset` on.

    A `prefix` (qsift-queue's X-Qsift-Client field) goes to the filter before the message's first byte;
    `size` counts it, so the QMQP frame built from `size` holds both.
    """

    __slots__ = ("_data", "_fd", "_length", "_offset", "_prefix")

    def __init__(
        self, length: int, *, data: bytes | None = None, fd: int = -1, offset: int = 0, prefix: bytes = b""
    ) -> None:
        self._length = length
        self._data = data
        self._fd = fd
        self._offset = offset
        self._prefix = prefix

    @property
    def size(self) -> int:
        """The bytes the filter is sent as the message: the prefix and the message as read."""
        return len(self._prefix) + self._length

    def with_prefix(self, prefix: bytes) -> Message:
        """The same message with `prefix` before its first byte; nothing is copied, big or small."""
        return Message(self._length, data=self._data, fd=self._fd, offset=self._offset, prefix=prefix)

    def request_pieces(self, head: bytes, tail: bytes) -> Iterator[bytes]:
        """The whole request in pieces of bounded size: `head`, the prefix, the message, `tail`."""
        if self._data is not None:
            # One write for a small request: it leaves in as few segments as TCP allows.
            yield head + self._prefix + self._data + tail
            return
        yield head + self._prefix
        offset, end = self._offset, self._offset + self._length
        while offset < end:
            try:
                chunk = os.pread(self._fd, min(SEND_SIZE, end - offset), offset)
            except OSError as exc:
                raise Fatal(ExitCode.READ_ERROR, f"cannot read the message: {exc.strerror}") from None
            if not chunk:
                raise Fatal(ExitCode.READ_ERROR, "the message file shrank while it was sent")
            offset += len(chunk)
            yield chunk
        yield tail


def read_message(fd: int, tmpdir: str) -> Message:
    """Read the message from `fd` to EOF (or measure it, for a regular file)."""
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            return Message(max(0, info.st_size - offset), fd=fd, offset=offset)
    except OSError as exc:
        raise Fatal(ExitCode.READ_ERROR, f"cannot read the message: {exc.strerror}") from None
    chunks: list[bytes] = []
    size = 0
    while data := _read(fd):
        chunks.append(data)
        size += len(data)
        if size > MEMORY_LIMIT:
            return _spool_rest(fd, tmpdir, chunks, size)
    return Message(size, data=b"".join(chunks))


def _spool_rest(fd: int, tmpdir: str, chunks: list[bytes], size: int) -> Message:
    spool = _open_spool(tmpdir)
    try:
        for chunk in chunks:
            _write(spool, chunk)
        chunks.clear()
        while data := _read(fd):
            _write(spool, data)
            size += len(data)
    except BaseException:
        os.close(spool)
        raise
    return Message(size, fd=spool, offset=0)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, READ_SIZE)
    except OSError as exc:
        raise Fatal(ExitCode.READ_ERROR, f"cannot read the message: {exc.strerror}") from None


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise Fatal(ExitCode.WRITE_ERROR, f"cannot write the temp file: {exc.strerror}") from None


def _open_spool(tmpdir: str, tmpfile_flag: int | None = getattr(os, "O_TMPFILE", None)) -> int:
    """An unnamed file in `tmpdir` that vanishes with the process."""
    if tmpfile_flag is not None:
        try:
            return os.open(tmpdir, tmpfile_flag | os.O_RDWR, 0o600)
        except OSError as exc:
            # EISDIR: a kernel without O_TMPFILE; EOPNOTSUPP: a file system without it.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise Fatal(ExitCode.WRITE_ERROR, _cannot_create(tmpdir, exc)) from None
    # Imported here only: tempfile costs about 9 ms, more than the rest of qsift-queue's imports.
    import tempfile

    try:
        spool, path = tempfile.mkstemp(dir=tmpdir)
        os.unlink(path)
    except OSError as exc:
        raise Fatal(ExitCode.WRITE_ERROR, _cannot_create(tmpdir, exc)) from None
    return spool


def _cannot_create(tmpdir: str, exc: OSError) -> str:
    return f"cannot create a temp file in {tmpdir}: {exc.strerror}"
