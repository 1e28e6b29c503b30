"""SMTP and LMTP, client side, sans-IO: the commands the forwarder sends and the replies it reads.

The forwarder hands each accepted message on to the next MTA (Postfix, qmail-smtpd, an LMTP delivery
agent). This module only turns envelope values into command lines and received bytes into replies;
smtp_dialogue keeps the order of the dialogue (RFC 5321, RFC 2033), the forwarder the socket and the
timeouts.

Replies are read leniently (a bare LF ends a line too, as most SMTP clients accept) but within fixed
bounds: a line that grows past the limit is refused before its end arrives, and so is a reply with too
many lines, so a broken or hostile server can never make the forwarder hold more than one line plus the
bytes it last read.

Commands are built strictly. qsift's server side already vets what its client sent, but these bytes go
to another MTA verbatim, so addresses and parameters are checked again here: a CR or LF that slipped
through would let one envelope smuggle extra commands into the downstream session. Only the MAIL and
RCPT parameters whose meaning qsift knows are carried, and only when the downstream server advertised
their extension: a server must refuse a parameter it does not know (555, RFC 5321 §4.1.1.11), and one
we do not understand we cannot promise to have honoured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qsift.errors import ProtocolError
from qsift.model import Params
from qsift.wire.smtp_args import XFORWARD_ATTRIBUTES, xforward_value

DATA: bytes = b"DATA\r\n"
RSET: bytes = b"RSET\r\n"
QUIT: bytes = b"QUIT\r\n"

_LF = b"\n"
_CR = b"\r"
_CRLF = b"\r\n"
_COMMAND_LINE_MAX = 512
_KEYWORD = re.compile(r"[A-Za-z0-9-]+")
# Bytes that would end the command line early or close the angle brackets around the address.
_ADDRESS_FORBIDDEN = (b"\r", b"\n", b"\0", b"<", b">")


# --- replies ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpReply:
    """One complete reply: the code shared by all its lines and the text of each line."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def line(self) -> str:
        return f"{self.code} {self.text}"


class ReplyParser:
    """Feed bytes as they arrive; take complete replies out."""

    def __init__(self, max_line_length: int = 4096, max_lines: int = 200) -> None:
        # Shorter than "250" and not even the shortest valid reply would fit.
        if max_line_length < 3:
            raise ValueError("max_line_length must be at least 3")
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        self._max_line_length = max_line_length
        self._max_lines = max_lines
        self._buffer = bytearray()
        # How far the buffer is known to hold no LF, so feeding a long line byte by byte stays linear.
        self._scanned = 0
        self._code = 0
        self._lines: list[str] = []
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        # After a failure the session is over; keeping what follows would only cost memory.
        if self._failure is None:
            self._buffer += data

    def next_reply(self) -> SmtpReply | None:
        if self._failure is not None:
            raise ProtocolError(self._failure)
        try:
            return self._next_reply()
        except ProtocolError as exc:
            self._failure = str(exc)
            self._buffer.clear()
            self._lines.clear()
            raise

    def _next_reply(self) -> SmtpReply | None:
        while True:
            end = self._buffer.find(_LF, self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                # A final CR may be the first half of the CRLF, so it does not count yet.
                pending = len(self._buffer) - self._buffer.endswith(_CR)
                if pending > self._max_line_length:
                    raise ProtocolError(f"reply line longer than {self._max_line_length} bytes")
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            if raw.endswith(_CR):
                raw = raw[:-1]
            if len(raw) > self._max_line_length:
                raise ProtocolError(f"reply line longer than {self._max_line_length} bytes")
            code, last, text = _parse_line(raw)
            if self._lines and code != self._code:
                raise ProtocolError(f"reply line with code {code} continues a {self._code} reply")
            self._code = code
            self._lines.append(text)
            if last:
                reply = SmtpReply(code, tuple(self._lines))
                self._lines = []
                return reply
            # The next line would be one too many, whatever it says.
            if len(self._lines) >= self._max_lines:
                raise ProtocolError(f"reply longer than {self._max_lines} lines")


def _parse_line(raw: bytes) -> tuple[int, bool, str]:
    """The code, whether this is the last line of its reply, and the text."""
    head = raw[:3]
    # bytes.isdigit is ASCII-only, unlike str.isdigit, so int() below always works.
    if len(head) < 3 or not head.isdigit() or head[0] not in b"2345":
        raise ProtocolError(f"malformed reply line {raw[:40]!r}")
    separator = raw[3:4]
    if separator not in (b"", b" ", b"-"):
        raise ProtocolError(f"malformed reply line {raw[:40]!r}")
    return int(head), separator != b"-", raw[4:].decode("utf-8", "replace")


# --- what the server offers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """The extensions the downstream server advertised in its EHLO or LHLO reply."""

    extended: bool = False
    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    enhanced_status_codes: bool = False
    chunking: bool = False
    #: The XFORWARD attributes the server takes (Postfix offers it to smtpd_authorized_xforward_hosts).
    xforward: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, reply: SmtpReply) -> Capabilities:
        """Read the extension lines of a successful EHLO or LHLO reply; the first line is a greeting."""
        flags: dict[str, bool] = {}
        size: int | None = None
        xforward: frozenset[str] = frozenset()
        for line in reply.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword = words[0].upper()
            if keyword == "XFORWARD":
                xforward = frozenset(w.upper() for w in words[1:]) & frozenset(XFORWARD_ATTRIBUTES)
            elif keyword == "SIZE":
                # RFC 1870: no number (or 0) means no fixed limit; a garbled one tells us no more than that.
                number = words[1] if len(words) > 1 else ""
                size = int(number) if number.isascii() and number.isdigit() else 0
            elif keyword in _FLAGS:
                flags[_FLAGS[keyword]] = True
        return cls(extended=True, size=size, xforward=xforward, **flags)

    @classmethod
    def basic(cls) -> Capabilities:
        """What a server that only understood HELO offers: nothing."""
        return cls()


