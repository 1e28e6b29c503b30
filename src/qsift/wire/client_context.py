"""The X-Qsift-Client field: what qmail-smtpd knew of the SMTP client, passed on under the client key.

QMQP carries the message and the envelope only, so the filter cannot tell mail from a relaying or an
authenticated client (amavisd-new's "originating" mail) from any other. qsift-queue runs in qmail-smtpd's
environment, so it puts what that environment says in one field before the message's first byte:

    X-Qsift-Client: v1 t=1764000000 ip=192.0.2.7 host=mx.example.net relay=1 auth=alice h=<HMAC-SHA256 hex>

keyed by the client key, which only qsift and qmail-smtpd's user (qmaild) can read: a local user who runs
qsift-queue (qmail-local does, for a forward) cannot sign, and gets no relay or AUTH claim through. The
HMAC covers the version, the time, every value and a SHA-256 of the envelope (the sender and then each
recipient as netstrings, in order), so a field an SMTP client wrote itself fails, and so does one copied
from another message onto a different envelope. The daemon cuts every such field out of the header
(`find_fields`, a forged one deep in the header too), trusts the first only if `verify` accepts it, and
delivers the message without any. Values are percent-encoded UTF-8 (`%XX`, upper case), so they hold no
space, `=`, bare `%`, control or non-ASCII character; each is cut at a character boundary to an encoded
length (_LIMITS) that keeps the line far under RFC 5322's 998 bytes and never shortens an ASCII host name.

What `context_from_env` reads, and why nothing else:
  TCPREMOTEIP, else TCP6REMOTEIP  the client's address from tcpserver (ucspi-tcp sets TCPREMOTEIP;
                                  ucspi-tcp6, ucspi-ssl and indimail's tcpserver set TCP6REMOTEIP for IPv6)
  TCPREMOTEHOST, else TCP6REMOTEHOST
                                  the name tcpserver found by reverse DNS (unset with -H). The client
                                  controls its PTR record: a hint, never an identity
  RELAYCLIENT                     set, even empty: tcprules let this client relay, or an AUTH patch that
                                  exports it (s/qmail; Hoffmann's qmail-authentication as sagredo's netqmail
                                  ships it) saw a successful AUTH
  SMTPAUTHUSER, else SMTP_AUTH_USER
                                  the user of a successful SMTP AUTH. The patches that export them (sagredo's
                                  netqmail with qmail-authentication 0.8.3 and qmail-spp; jms1's combined
                                  patch 7.08) set them in smtp_auth() after the password check, nowhere else
Not read: TCPREMOTEINFO and indimail's AUTHINFO. The AUTH patches do put the user there after a successful
AUTH, but qmail-authentication's and indimail's mailfrom_auth() also fill them, when still unset, from the
`MAIL FROM:<...> AUTH=<name>` parameter (RFC 4954 section 5) of a client that never authenticated, and
tcpserver -r (its default) fills TCPREMOTEINFO with whatever the client host's identd (RFC 1413) answers.
Trusting them would let any client name itself; with qmail-smtpd builds that export only those, the auth
value stays empty and the relay flag is what the daemon has.

Standard library only: qsift-queue imports this, lazily, when the client key is set up.
"""

from __future__ import annotations

import hashlib
import hmac

