"""SpamAssassin's SPAMC/SPAMD protocol 1.5 (spamd/PROTOCOL, libspamc.c), sans-IO: the request head, the reply.

One request per connection. The client writes the head and the message, half-closes, and reads the reply
to EOF. `SYMBOLS` is the command worth sending: one round trip gives the verdict, the score, the threshold
and the names of the rules that hit. A reply looks like

    SPAMD/1.1 0 EX_OK\\r\\n
    Content-length: 25\\r\\n
    Spam: True ; 1000.0 / 5.0\\r\\n
    \\r\\n
    GTUBE,MISSING_DATE,NO_RELAYS

A failure is the status line alone with a non-zero sysexits code (spamd writes it and closes); `PING` is
answered with `SPAMD/1.5 0 PONG` and no header block either. So EOF straight after the status line is a
complete reply, and EOF anywhere else before the end is a truncated one.

Every malformed reply raises ProtocolError, never a guess: a reply that cannot be read must become a
scanner error, not a score (MailScanner/v5#319 marked mail infected on an unparsable clamd answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qsift.errors import ProtocolError

PING_REQUEST = b"PING SPAMC/1.5\r\n\r\n"

#: The commands that carry a message (PING, SKIP and TELL have their own shapes).
_MESSAGE_COMMANDS = frozenset({"CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS"})
#: PROTOCOL says "[-A-Za-z0-9_]+"; `.`, `@` and `+` are added for virtual users (`spamc -u user@domain`
#: with spamd --virtual-config-dir). Nothing that could end the header line or start another one.
_USER = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_.@+]{0,254}")
_STATUS = re.compile(rb"SPAMD/\d{1,3}\.\d{1,3} +(\d{1,3})(?: +([\x20-\x7e\x80-\xff]*))?")
_HEADER = re.compile(rb"([!-9;-~]+):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*")
_NUMBER = rb"[-+]?\d{1,12}(?:\.\d{1,12})?"
_SPAM = re.compile(rb"(True|False|Yes|No) *; *(" + _NUMBER + rb") */ *(" + _NUMBER + rb")", re.IGNORECASE)
_RULE = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma


def request_head(command: str, content_length: int, user: str | None = None) -> bytes:
    """The bytes before the message, in libspamc's order; raises ValueError for what spamd would refuse."""
    if command not in _MESSAGE_COMMANDS:
        raise ValueError(f"spamd command {command!r} is not one of {sorted(_MESSAGE_COMMANDS)}")
    if content_length < 0:
        raise ValueError("content length must not be negative")
    head = f"{command} SPAMC/1.5\r\n"
    if user is not None:
        if not _USER.fullmatch(user):
            raise ValueError(f"spamd user name {user!r}: letters, digits and -_.@+ only, at most 255")
        head += f"User: {user}\r\n"
    return (head + f"Content-length: {content_length}\r\n\r\n").encode("ascii")


@dataclass(frozen=True)
class SpamdResponse:
    #: The sysexits code from the status line: 0 is EX_OK, anything else a failure (then nothing follows).
    code: int
    #: The rest of the status line: "EX_OK", "PONG", "Bad header line: ...".
    message: str
    #: From the `Spam:` header; None when there was none (PING, failures).
    is_spam: bool | None
    score: float | None
    threshold: float | None
    body: bytes


