"""The clamd protocol (ClamAV's daemon), sans-IO: command framing, INSTREAM chunks, NUL-ended replies.

Only the `z` framing is spoken (command and replies end with NUL): INSTREAM and IDSESSION need a prefix,
and NUL, unlike the `n` framing's newline, cannot occur inside a reply, so a reply is always whole.

Replies are read by `ReplyParser`, which holds at most `max_length` bytes of an unfinished reply: clamd's
replies are one short line, so anything longer is not clamd. Inside an IDSESSION every reply starts with
the number of the request it answers ("3: stream: OK"); the parser strips it and hands it out so the
client can check that the reply is the one it waits for.

`parse_scan_reply` reads what a scan answered. clamd's own reply functions (clamd/session.c) write
`<path>: OK`, `<path>: <name> FOUND` and `[<path>: ]<message> ERROR`; `UNKNOWN COMMAND` comes from a
clamd too old for INSTREAM. Anything else is an error, never clean: a scanner that answers something we
cannot read has not said the message is clean.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from qsift.errors import ProtocolError

#: The zero-length chunk that ends an INSTREAM.
INSTREAM_END = b"\0\0\0\0"
#: The largest chunk the 32-bit length prefix can announce.
MAX_CHUNK = 0xFFFFFFFF

_NUL = 0
_COMMAND_NAME = re.compile(r"[A-Z][A-Z0-9]*(?: [^\0\n]+)?")
_REQUEST_PREFIX = re.compile(r"([1-9][0-9]{0,9}): ")
# Virus names have no spaces ("Win.Test.EICAR_HDB-1", "Heuristics.Limits.Exceeded.MaxFileSize"); a path
# may contain ": ", so the path is everything up to the last ": " before the name.
_FOUND = re.compile(r"(?P<path>.*): (?P<name>\S+) FOUND")
_OK = re.compile(r".*: OK")
_ERROR_SUFFIX = " ERROR"


def command(name: str) -> bytes:
    """A command in `z` framing: `command("PING") == b"zPING\\0"`.

    Raises ValueError for a name clamd would not read as one command (lower case, NUL, newline, non-ASCII):
    such a name is a bug in the caller, not something to send.
    """
    if not name.isascii() or not _COMMAND_NAME.fullmatch(name):
        raise ValueError(f"not a clamd command: {name!r}")
    return b"z" + name.encode("ascii") + b"\0"


def instream_chunk(data: bytes) -> bytes:
    """One INSTREAM chunk: the length as 4 bytes, big-endian, then the data.

    An empty chunk would end the stream, so it is refused; send INSTREAM_END for that.
    """
    if not data:
        raise ValueError("an empty INSTREAM chunk ends the stream; send INSTREAM_END")
    if len(data) > MAX_CHUNK:
        raise ValueError(f"INSTREAM chunk of {len(data)} bytes does not fit a 32-bit length")
    return struct.pack("!L", len(data)) + data


@dataclass(frozen=True)
class Reply:
    """One NUL-terminated reply, without the NUL and without the IDSESSION request number."""

    text: str
    #: The IDSESSION request number the reply answers; None outside a session.
    request: int | None = None


class ReplyParser:
    """Splits clamd's output into replies, holding at most `max_length` bytes of an unfinished one."""

    def __init__(self, max_length: int = 4096) -> None:
        self._max_length = max_length
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[Reply]:
        """Add bytes; return the replies they completed, in order (often none, usually one).

        Raises ProtocolError when a reply runs past `max_length`, and on every call after that: the
        stream is out of step and nothing later on it can be trusted.
        """
        if self._broken:
            raise ProtocolError("clamd reply stream already broken")
        self._buffer += data
        replies: list[Reply] = []
        while (end := self._buffer.find(_NUL)) >= 0:
            if end > self._max_length:
                break
            replies.append(_reply(bytes(self._buffer[:end])))
            del self._buffer[: end + 1]
        if len(self._buffer) > self._max_length:
            self._broken = True
            self._buffer.clear()
            raise ProtocolError(f"clamd reply longer than {self._max_length} bytes")
        return replies

    @property
    def pending(self) -> int:
        """Bytes of an unfinished reply held so far."""
        return len(self._buffer)


def _reply(raw: bytes) -> Reply:
    # clamd writes virus names and messages in ASCII and paths as the file system has them; a stray
    # byte must not make the reply unreadable, only show as U+FFFD in the log.
    text = raw.decode("utf-8", errors="replace")
    prefix = _REQUEST_PREFIX.match(text)
    if prefix is None:
        return Reply(text)
    return Reply(text[prefix.end() :], int(prefix.group(1)))


@dataclass(frozen=True)
class ScanReply:
    status: Literal["ok", "found", "error"]
    #: Virus names, in the order clamd reported them, without duplicates; empty unless status is "found".
    names: tuple[str, ...] = ()
    #: For "error": what clamd said (or why the reply is unreadable). For "found": any error reported
    #: next to the names (a multi-reply scan that also failed somewhere); otherwise "".
    message: str = ""


def parse_scan_reply(text: str) -> ScanReply:
    """Read the answer to a scan: one reply, or several joined by NUL or newline (ALLMATCHSCAN, MULTISCAN).

    A name found anywhere makes the answer "found", whatever else it says: what was found is there even if
    the scan failed elsewhere. Otherwise any error or unreadable line makes it "error"; "ok" needs every
    line to say OK.
    """
    lines = [line for line in re.split(r"[\0\n]", text) if line.strip()]
    if not lines:
        return ScanReply("error", message="empty reply from clamd")
    names: list[str] = []
    errors: list[str] = []
    for line in lines:
        line = line.strip()
        if (found := _FOUND.fullmatch(line)) is not None:
            if found.group("name") not in names:
                names.append(found.group("name"))
        elif line.endswith(_ERROR_SUFFIX):
            errors.append(line.removesuffix(_ERROR_SUFFIX).strip())
        elif line == "UNKNOWN COMMAND":
            errors.append("UNKNOWN COMMAND (clamd too old for INSTREAM?)")
        elif _OK.fullmatch(line) is None:
            errors.append(f"unexpected reply from clamd: {line[:200]!r}")
    message = "; ".join(errors)
    if names:
        return ScanReply("found", tuple(names), message)
    if errors:
        return ScanReply("error", message=message)
    return ScanReply("ok")
