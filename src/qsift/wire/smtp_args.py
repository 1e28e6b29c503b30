"""The arguments of SMTP commands, sans-IO: reverse and forward paths, ESMTP parameters, XFORWARD.

RFC 5321 §4.1.2 (paths), RFC 1870 (SIZE), RFC 6152 (BODY), RFC 6531 (SMTPUTF8), RFC 3461 (DSN: RET,
ENVID, NOTIFY, ORCPT), Postfix's XFORWARD_README (the client Postfix had the message from). Parsing is
lenient where MTAs in the field are (a space after the colon, a missing pair of angle brackets, a source
route) and strict where it matters for what we forward: no control characters in an address or a
parameter, no parameter we do not understand, none given twice.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from qsift.answers import Row
from qsift.model import Params

_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ENVID_MAX = 100  # RFC 3461 §4.4
_ORCPT_MAX = 500  # RFC 3461 §4.2 allows 500 characters for the whole parameter
_SIZE_DIGITS = 20


@dataclass(frozen=True)
class ArgumentError:
    """Why a command's argument was refused, as the reply to send (code, enhanced status, text)."""

    code: int
    status: str
    text: str

    @classmethod
    def of(cls, row: Row) -> ArgumentError:
        """A refusal that is a row of the answer table (policy, not syntax)."""
        reply = row.reply()
        return cls(reply.smtp_code, reply.enhanced_status, reply.text)


def _has_control(data: bytes) -> bool:
    return any(b < 0x20 or b == 0x7F for b in data)


def parse_path(arg: bytes, *, max_length: int, sender: bool) -> tuple[bytes, bytes] | ArgumentError:
    """Split `<address> params` into the address (no brackets, no source route) and the rest."""
    status = "5.1.7" if sender else "5.1.3"
    what = "sender" if sender else "recipient"
    bad = ArgumentError(501, status, f"Bad {what} address syntax")
    arg = arg.lstrip(b" ")
    if arg.startswith(b"<"):
        end = arg.find(b">")
        if end < 0:
            return bad
        address, rest = arg[1:end], arg[end + 1 :]
        if rest and not rest.startswith(b" "):
            return bad
    else:
        # Without brackets (seen from old or sloppy clients, accepted by Postfix): up to the first space.
        address, space, rest = arg.partition(b" ")
        rest = space + rest
        if not address:
            return bad
    if address.startswith(b"@"):
        # A source route, "@relay1,@relay2:user@example.net": RFC 5321 §4.1.1.3 says accept and ignore it.
        _, colon, address = address.partition(b":")
        if not colon:
            return bad
    if (
        _has_control(address)
        or b"<" in address
        or b">" in address
        or (b" " in address and not address.startswith(b'"'))
    ):
        return bad
    if not sender and not address:
        return bad
    if len(address) > max_length:
        return ArgumentError(501, status, f"{what.capitalize()} address too long")
    return address, rest


def _split_params(rest: bytes) -> list[tuple[str, str | None]] | ArgumentError:
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for token in rest.split():
        key, eq, value = token.partition(b"=")
        if not _KEYWORD.match(key) or (eq and not value) or _has_control(value):
            return ArgumentError(501, "5.5.4", "Bad parameter syntax")
        name = key.decode("ascii").upper()
        if name in seen:
            return ArgumentError(501, "5.5.4", f"Parameter {name} given twice")
        seen.add(name)
        params.append((name, value.decode("utf-8", "surrogateescape") if eq else None))
    return params


def _path_and_params(
    arg: bytes, verb: str, keyword: bytes, *, extended: bool, max_length: int
) -> tuple[bytes, list[tuple[str, str | None]]] | ArgumentError:
    """What MAIL and RCPT share: `FROM:`/`TO:`, the path, and parameters only after EHLO."""
    if arg[: len(keyword)].upper() != keyword:
        return ArgumentError(501, "5.5.4", f"Syntax: {verb} {keyword.decode()}<address>")
    path = parse_path(arg[len(keyword) :], max_length=max_length, sender=verb == "MAIL")
    if isinstance(path, ArgumentError):
        return path
    address, rest = path
    params = _split_params(rest)
    if isinstance(params, ArgumentError):
        return params
    if params and not extended:
        return ArgumentError(555, "5.5.4", f"{verb} parameters need EHLO")
    return address, params


def _unsupported(name: str) -> ArgumentError:
    return ArgumentError(555, "5.5.4", f"Unsupported parameter {name}")


def _bad_value(name: str) -> ArgumentError:
    return ArgumentError(501, "5.5.4", f"Bad value for parameter {name}")


