"""Netstrings (cr.yp.to/proto/netstrings.txt): `<len>:<bytes>,`, strictly.

Strict where qmail-qmqpd is lax: the length is a non-empty run of ASCII digits with no leading zero
(`0:,` is the only length starting with 0), at most MAX_DIGITS digits, and the comma is required.
The length comes first so that a reader can refuse a huge netstring before it reads (or allocates) a
byte of it; `decode` checks `max_length` before it looks at the payload.

"Incomplete, need more bytes" is the exception `Incomplete`, a subclass of NetstringError: a caller
holding what should be a whole netstring catches NetstringError and treats truncation as malformed; a
caller reading a stream catches Incomplete first and waits for more bytes.
"""

from __future__ import annotations

from qsift.errors import NetstringError

#: qmail-qmqpd's own cap is about 2e9; ten digits reach 9,999,999,999, well past any message limit.
MAX_DIGITS = 10

_COLON = 0x3A
_COMMA = 0x2C
_ZERO = 0x30
_NINE = 0x39


class Incomplete(NetstringError):
    """The bytes so far are a valid start of a netstring; more are needed."""


def encode(data: bytes) -> bytes:
    """The netstring of `data`."""
    return b"%d:%s," % (len(data), data)


def decode(buf: bytes, max_length: int) -> tuple[bytes, bytes]:
    """Split one netstring off the front of `buf`: (payload, rest).

    Raises NetstringError if the bytes cannot start a valid netstring of at most `max_length` bytes,
    Incomplete if they can but end too soon.
    """
    length, start = LengthReader().feed(buf)
    if length is None:
        raise Incomplete("netstring length not finished")
    check_length(length, max_length)
    end = start + length
    if len(buf) <= end:
        raise Incomplete(f"netstring of {length} bytes not finished")
    if buf[end] != _COMMA:
        raise NetstringError("missing comma after netstring")
    return buf[start:end], buf[end + 1 :]


def check_length(length: int, max_length: int) -> None:
    """Refuse a declared length over the limit, before any of the payload is read."""
    if length > max_length:
        raise NetstringError(f"netstring of {length} bytes exceeds the limit of {max_length}")


class LengthReader:
    """Reads a netstring's `<digits>:` prefix incrementally, from as many chunks as it comes in.

    It holds only the value so far, never the bytes: the QMQP parser feeds it window by window.
    """

    __slots__ = ("_digits", "_value")

    def __init__(self) -> None:
        self._digits = 0
        self._value = 0

    @property
    def started(self) -> bool:
        """True once at least one digit was read."""
        return self._digits > 0

    def feed(self, data: bytes, start: int = 0, end: int | None = None) -> tuple[int | None, int]:
        """Consume `data[start:end]` up to the colon: (length, index after the colon), or (None, end).

        Raises NetstringError on the first byte that cannot belong to a valid length prefix.
        """
        stop = len(data) if end is None else end
        for index in range(start, stop):
            byte = data[index]
            if byte == _COLON:
                if self._digits == 0:
                    raise NetstringError("netstring length is empty")
                return self._value, index + 1
            if not _ZERO <= byte <= _NINE:
                raise NetstringError("netstring length is not a number")
            if self._digits == 1 and self._value == 0:
                raise NetstringError("netstring length has a leading zero")
            if self._digits == MAX_DIGITS:
                raise NetstringError(f"netstring length has more than {MAX_DIGITS} digits")
            self._value = self._value * 10 + byte - _ZERO
            self._digits += 1
        return None, stop