_FLAGS = {
    "PIPELINING": "pipelining",
    "8BITMIME": "eightbitmime",
    "SMTPUTF8": "smtputf8",
    "DSN": "dsn",
    "ENHANCEDSTATUSCODES": "enhanced_status_codes",
    "CHUNKING": "chunking",
}


# --- commands -----------------------------------------------------------------------------------------


class UnsupportedByServer(Exception):
    """The message needs an extension the server did not advertise (SMTPUTF8).

    The answer for it is 553 5.6.7 (RFC 6531), hence the two attributes, named as on QsiftError.
    """

    enhanced_status: str = "5.6.7"
    smtp_code: int = 553


def hello(name: str, *, lmtp: bool, extended: bool = True) -> bytes:
    """The greeting command; LMTP has only LHLO, so `extended` does not apply to it."""
    _check_text(name, "hello name")
    if lmtp:
        verb = b"LHLO"
    elif extended:
        verb = b"EHLO"
    else:
        verb = b"HELO"
    return verb + b" " + name.encode("utf-8") + _CRLF


def xforward(attributes: Mapping[str, str | None], offered: frozenset[str]) -> list[bytes]:
    """XFORWARD commands for the attributes the server offered, in as few as fit a command line each
    (RFC 5321 §4.5.3.1.4: 512 octets with CRLF, the limit Postfix's smtpd reads XFORWARD with)."""
    items = [
        name.encode("ascii") + b"=" + xforward_value(attributes[name])
        for name in XFORWARD_ATTRIBUTES
        if name in offered and name in attributes
    ]
    commands: list[bytes] = []
    line = b""
    for item in items:
        if line and len(b"XFORWARD " + line + b" " + item + _CRLF) > _COMMAND_LINE_MAX:
            commands.append(b"XFORWARD " + line + _CRLF)
            line = b""
        line = item if not line else line + b" " + item
    if line:
        commands.append(b"XFORWARD " + line + _CRLF)
    return commands


def needs_smtputf8(sender: bytes, recipients: Sequence[bytes], mail_params: Params) -> bool:
    """Whether the envelope can only go to a server that offers SMTPUTF8."""
    if any(keyword.upper() == "SMTPUTF8" for keyword, _ in mail_params):
        return True
    return any(not address.isascii() for address in (sender, *recipients))


