"""The message body while qsift holds it: in memory up to a threshold, then in a private temp file.

Bodies can be 50 MiB and sessions many, so nothing keeps a whole large message in memory. The temp
directory is created 0700 at start-up; files in it are unlinked as soon as they are created (tempfile's
behaviour on POSIX), so a crash leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Protocol

from qsift.errors import SpoolError

DEFAULT_CHUNK = 64 * 1024


def make_private_dir(parent: str | None = None, prefix: str = "qsift-") -> str:
    """Create a fresh 0700 directory for message spools and return its path."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, 0o700)
    return path


class MessageBody(Protocol):
    """What a forward method reads: the spool itself, or the spool with edited headers (act/headers.py)."""

    @property
    def size(self) -> int: ...

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]: ...

    def head(self, limit: int) -> bytes: ...


def head_of_chunks(chunks: Iterable[bytes], limit: int) -> bytes:
    """The first `limit` bytes of a body read as chunks: `head` for a body that has no file to seek in."""
    taken = bytearray()
    for chunk in chunks:
        taken += chunk[: limit - len(taken)]
        if len(taken) >= limit:
            break
    return bytes(taken)


class MessageSpool:
    """An append-only message body with its size kept as it is written."""

    def __init__(self, directory: str | None, memory_limit: int) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=memory_limit, mode="w+b", dir=directory
        )
        self._memory_limit = memory_limit
        self.size = 0
        self._closed = False

    def write(self, data: bytes) -> None:
        """Append body bytes; a disk error becomes a SpoolError (a temporary failure)."""
        try:
            self._file.write(data)
        except OSError as exc:
            raise SpoolError(f"cannot spool message: {exc.strerror or exc}") from exc
        self.size += len(data)

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Read the whole body from the start, chunk by chunk."""
        self._file.flush()
        self._file.seek(0)
        while True:
            chunk = self._file.read(chunk_size)
            if not chunk:
                return
            yield chunk

    def reader(self) -> IO[bytes]:
        """The body as a file at its start, for one reader while nothing writes (the content checks)."""
        self._file.flush()
        self._file.seek(0)
        return self._file

    def independent_readers(self) -> Callable[[], IO[bytes]]:
        """A factory of readers of the whole body, each with its own position, so scanners and the
        decoder can read side by side. Call it before anything else reads: a small body is copied
        once, here; a large one is reopened through /proc for each reader (a second open file
        description of the unlinked temp file, with its own offset)."""
        if self.size <= self._memory_limit:
            body = self.head(self.size)
            return lambda: io.BytesIO(body)
        path = f"/proc/self/fd/{self._file.fileno()}"
        return lambda: open(path, "rb")

    def head(self, limit: int) -> bytes:
        """The first `limit` bytes, for header inspection without reading the whole body."""
        self._file.flush()
        self._file.seek(0)
        return self._file.read(limit)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()

    def __enter__(self) -> MessageSpool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @classmethod
    def from_bytes(
        cls, data: bytes, directory: str | None = None, memory_limit: int = 1 << 20
    ) -> MessageSpool:
        spool = cls(directory, memory_limit)
        spool.write(data)
        return spool