@dataclass(frozen=True)
class MailArguments:
    """What MAIL FROM said: the sender, the parameters to carry forward, and the declared size."""

    sender: bytes
    params: Params
    declared_size: int | None


def parse_mail(
    arg: bytes, *, extended: bool, max_length: int, max_message_size: int
) -> MailArguments | ArgumentError:
    """`FROM:<sender> [params]` after the MAIL verb."""
    parsed = _path_and_params(arg, "MAIL", b"FROM:", extended=extended, max_length=max_length)
    if isinstance(parsed, ArgumentError):
        return parsed
    sender, params = parsed
    kept: list[tuple[str, str | None]] = []
    declared_size: int | None = None
    for name, value in params:
        error = _check_mail_param(name, value)
        if error is not None:
            return error
        if name == "SIZE":
            assert value is not None  # checked above
            declared_size = int(value)
            if declared_size > max_message_size:
                return ArgumentError(552, "5.3.4", "Message size exceeds fixed limit")
        else:
            # SIZE is not carried: the forward states the size of what it sends.
            kept.append((name, value.upper() if name in ("BODY", "RET") and value else value))
    error = _check_8bit(sender, smtputf8=("SMTPUTF8", None) in params, sender=True)
    return error or MailArguments(sender, tuple(kept), declared_size)


def _check_mail_param(name: str, value: str | None) -> ArgumentError | None:
    if name == "SIZE":
        ok = value is not None and value.isascii() and value.isdigit() and len(value) <= _SIZE_DIGITS
    elif name == "BODY":
        if value is not None and value.upper() == "BINARYMIME":
            return ArgumentError(555, "5.5.4", "BODY=BINARYMIME needs CHUNKING, which is not offered")
        ok = value is not None and value.upper() in ("7BIT", "8BITMIME")
    elif name == "SMTPUTF8":
        ok = value is None
    elif name == "RET":
        ok = value is not None and value.upper() in ("FULL", "HDRS")
    elif name == "ENVID":
        ok = value is not None and len(value) <= _ENVID_MAX
    else:
        return _unsupported(name)
    return None if ok else _bad_value(name)


def _check_8bit(address: bytes, *, smtputf8: bool, sender: bool) -> ArgumentError | None:
    """A non-ASCII address only in a transaction that declared SMTPUTF8, and then in UTF-8 (RFC 6531 §3.3).

    Without SMTPUTF8 the client promised ASCII: an 8-bit address then is refused with Postfix's reply.
    """
    if address.isascii():
        return None
    if not smtputf8:
        return ArgumentError.of(Row.UTF8_NOT_DECLARED)
    try:
        address.decode("utf-8")
    except UnicodeDecodeError:
        return ArgumentError.of(Row.SENDER_NOT_UTF8 if sender else Row.RECIPIENT_NOT_UTF8)
    return None


@dataclass(frozen=True)
class RcptArguments:
    recipient: bytes
    params: Params


def parse_rcpt(
    arg: bytes, *, extended: bool, max_length: int, smtputf8: bool
) -> RcptArguments | ArgumentError:
    """`TO:<recipient> [params]` after the RCPT verb; `smtputf8` if the MAIL command declared SMTPUTF8."""
    parsed = _path_and_params(arg, "RCPT", b"TO:", extended=extended, max_length=max_length)
    if isinstance(parsed, ArgumentError):
        return parsed
    recipient, params = parsed
    error = _check_8bit(recipient, smtputf8=smtputf8, sender=False)
    if error is not None:
        return error
    kept: list[tuple[str, str | None]] = []
    for name, value in params:
        if name == "NOTIFY":
            words = (value or "").upper().split(",")
            if not (words == ["NEVER"] or (set(words) <= _NOTIFY and len(set(words)) == len(words))):
                return _bad_value(name)
            kept.append((name, ",".join(words)))
        elif name == "ORCPT":
            addr_type, semicolon, _ = (value or "").partition(";")
            if not semicolon or not addr_type or len(value or "") > _ORCPT_MAX:
                return _bad_value(name)
            kept.append((name, value))
        else:
            return _unsupported(name)
    return RcptArguments(recipient, tuple(kept))


# --- XFORWARD (Postfix's XFORWARD_README) ---------------------------------------------------------------