class ResponseParser:
    """Collects one spamd reply, holding at most `max_head` bytes of head and `max_body` bytes of body."""

    def __init__(self, *, max_head: int = 16 * 1024, max_body: int = 1024 * 1024) -> None:
        self._max_head = max_head
        self._max_body = max_body
        self._pending = bytearray()  # head bytes not yet split into lines
        self._head_size = 0
        self._status: tuple[int, str] | None = None
        self._headers_seen = False
        self._in_body = False
        self._content_length: int | None = None
        self._spam: tuple[bool, float, float] | None = None
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        """Add bytes as they arrive; raises ProtocolError as soon as the reply cannot be valid."""
        if not self._in_body:
            self._pending += data
            data = self._read_head()
        self._body += data
        limit = self._max_body if self._content_length is None else self._content_length
        if len(self._body) > limit:
            raise ProtocolError(f"spamd reply body longer than {limit} bytes")

    def finish(self) -> SpamdResponse:
        """The peer closed the connection: return the whole reply or raise ProtocolError."""
        if self._status is None:
            raise ProtocolError("spamd reply ended before the status line was complete")
        if not self._in_body and (self._headers_seen or self._pending):
            raise ProtocolError("spamd reply ended inside its header block")
        if self._content_length is not None and len(self._body) != self._content_length:
            raise ProtocolError(
                f"spamd reply body is {len(self._body)} bytes, Content-length said {self._content_length}"
            )
        code, message = self._status
        is_spam, score, threshold = self._spam if self._spam is not None else (None, None, None)
        return SpamdResponse(code, message, is_spam, score, threshold, bytes(self._body))

    def _read_head(self) -> bytes:
        """Consume whole head lines from the pending bytes; return what follows the head, if it ended."""
        while not self._in_body:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line = bytes(self._pending[:end]).removesuffix(b"\r")
            del self._pending[: end + 1]
            self._head_size += end + 1
            if self._head_size > self._max_head:
                break
            self._take_line(line)
        if not self._in_body:
            if self._head_size + len(self._pending) > self._max_head:
                raise ProtocolError(f"spamd reply head longer than {self._max_head} bytes")
            return b""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest

    def _take_line(self, line: bytes) -> None:
        if self._status is None:
            self._status = _parse_status(line)
        elif not line:
            self._in_body = True
        else:
            self._headers_seen = True
            self._take_header(line)

    def _take_header(self, line: bytes) -> None:
        match = _HEADER.fullmatch(line)
        if match is None:
            raise ProtocolError(f"spamd reply header is not 'Name: value': {_show(line)}")
        name, value = match[1].lower(), match[2]
        if name == b"content-length":
            if self._content_length is not None or not value.isdigit() or len(value) > 12:
                raise ProtocolError(f"spamd reply has a bad or second Content-length: {_show(value)}")
            self._content_length = int(value)
            if self._content_length > self._max_body:
                raise ProtocolError(f"spamd reply body of {self._content_length} bytes is over the limit")
        elif name == b"spam":
            self._spam = _parse_spam(value, again=self._spam is not None)
        # Unknown headers are ignored, as PROTOCOL asks of both sides.


def _parse_status(line: bytes) -> tuple[int, str]:
    match = _STATUS.fullmatch(line)
    if match is None:
        raise ProtocolError(f"spamd reply does not start with a SPAMD status line: {_show(line)}")
    return int(match[1]), (match[2] or b"").decode("utf-8", "replace")


def _parse_spam(value: bytes, *, again: bool) -> tuple[bool, float, float]:
    match = _SPAM.fullmatch(value)
    if match is None or again:
        raise ProtocolError(f"spamd reply has a bad or second Spam header: {_show(value)}")
    # At most 12 digits either side of the point, so always finite: no inf or nan from a hostile peer.
    return match[1].lower() in (b"true", b"yes"), float(match[2]), float(match[3])


def parse_symbols(body: bytes) -> tuple[str, ...]:
    """The rule names of a SYMBOLS reply: comma-separated, with or without a trailing CR LF."""
    text = body.decode("ascii", "replace").strip(" \t\r\n")
    if not text:
        return ()
    names = tuple(name.strip(" \t") for name in text.split(","))
    for name in names:
        if not _RULE.fullmatch(name):
            raise ProtocolError(f"spamd SYMBOLS reply has a bad rule name: {name!r}")
    return names


def _show(data: bytes) -> str:
    """Peer bytes for an error message: short, and never a control character in a log line."""
    return repr(data[:80])
