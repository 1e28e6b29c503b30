"""SPF records as data (RFC 7208 §4.5, §4.6, §5-§7, §12): the parser and the macro expander, no I/O.

Every syntax error anywhere in a record makes the whole check a permerror before anything is evaluated
(RFC 7208 §4.6), so a record is parsed in full (macro strings included) before the first DNS question.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

#: A name longer than this is cut at its left, label by label (RFC 7208 §7.3).
MAX_DOMAIN_LENGTH = 253
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
#: Macro letters allowed only in an explanation's text (RFC 7208 §7.2).
EXPLANATION_ONLY = frozenset("crt")

_MACRO = re.compile(r"%(?:\{([a-zA-Z])(\d*)([rR]?)([.\-+,/_=]*)\}|([%_-]))")
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]*")
_EXPLAIN_LITERAL = re.compile(r"[\x20-\x24\x26-\x7e]*")
_MODIFIER_NAME = re.compile(r"([A-Za-z][A-Za-z0-9\-_.]*)=")
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9]\d*))?(?://(0|[1-9]\d*))?\Z")
_TOPLABEL = re.compile(r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z")
_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
_CIDR_DIGITS = re.compile(r"0|[1-9]\d{0,2}")


class SpfSyntaxError(ValueError):
    """The record (or a macro string in it) breaks RFC 7208's grammar: the result is permerror."""


@dataclass(frozen=True)
class Macro:
    """`%{letter digits r delimiters}`; `letter` keeps its case (upper case asks for URL escaping)."""

    letter: str
    keep: int  # rightmost parts kept; 0 for all
    reverse: bool
    delimiters: str


#: A macro string as literal text and macros, in order.
MacroString = tuple[str | Macro, ...]


@dataclass(frozen=True)
class Mechanism:
    qualifier: str  # "pass", "fail", "softfail", "neutral"
    name: str  # one of MECHANISMS, lower case
    domain: MacroString | None = None  # the domain-spec, None for the current domain
    network: str = ""  # ip4/ip6: the address
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class Record:
    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    explanation: MacroString | None = None


def is_spf_record(text: str) -> bool:
    """RFC 7208 §4.5: "v=spf1" then a space or the end, case-insensitively."""
    return _VERSION.match(text) is not None


def parse_record(text: str) -> Record:
    """The record's terms, in order; SpfSyntaxError for anything RFC 7208 §12 does not allow."""
    if not is_spf_record(text):
        raise SpfSyntaxError("not an SPF record")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        named = _MODIFIER_NAME.match(term)
        if named is None:
            mechanisms.append(_mechanism(term))
            continue
        name, value = named.group(1).lower(), term[named.end() :]
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise SpfSyntaxError(f"{name}= appears twice")
            modifiers[name] = parse_domain_spec(value)
        else:
            parse_macro_string(value)  # unknown modifiers are ignored, but must be well formed
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _mechanism(term: str) -> Mechanism:
    found = _MECHANISM.fullmatch(term)
    assert found is not None  # every string matches: each group may be empty
    sign, name, rest = found.group(1) or "+", found.group(2).lower(), found.group(3)
    qualifier = QUALIFIERS[sign]
    if name not in MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"bad term {term!r}")
        return Mechanism(qualifier, name)
    if name in ("ip4", "ip6"):
        return _network(qualifier, name, rest)
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # the empty suffix always matches
        rest = rest[: cidr.start()]
        cidr4, cidr6 = _cidr(cidr.group(1), 32), _cidr(cidr.group(2), 128)
    else:
        cidr4, cidr6 = 32, 128
    if not rest:
        if name in ("include", "exists"):
            raise SpfSyntaxError(f"{name} needs a domain")
        return Mechanism(qualifier, name, None, "", cidr4, cidr6)
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"bad term {term!r}")
    return Mechanism(qualifier, name, parse_domain_spec(rest[1:]), "", cidr4, cidr6)