#: The attributes offered in the EHLO reply, in the order Postfix's smtpd announces them.
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT")
#: "An attribute-value element must not be longer than 255 characters."
_XFORWARD_VALUE_MAX = 255
_XFORWARD_PROTO_MAX = 64
#: Not in an XFORWARD value after decoding: "characters that are special in message headers", the set
#: Postfix's own smtpd censors (smtpd.c, NEUTER_CHARACTERS). Controls, spaces and non-ASCII go too.
_XFORWARD_SPECIALS = frozenset(b'<>()\\";@')
#: [UNAVAILABLE] in any case; [TEMPUNAVAIL] is XCLIENT's word for a name lookup that failed for now.
_XFORWARD_UNAVAILABLE = frozenset({b"[UNAVAILABLE]", b"[TEMPUNAVAIL]"})
_HEX_UPPER = frozenset(b"0123456789ABCDEF")

#: XFORWARD's attributes: upper-case name -> decoded value, None when the client said unavailable.
Forwarded = dict[str, str | None]


def decode_xtext(text: bytes) -> bytes | None:
    """RFC 1891 §5 xtext: "!" to "~" stand for themselves except "+" and "="; "+XX" is a byte in
    upper-case hexadecimal. None if `text` is not xtext."""
    out = bytearray()
    pos = 0
    while pos < len(text):
        byte = text[pos]
        if byte == 0x2B:  # "+"
            digits = text[pos + 1 : pos + 3]
            if len(digits) != 2 or not set(digits) <= _HEX_UPPER:
                return None
            out.append(int(digits, 16))
            pos += 3
            continue
        if byte < 0x21 or byte > 0x7E or byte == 0x3D:  # "="
            return None
        out.append(byte)
        pos += 1
    return bytes(out)


def encode_xtext(value: bytes) -> bytes:
    """RFC 1891 §5 xtext: bytes outside "!" to "~", and "+" and "=", as "+XX"."""
    return b"".join(
        bytes([byte]) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else b"+%02X" % byte
        for byte in value
    )


def xforward_value(value: str | None) -> bytes:
    """A value as XFORWARD carries it: "[UNAVAILABLE]" for None; what Postfix's smtpd would censor
    (controls, spaces, non-ASCII, header specials) as "?", as it does; cut to fit 255 characters."""
    if value is None:
        return b"[UNAVAILABLE]"
    censored = bytes(
        b if 0x21 <= b <= 0x7E and b not in _XFORWARD_SPECIALS else 0x3F
        for b in value.encode("utf-8", "replace")
    )
    encoded = encode_xtext(censored)
    while len(encoded) > _XFORWARD_VALUE_MAX:
        censored = censored[:-1]
        encoded = encode_xtext(censored)
    return encoded


def parse_xforward(arg: bytes) -> Forwarded | ArgumentError:
    """`NAME=value ADDR=value ...` after the XFORWARD verb: names in any case, values in xtext."""
    tokens = arg.split()
    if not tokens:
        return ArgumentError(501, "5.5.4", "Syntax: XFORWARD attribute=value...")
    attributes: Forwarded = {}
    for token in tokens:
        key, eq, raw = token.partition(b"=")
        name = key.upper().decode("ascii", "backslashreplace")
        if name not in XFORWARD_ATTRIBUTES:
            return ArgumentError(501, "5.5.4", f"Bad XFORWARD attribute name: {name[:64]}")
        if not eq or not raw:
            return ArgumentError(501, "5.5.4", f"Syntax: XFORWARD {name}=value")
        if len(raw) > _XFORWARD_VALUE_MAX:
            return ArgumentError(501, "5.5.4", f"XFORWARD {name} value too long")
        value = decode_xtext(raw)
        if value is None or any(b < 0x21 or b > 0x7E or b in _XFORWARD_SPECIALS for b in value):
            return _bad_xforward(name)
        if value.upper() in _XFORWARD_UNAVAILABLE:
            attributes[name] = None
            continue
        checked = _xforward_value(name, value.decode("ascii"))
        if checked is None:
            return _bad_xforward(name)
        attributes[name] = checked
    return attributes


def _bad_xforward(name: str) -> ArgumentError:
    return ArgumentError(501, "5.5.4", f"Bad XFORWARD {name} syntax")


def _xforward_value(name: str, value: str) -> str | None:
    """The value as qsift keeps it, or None when this attribute cannot have it."""
    if name == "ADDR":
        # "an IPv6 address prefixed with IPV6:", in any case (XCLIENT_README, Note 2). Postfix's client
        # (smtp_proto.c) sends the address as its queue file has it, so a bare one is taken too.
        if value[:5].upper() == "IPV6:":
            value = value[5:]
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return None
    elif name == "PORT":
        if not (value.isdigit() and len(value) <= 5 and int(value) <= 65535):
            return None
    elif name == "PROTO":
        if len(value) > _XFORWARD_PROTO_MAX:
            return None
    elif name == "SOURCE":
        value = value.upper()
        if value not in ("LOCAL", "REMOTE"):
            return None
    return value
