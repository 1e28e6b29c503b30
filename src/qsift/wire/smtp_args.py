"""The arguments of SMTP commands, sans-IO: reverse and forward paths and ESMTP parameters.

RFC 5321 §4.1.2 (paths), RFC 1870 (SIZE), RFC 6152 (BODY), RFC 6531 (SMTPUTF8), RFC 3461 (DSN: RET,
ENVID, NOTIFY, ORCPT). Parsing is lenient where MTAs in the field are (a space after the colon, a missing
pair of angle brackets, a source route) and strict where it matters for what we forward: no control
characters in an address or a parameter, no parameter we do not understand, none given twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    return MailArguments(sender, tuple(kept), declared_size)


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


@dataclass(frozen=True)
class RcptArguments:
    recipient: bytes
    params: Params


def parse_rcpt(arg: bytes, *, extended: bool, max_length: int) -> RcptArguments | ArgumentError:
    """`TO:<recipient> [params]` after the RCPT verb."""
    parsed = _path_and_params(arg, "RCPT", b"TO:", extended=extended, max_length=max_length)
    if isinstance(parsed, ArgumentError):
        return parsed
    recipient, params = parsed
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
