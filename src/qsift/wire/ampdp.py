"""AM.PDP, amavisd-new's policy delegation protocol, as its release tools speak it (reference:
amavisd-sql.md §3.1, §3.4; amavisd-new's README.protocol and In/AMPDP.pm).

A request is lines of `name=value` (amavisd-new also takes `name: value`), each ended by LF or CR LF, and
ends with an empty line; several requests may follow on one connection. Names and values are %XX-encoded
(amavisd-release encodes every byte of a name but `[0-9A-Za-z_-]`, and `%`, space, controls and 8-bit
bytes of a value); a repeated name (`recipient`) collects its values in order. A reply is lines of the
same form, always with CR LF, ended by an empty line.

`RequestReader` is fed bytes and hands back whole requests; it keeps at most one line in hand, so a
client can make it hold no more than `max_line` bytes and `max_attributes` attributes whatever it sends.
What breaks the framing is an AmpdpError, after which the reader is spent: the server answers with the
error and closes, since where the next request would start is no longer known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qsift.errors import ProtocolError

#: amavisd-new's own client lines are short; an address of 1000 bytes %-encoded is about 3000.
MAX_LINE = 4096
#: Enough for a release to a few hundred recipients.
MAX_ATTRIBUTES = 1024

#: amavisd-new's server-side line pattern (In/AMPDP.pm): a name without `=`, NUL or LF, then `=` or `:`
#: with blanks, then the value.
_LINE = re.compile(rb"([^=\x00\n:]*?)(?:=|:[ \t]*)([^\n]*?)\r?\n\Z", re.DOTALL)
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: Bytes a value keeps as they are (README.protocol: \041-\044 and \046-\176, so not space or %).
_VALUE_PLAIN = frozenset(range(0o41, 0o45)) | frozenset(range(0o46, 0o177))
_NAME_PLAIN = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._+-")


class AmpdpError(ProtocolError):
    """A request that breaks AM.PDP's framing or a limit; the connection cannot go on."""


@dataclass(frozen=True)
class Request:
    """One request: every attribute's values, decoded, in the order they came."""

    attributes: Mapping[str, tuple[str, ...]]

    def first(self, name: str) -> str | None:
        """The attribute's first value, or None if the request has none."""
        values = self.attributes.get(name)
        return values[0] if values else None

    def all(self, name: str) -> tuple[str, ...]:
        return self.attributes.get(name, ())


def decode_text(raw: bytes) -> str:
    """%XX decoded; the bytes as UTF-8, any that are not kept as surrogate escapes (as addresses are)."""
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw).decode("utf-8", "surrogateescape")


def encode_value(value: str) -> bytes:
    """A value as amavisd-new writes one: `%`, space, controls and 8-bit bytes as %XX."""
    return _encode(value, _VALUE_PLAIN)


def encode_name(name: str) -> bytes:
    return _encode(name, _NAME_PLAIN)


def _encode(text: str, plain: frozenset[int]) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return b"".join(bytes((byte,)) if byte in plain else b"%%%02x" % byte for byte in data)


def encode_attributes(attributes: Iterable[tuple[str, str]]) -> bytes:
    """Lines of `name=value` with CR LF, then the empty line that ends them: a request or a reply."""
    return b"".join(encode_name(n) + b"=" + encode_value(v) + b"\r\n" for n, v in attributes) + b"\r\n"


@dataclass(frozen=True)
class SetReply:
    """One `setreply` line: an SMTP code, an enhanced status and a text. amavisd-new writes its three
    fields split by plain spaces and %-encodes only the text (Util.pm): `setreply=250 2.0.0 Ok,%20released`,
    which is what MailZu (`^setreply=250`) and modoboa (`250 [\\d.]+ Ok` once decoded) look for."""

    code: int
    enhanced: str
    text: str

    def encode(self) -> bytes:
        return b"setreply=%d %s %s\r\n" % (self.code, encode_value(self.enhanced), encode_value(self.text))


def encode_reply(replies: Iterable[SetReply], attributes: Iterable[tuple[str, str]] = ()) -> bytes:
    """A reply: the `setreply` lines first, then any other attributes, then the empty line."""
    lines = [reply.encode() for reply in replies]
    lines += [encode_name(n) + b"=" + encode_value(v) + b"\r\n" for n, v in attributes]
    return b"".join(lines) + b"\r\n"


class RequestReader:
    """Turns the bytes of a connection into requests: feed(), then next_request() until None."""

    def __init__(self, max_line: int = MAX_LINE, max_attributes: int = MAX_ATTRIBUTES) -> None:
        self._max_line = max_line
        self._max_attributes = max_attributes
        self._buffer = bytearray()
        self._attributes: dict[str, list[str]] = {}
        self._count = 0
        self._spent = False

    @property
    def pending(self) -> bool:
        """Whether a request has begun and not ended (a connection closed now cut it short)."""
        return bool(self._buffer) or self._count > 0

    def feed(self, data: bytes) -> None:
        if self._spent:
            raise AmpdpError("the request stream broke earlier")
        self._buffer += data

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes come; AmpdpError if the bytes break a rule."""
        if self._spent:
            raise AmpdpError("the request stream broke earlier")
        try:
            return self._next()
        except AmpdpError:
            self._spent = True
            self._buffer.clear()
            raise

    def _next(self) -> Request | None:
        while True:
            end = self._buffer.find(b"\n", 0, self._max_line)
            if end < 0:
                if len(self._buffer) >= self._max_line:
                    raise AmpdpError(f"a line longer than {self._max_line} bytes")
                return None
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if line in (b"\n", b"\r\n"):
                if self._count == 0:
                    continue  # amavisd-new skips empty lines between requests too
                return self._finish()
            self._add(line)

    def _add(self, line: bytes) -> None:
        match = _LINE.match(line)
        if match is None or not match.group(1):
            raise AmpdpError("a line that is not name=value")
        if self._count >= self._max_attributes:
            raise AmpdpError(f"more than {self._max_attributes} attributes in one request")
        self._count += 1
        name = decode_text(match.group(1))
        self._attributes.setdefault(name, []).append(decode_text(match.group(2)))

    def _finish(self) -> Request:
        request = Request({name: tuple(values) for name, values in self._attributes.items()})
        self._attributes = {}
        self._count = 0
        return request


__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_LINE",
    "AmpdpError",
    "Request",
    "RequestReader",
    "SetReply",
    "decode_text",
    "encode_attributes",
    "encode_name",
    "encode_reply",
    "encode_value",
]
