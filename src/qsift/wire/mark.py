"""The mark qsift puts on mail it passed, so the same site never scans it twice.

When qmail-local forwards a delivered message (a .qmail file, an alias) through qsift-queue (a site that
replaced bin/qmail-queue or exports QMAILQUEUE in rc), the HOWTO's setup scans it a second time; its fix is
a qmail-local patch. Here the daemon adds

    X-Qsift-Scanned: v2 t=<unix time> h=<HMAC-SHA256 hex>

to passed mail, keyed by a secret only the daemon reads (the mark key), over the message body as qsift
passed it (line ends normalised to LF, so qmail's LF and SMTP's CRLF forms agree; a bare CR counts as a
line end, since the SMTP forward sends it as CRLF and qmail then stores an LF) and over the header
fields that say how the body is read (MIME-Version, Content-Type, Content-Transfer-Encoding,
Content-Disposition): the same body under another Content-Type could unfold into an attachment that was
never looked at. What a forward prepends (Delivered-To, Received) and the new recipients touch neither,
so the mark stays valid; any change to them breaks it. The daemon that finds a valid mark younger than a
week passes the message without scanning it again (pipeline/stages.py). A forged or stale mark is ignored:
the message is scanned like any other. v1 marks (body only) are not taken.
"""

from __future__ import annotations

import hashlib
import hmac
import re

FIELD = "X-Qsift-Scanned"
MAX_AGE = 7 * 24 * 3600
#: Marks from a clock this far ahead are still taken (hosts of one site are not perfectly in step).
_CLOCK_SKEW = 300
_VALUE = re.compile(r"^v2 t=(\d{1,12}) h=([0-9a-f]{64})$")
_FIELD_LINE = re.compile(rb"^x-qsift-scanned:[ \t]*([^\r\n]*)\r?$", re.IGNORECASE | re.MULTILINE)
#: The fields that decide how the body is taken apart (RFC 2045 section 3, RFC 2183).
_READING = (b"mime-version", b"content-type", b"content-transfer-encoding", b"content-disposition")


class BodyDigest:
    """SHA-256 of a message's body (what follows the first empty line), fed in chunks, with every line end
    (CRLF, LF or a bare CR) as LF."""

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
        if b"\r" in chunk:  # one search in C; most mail reaches qsift with LF line ends only
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        final = self._hash.copy()
        if self._pending_cr:
            final.update(b"\n")
        return final.hexdigest()


def reading_digest(header_section: bytes) -> str:
    """SHA-256 of the fields that say how the body is read, unfolded, white space squeezed, in order."""
    found = hashlib.sha256()
    name = b""
    value = bytearray()
    for line in [*header_section.splitlines(), b""]:
        if line[:1] in (b" ", b"\t"):
            value += b" " + line
            continue
        if name in _READING:
            found.update(b"%s:%s\n" % (name, b" ".join(bytes(value).split())))
        head, colon, rest = line.partition(b":")
        name, value = (head.strip().lower(), bytearray(rest)) if colon else (b"", bytearray())
    return found.hexdigest()


def _signature(key: bytes, when: int, body_digest: str, reading: str) -> str:
    return hmac.new(key, f"v2 {when} {body_digest} {reading}".encode(), hashlib.sha256).hexdigest()


def make_value(key: bytes, body_digest: str, reading: str, when: int) -> str:
    """The field's value for a message with this body digest and reading digest, passed at `when`."""
    return f"v2 t={when} h={_signature(key, when, body_digest, reading)}"


def find_value(header_section: bytes) -> str | None:
    """The value of the first X-Qsift-Scanned field, or None."""
    match = _FIELD_LINE.search(header_section)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def verify(key: bytes, value: str, body_digest: str, reading: str, now: int, max_age: int = MAX_AGE) -> bool:
    """Whether `value` is this site's mark for this body read this way, made within `max_age` of `now`."""
    match = _VALUE.match(value)
    if match is None:
        return False
    when = int(match.group(1))
    if not now - max_age <= when <= now + _CLOCK_SKEW:
        return False
    return hmac.compare_digest(match.group(2), _signature(key, when, body_digest, reading))
