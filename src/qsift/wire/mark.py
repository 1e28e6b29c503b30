"""The mark qsift puts on mail it passed, so the same site never scans it twice.

When qmail-local forwards a delivered message (a .qmail file, an alias), qmail-queue runs again and the
HOWTO's setup scans it a second time; its fix is a qmail-local patch. Here the daemon adds

    X-Qsift-Scanned: v1 t=<unix time> h=<HMAC-SHA256 hex>

to passed mail, keyed by a secret only this site has, over the message body as qsift passed it (line ends
normalised to LF, so qmail's LF and SMTP's CRLF forms agree). What a forward prepends (Delivered-To,
Received) and the new recipients do not touch the body, so the mark stays valid; any change to the body
breaks it. `qsift-queue` that finds a valid mark younger than a week hands the message straight to the
real qmail-queue. A forged or stale mark is ignored: the message is scanned like any other.

Standard library only: qsift-queue imports this, lazily, when it is set up to bypass.
"""

from __future__ import annotations

import hashlib
import hmac
import re

FIELD = "X-Qsift-Scanned"
MAX_AGE = 7 * 24 * 3600
#: Marks from a clock this far ahead are still taken (hosts of one site are not perfectly in step).
_CLOCK_SKEW = 300
_VALUE = re.compile(r"^v1 t=(\d{1,12}) h=([0-9a-f]{64})$")
_FIELD_LINE = re.compile(rb"^x-qsift-scanned:[ \t]*([^\r\n]*)\r?$", re.IGNORECASE | re.MULTILINE)


class BodyDigest:
    """SHA-256 of a message's body (what follows the first empty line), LF line ends, fed in chunks."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._in_body = False
        self._tail = b""  # the end of the header seen so far, to find a blank line across chunks
        self._pending_cr = False

    def update(self, chunk: bytes) -> None:
        if not self._in_body:
            data = self._tail + chunk
            end = re.search(rb"\r?\n\r?\n", data)
            if end is None:
                self._tail = data[-3:]
                return
            self._in_body = True
            chunk = data[end.end() :]
        self._body(chunk)

    def _body(self, chunk: bytes) -> None:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            self._pending_cr = True
            chunk = chunk[:-1]
        self._hash.update(chunk.replace(b"\r\n", b"\n"))

    def hexdigest(self) -> str:
        final = self._hash.copy()
        if self._pending_cr:
            final.update(b"\r")
        return final.hexdigest()


def _signature(key: bytes, when: int, body_digest: str) -> str:
    return hmac.new(key, f"v1 {when} {body_digest}".encode(), hashlib.sha256).hexdigest()


def make_value(key: bytes, body_digest: str, when: int) -> str:
    """The field's value for a message whose body digest is `body_digest`, passed at `when`."""
    return f"v1 t={when} h={_signature(key, when, body_digest)}"


def find_value(header_section: bytes) -> str | None:
    """The value of the first X-Qsift-Scanned field, or None."""
    match = _FIELD_LINE.search(header_section)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def verify(key: bytes, value: str, body_digest: str, now: int, max_age: int = MAX_AGE) -> bool:
    """Whether `value` is this site's mark for this body, made within `max_age` seconds of `now`."""
    match = _VALUE.match(value)
    if match is None:
        return False
    when = int(match.group(1))
    if not now - max_age <= when <= now + _CLOCK_SKEW:
        return False
    return hmac.compare_digest(match.group(2), _signature(key, when, body_digest))
