"""The bytes of an SMTP/LMTP server connection, sans-IO: client input cut into command lines or body, replies
written as lines (RFC 5321 §2.3.8, §4.2, §4.5.2). What a line means is `smtp_server`'s business.

Defences that belong at this level, each one a known attack or a known breakage:
- Only CR LF . CR LF ends DATA. A bare LF or a bare CR before or after the dot does not (SMTP smuggling,
  CVE-2023-51764/51765/51766), and the body keeps them as they came: whatever the client meant, the SMTP
  and LMTP forward makes every line end CRLF, bare LF and bare CR included, and stuffs the dot after it
  (wire/smtp_data.py), so nothing it hides can end a message downstream (qmail-queue and maildir have no
  end-of-data line to fake).
- A command line longer than `max_line_length` is discarded as it arrives, not buffered, then refused.
- Reply text may come from a downstream MTA or a virus name: it goes out as one line, no control characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsift.model import single_line

_CRLF = b"\r\n"
_END_OF_DATA = b".\r\n"


@dataclass(frozen=True)
class LineTooLong:
    """A command line went past `max_line_length`; its bytes were dropped as they came."""


@dataclass(frozen=True)
class BodyRead:
    """What one pass over the buffered DATA input gave."""

    #: Body bytes, dot-unstuffed, line ends as the client sent them.
    data: bytes
    #: The final dot was taken; input after it is the next command.
    ended: bool
    #: Input was taken, even if no body came of it (a stuffed dot, the final dot).
    consumed: bool


class ClientInput:
    """What the client sent and the connection has not taken yet, read as command lines or as body."""

    def __init__(self, max_line_length: int) -> None:
        self._buffer = bytearray()
        self._max_line_length = max_line_length
        self._discarding_long_line = False
        self._at_line_start = True

    def __len__(self) -> int:
        return len(self._buffer)

    def append(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        self._buffer.clear()

    def read_line(self) -> bytes | LineTooLong | None:
        """The next command line without its line end; None until a line end arrives."""
        buf = self._buffer
        newline = buf.find(b"\n")
        if newline < 0:
            if len(buf) > self._max_line_length:
                # Drop it as it comes; the refusal goes out once the line ends.
                self._discarding_long_line = True
                buf.clear()
            return None
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if self._discarding_long_line or newline + 1 > self._max_line_length:
            self._discarding_long_line = False
            return LineTooLong()
        return line.removesuffix(b"\r")

    def start_body(self) -> None:
        """The 354 went out: what follows is body, starting at a line start."""
        self._at_line_start = True

    def read_body(self) -> BodyRead:
        """Take as much body as the buffer allows; find the end only at CR LF . CR LF."""
        body = bytearray()
        ended = False
        buf = self._buffer
        pos = 0
        while pos < len(buf):
            if self._at_line_start:
                if buf[pos] == 0x2E:  # "."
                    ahead = bytes(buf[pos : pos + 3])
                    if ahead == _END_OF_DATA:
                        pos += 3
                        ended = True
                        break
                    if _END_OF_DATA.startswith(ahead):
                        break  # ".", ".\r": wait for the bytes that decide
                    pos += 1  # a stuffed dot (RFC 5321 §4.5.2)
                self._at_line_start = False
            found = buf.find(b"\r\n.", pos)
            if found >= 0:
                body += buf[pos : found + 2]
                pos = found + 2
                self._at_line_start = True
                continue
            end = len(buf)
            if buf.endswith(_CRLF):
                self._at_line_start = True
            elif buf.endswith(b"\r"):
                end -= 1  # its LF may be the next byte to come
            body += buf[pos:end]
            pos = end
            break
        del buf[:pos]
        return BodyRead(bytes(body), ended, consumed=pos > 0)


def reply_line(code: int, status: str, text: str) -> bytes:
    """One reply line with its enhanced status code (RFC 2034)."""
    return f"{code} {status} {single_line(text)}".encode("utf-8", "replace") + _CRLF


def bare_reply(code: int, lines: list[bytes]) -> bytes:
    """A reply without an enhanced status code (the greeting, HELO/EHLO, 354), multiline if need be."""
    *first, last = lines
    return b"".join(b"%d-%s\r\n" % (code, line) for line in first) + b"%d %s\r\n" % (code, last)