from qsift.wire import netstring

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (qsift-queue's start-up time)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

FIELD = "X-Qsift-Client"
VERSION = "v1"
#: A field older than this is refused: it is made a moment before the daemon reads it, so an old one was
#: kept and replayed.
MAX_AGE = 3600
#: Fields from a clock this far ahead are still taken (hosts of one site are not perfectly in step).
_CLOCK_SKEW = 300
#: Encoded length kept per value: an IPv6 address with a zone fits in 64, an RFC 1035 name in 255.
_LIMITS = {"ip": 64, "host": 255, "auth": 255}
_TIME_DIGITS = 12
_SAFE = frozenset(chr(code) for code in range(0x21, 0x7F)) - {"%", "="}
_HEX_UPPER = frozenset("0123456789ABCDEF")
_HEX_LOWER = frozenset("0123456789abcdef")
_NAME = FIELD.lower().encode("ascii")
_KEYS = ("t=", "ip=", "host=", "relay=", "auth=", "h=")


class ClientContext:
    """What qmail-smtpd's environment said about the SMTP client; empty where it said nothing.

    Immutable and compared by value, as a frozen dataclass would be, without importing `dataclasses`
    (qsift-queue's start-up time: see wire/qmqp.py's _Value).
    """

    __slots__ = ("auth_user", "host", "ip", "relay_client")
    ip: str
    host: str
    relay_client: bool
    auth_user: str

    def __init__(
        self, *, ip: str = "", host: str = "", relay_client: bool = False, auth_user: str = ""
    ) -> None:
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "relay_client", relay_client)
        object.__setattr__(self, "auth_user", auth_user)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ClientContext is immutable")

    def _fields(self) -> tuple[str, str, bool, str]:
        return (self.ip, self.host, self.relay_client, self.auth_user)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientContext):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"ClientContext(ip={self.ip!r}, host={self.host!r}, relay_client={self.relay_client!r}, "
            f"auth_user={self.auth_user!r})"
        )


def context_from_env(env: Mapping[str, str]) -> ClientContext:
    """The client as tcpserver, tcprules and an SMTP AUTH patch left it in qmail-smtpd's environment."""
    return ClientContext(
        ip=env.get("TCPREMOTEIP") or env.get("TCP6REMOTEIP") or "",
        host=env.get("TCPREMOTEHOST") or env.get("TCP6REMOTEHOST") or "",
        relay_client="RELAYCLIENT" in env,
        auth_user=env.get("SMTPAUTHUSER") or env.get("SMTP_AUTH_USER") or "",
    )


def make_field(
    key: bytes, context: ClientContext, sender: bytes, recipients: Sequence[bytes], now: int
) -> bytes:
    """The whole field, one line ending in LF (qmail's line end), vouching for `context` and this envelope."""
    if not 0 <= now < 10**_TIME_DIGITS:
        raise ValueError(f"time {now} is out of range for {FIELD}")
    values = (
        f"t={now}",
        f"ip={_encode(context.ip, _LIMITS['ip'])}",
        f"host={_encode(context.host, _LIMITS['host'])}",
        f"relay={1 if context.relay_client else 0}",
        f"auth={_encode(context.auth_user, _LIMITS['auth'])}",
    )
    text = " ".join((VERSION, *values))
    return f"{FIELD}: {text} h={_signature(key, text, sender, recipients)}\n".encode("ascii")


def verify(
    key: bytes, value: str, sender: bytes, recipients: Sequence[bytes], now: int
) -> ClientContext | None:
    """The context `value` vouches for if this site's key signed it for this envelope lately, else None.

    Lately: at most MAX_AGE seconds before `now` and at most _CLOCK_SKEW after it. Any string is safe to
    pass; a malformed one is None like a forged one.
    """
    parsed = _parse(value)
    if parsed is None:
        return None
    when, text, signature, context = parsed
    if not now - MAX_AGE <= when <= now + _CLOCK_SKEW:
        return None
    if not hmac.compare_digest(signature, _signature(key, text, sender, recipients)):
        return None
    return context