def _network(qualifier: str, name: str, rest: str) -> Mechanism:
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"{name} needs an address")
    address, slash, length = rest[1:].partition("/")
    limit = 32 if name == "ip4" else 128
    cidr = _cidr(length, limit) if slash else limit
    pattern = r"(?:(?:0|[1-9]\d{0,2})\.){3}(?:0|[1-9]\d{0,2})" if name == "ip4" else r"[0-9A-Fa-f:.]+"
    if not re.fullmatch(pattern, address):
        raise SpfSyntaxError(f"bad {name} address {address!r}")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SpfSyntaxError(f"bad {name} address {address!r}") from None
    if cidr == limit:
        return Mechanism(qualifier, name, None, address)
    return Mechanism(qualifier, name, None, address, cidr, cidr)


def _cidr(text: str | None, limit: int) -> int:
    if text is None:
        return limit
    if not _CIDR_DIGITS.fullmatch(text) or int(text) > limit:
        raise SpfSyntaxError(f"bad prefix length /{text}")
    return int(text)


def parse_domain_spec(text: str) -> MacroString:
    """A domain-spec: a macro string ending in a macro or in a top label (RFC 7208 §7.1, §12)."""
    parts = parse_macro_string(text)
    if not parts:
        raise SpfSyntaxError("empty domain")
    if isinstance(parts[-1], str) and not _TOPLABEL.search(parts[-1]):
        raise SpfSyntaxError(f"{text!r} does not end in a top-level domain")
    return parts


def parse_macro_string(text: str, *, explanation: bool = False) -> MacroString:
    """Literal text and macros; `explanation` allows spaces and the letters c, r, t (RFC 7208 §7.1)."""
    literal = _EXPLAIN_LITERAL if explanation else _LITERAL
    parts: list[str | Macro] = []
    position = 0
    while position < len(text):
        plain = literal.match(text, position)
        assert plain is not None  # the pattern may match nothing
        if plain.end() > position:
            _append(parts, plain.group())
            position = plain.end()
            continue
        macro = _MACRO.match(text, position)
        if macro is None:
            raise SpfSyntaxError(f"bad macro or character at {text[position : position + 8]!r}")
        position = macro.end()
        escape = macro.group(5)
        if escape is not None:
            _append(parts, {"%": "%", "_": " ", "-": "%20"}[escape])
            continue
        parts.append(_macro(macro, explanation))
    return tuple(parts)


def _append(parts: list[str | Macro], text: str) -> None:
    if parts and isinstance(parts[-1], str):
        parts[-1] += text
    else:
        parts.append(text)


def _macro(found: re.Match[str], explanation: bool) -> Macro:
    letter, digits, reverse, delimiters = found.group(1, 2, 3, 4)
    allowed = "slodiphv" + ("crt" if explanation else "")
    if letter.lower() not in allowed:
        raise SpfSyntaxError(f"macro letter {letter!r} is not allowed here")
    if digits and int(digits) == 0:
        raise SpfSyntaxError("a macro keeps at least one part")
    # More parts than a name can have are all of them; the cap keeps a huge number cheap.
    keep = min(int(digits), 1000) if digits else 0
    return Macro(letter, keep, bool(reverse), delimiters or ".")


def uses_letter(parts: MacroString, letter: str) -> bool:
    return any(isinstance(part, Macro) and part.letter.lower() == letter for part in parts)


def expand(parts: MacroString, values: Mapping[str, str]) -> str:
    """The macro string with each macro replaced (RFC 7208 §7.3); `values` by lower-case letter."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        labels = re.split("[" + re.escape(part.delimiters) + "]", values[part.letter.lower()])
        if part.reverse:
            labels.reverse()
        if part.keep:
            labels = labels[-part.keep :]
        text = ".".join(labels)
        out.append(urllib.parse.quote(text, safe="") if part.letter.isupper() else text)
    return "".join(out)


def as_domain(name: str) -> str:
    """An expanded domain-spec as the name to ask for: no final dot, cut to 253 octets (RFC 7208 §7.3)."""
    name = name.rstrip(".")
    while len(name) > MAX_DOMAIN_LENGTH and "." in name:
        name = name.partition(".")[2]
    return name