def mail_from(
    sender: bytes, mail_params: Params, caps: Capabilities, *, size: int | None = None, smtputf8: bool = False
) -> bytes:
    """MAIL FROM with the parameters the server can take; `size` is what we will send, not what we got."""
    _check_address(sender, "sender")
    _check_keywords(mail_params)
    if size is not None and size < 0:
        raise ValueError("size must not be negative")
    if smtputf8 and not caps.smtputf8:
        raise UnsupportedByServer("the message needs SMTPUTF8, which the server does not offer")
    params: list[bytes] = []
    if caps.extended:
        # The client's own SIZE described the message before qsift touched it, so it is never reused.
        if caps.size is not None and size is not None:
            params.append(b"SIZE=%d" % size)
        for keyword, value in _first_of_each(mail_params):
            if keyword == "BODY" and caps.eightbitmime:
                # BINARYMIME needs BDAT (RFC 3030) and we always send with DATA.
                if value is None or value.upper() != "BINARYMIME":
                    params.append(_param(keyword, value))
            elif keyword in ("RET", "ENVID") and caps.dsn:
                params.append(_param(keyword, value))
        asked = any(keyword.upper() == "SMTPUTF8" for keyword, _ in mail_params)
        if caps.smtputf8 and (smtputf8 or asked):
            params.append(b"SMTPUTF8")
    return b"MAIL FROM:<" + sender + b">" + b"".join(b" " + p for p in params) + _CRLF


def rcpt_to(recipient: bytes, params: Params, caps: Capabilities) -> bytes:
    """RCPT TO with the DSN parameters, when the server offers DSN; nothing else is carried."""
    if not recipient:
        raise ValueError("recipient must not be empty")
    _check_address(recipient, "recipient")
    _check_keywords(params)
    kept: list[bytes] = []
    if caps.extended and caps.dsn:
        kept = [_param(k, v) for k, v in _first_of_each(params) if k in ("NOTIFY", "ORCPT")]
    return b"RCPT TO:<" + recipient + b">" + b"".join(b" " + p for p in kept) + _CRLF


def _first_of_each(params: Params) -> list[tuple[str, str | None]]:
    """Keywords upper-cased, each only once: a repeated parameter is a syntax error downstream."""
    seen: set[str] = set()
    result: list[tuple[str, str | None]] = []
    for keyword, value in params:
        upper = keyword.upper()
        if upper not in seen:
            seen.add(upper)
            result.append((upper, value))
    return result


def _param(keyword: str, value: str | None) -> bytes:
    # Every parameter we carry takes a value; a bare keyword would be a syntax error downstream.
    if value is None:
        raise ValueError(f"parameter {keyword} needs a value")
    if keyword in ("ORCPT", "ENVID"):
        # xtext (RFC 3461 §4) allows "<" and ">", which we never put on a command line; their xtext
        # escapes mean the same to the receiver.
        value = value.replace("<", "+3C").replace(">", "+3E")
    _check_text(value, f"parameter {keyword}")
    # surrogateescape: values were decoded that way from the wire, so their bytes go back unchanged.
    return keyword.encode("ascii") + b"=" + value.encode("utf-8", "surrogateescape")


def _check_address(address: bytes, what: str) -> None:
    if any(forbidden in address for forbidden in _ADDRESS_FORBIDDEN):
        raise ValueError(f"{what} contains CR, LF, NUL, '<' or '>': {address[:80]!r}")


def _check_keywords(params: Params) -> None:
    for keyword, _ in params:
        if not _KEYWORD.fullmatch(keyword):
            raise ValueError(f"malformed parameter keyword {keyword[:40]!r}")


def _check_text(text: str, what: str) -> None:
    # Beyond CR, LF and NUL: a space would start another parameter, other controls have no business here.
    if not text or any(ord(c) <= 0x20 or c in "<>\x7f" for c in text):
        raise ValueError(
            f"{what} is empty or contains a space, a control character, '<' or '>': {text[:80]!r}"
        )