def find_fields(header_section: bytes) -> list[tuple[int, int, str]]:
    """Every X-Qsift-Client field before the header's end, as (start, end, value).

    `end` is past the field's last line end, so header_section[start:end] is the whole field. The name
    matches in any case (RFC 5322 section 1.2.2), white space may precede the colon (obs-optional), LF
    or CRLF end lines, and the lines after it that start with a space or tab are its own (section
    2.2.3). The value is unfolded (line ends removed) and stripped. Scanning stops at the first empty
    line, or at the end of the bytes if there is none.
    """
    found: list[tuple[int, int, str]] = []
    start = -1
    value = bytearray()
    pos = 0
    while pos < len(header_section):
        newline = header_section.find(b"\n", pos)
        end = len(header_section) if newline < 0 else newline + 1
        line = header_section[pos:end]
        if line[:1] in (b" ", b"\t"):
            if start >= 0:
                value += _without_line_end(line)
        else:
            if start >= 0:
                found.append((start, pos, _value_text(value)))
                start = -1
            if not _without_line_end(line):
                return found
            first = _own_value(line)
            if first is not None:
                start = pos
                value = bytearray(_without_line_end(first))
        pos = end
    if start >= 0:
        found.append((start, pos, _value_text(value)))
    return found


# --- the pieces ---------------------------------------------------------------------------------------


def _encode(value: str, limit: int) -> str:
    """`value` percent-encoded, cut at the last whole character within `limit` encoded characters."""
    pieces: list[str] = []
    size = 0
    for char in value:
        piece = char if char in _SAFE else _escape(char)
        size += len(piece)
        if size > limit:
            break
        pieces.append(piece)
    return "".join(pieces)


def _escape(char: str) -> str:
    try:
        # surrogateescape: a byte of the environment that is not UTF-8 goes out as that byte.
        raw = char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "?"  # a lone surrogate no byte stands for; "?" encodes as itself, so a round trip is stable
    return "".join(f"%{byte:02X}" for byte in raw)


def _decode(text: str) -> str | None:
    """The value `text` encodes, or None if it is not the encoding `_encode` writes."""
    data = bytearray()
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "%":
            pair = text[pos + 1 : pos + 3]
            if len(pair) != 2 or not _HEX_UPPER.issuperset(pair):
                return None
            data.append(int(pair, 16))
            pos += 3
        elif char in _SAFE:
            data.append(ord(char))
            pos += 1
        else:
            return None
    return data.decode("utf-8", "surrogateescape")


def _parse(value: str) -> tuple[int, str, str, ClientContext] | None:
    """(time, the signed text, the HMAC, the context) of a well-formed value, else None."""
    if not value.isascii():
        return None
    tokens = [token for token in value.replace("\t", " ").split(" ") if token]
    if len(tokens) != len(_KEYS) + 1 or tokens[0] != VERSION:
        return None
    values: list[str] = []
    for token, name in zip(tokens[1:], _KEYS, strict=True):
        if not token.startswith(name):
            return None
        values.append(token[len(name) :])
    when, ip, host, relay, auth, signature = values
    # isdigit is ASCII-only here: the whole value is ASCII.
    if not (when.isdigit() and len(when) <= _TIME_DIGITS) or relay not in ("0", "1"):
        return None
    if len(signature) != 64 or not _HEX_LOWER.issuperset(signature):
        return None
    ip_text, host_text, auth_text = _decode(ip), _decode(host), _decode(auth)
    if ip_text is None or host_text is None or auth_text is None:
        return None
    context = ClientContext(ip=ip_text, host=host_text, relay_client=relay == "1", auth_user=auth_text)
    return int(when), " ".join(tokens[:-1]), signature, context


def _signature(key: bytes, text: str, sender: bytes, recipients: Sequence[bytes]) -> str:
    envelope = hashlib.sha256(netstring.encode(sender))
    for recipient in recipients:
        envelope.update(netstring.encode(recipient))
    # The field name first: an HMAC made for anything else under a key given to both must never pass.
    signed = b"%s\n%s\n%s" % (_NAME, text.encode("ascii"), envelope.hexdigest().encode("ascii"))
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def _own_value(line: bytes) -> bytes | None:
    """What follows the colon if `line` starts an X-Qsift-Client field, else None."""
    if line[: len(_NAME)].lower() != _NAME:
        return None
    rest = line[len(_NAME) :].lstrip(b" \t")
    return rest[1:] if rest[:1] == b":" else None


def _without_line_end(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _value_text(value: bytearray) -> str:
    return value.decode("ascii", "replace").strip(" \t")
