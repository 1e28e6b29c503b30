"""DMARC policy records as data (RFC 7489 §6.3, with RFC 9989's changes): the parser, no I/O.

Lenient where the RFCs say to be: unknown tags are ignored, tags may come in any order after `v=DMARC1`
(RFC 9989), a missing or unknown `p=` reads as `p=none` (RFC 9989; RFC 7489 §6.6.3 does the same when
`rua=` is valid), and a bad value of another known tag reads as that tag's default. Only a record that is
not a tag list at all (a tag without "=", a bad tag name, a tag twice) is an error: DMARC's permerror.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POLICIES = ("none", "quarantine", "reject")

_VERSION = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class DmarcRecordError(ValueError):
    """Not a tag list (RFC 7489 §6.4): the result is permerror."""


@dataclass(frozen=True)
class DmarcRecord:
    policy: str = "none"  # p=
    subdomain_policy: str | None = None  # sp=, None: as p=
    #: np= (RFC 9989, from RFC 9091) for non-existent subdomains: read, not applied (see dmarc.py).
    nonexistent_policy: str | None = None
    dkim_alignment: str = "r"  # adkim= "r" relaxed, "s" strict
    spf_alignment: str = "r"  # aspf=
    percent: int = 100  # pct= (RFC 7489); RFC 9989 drops it
    testing: bool = False  # t=y (RFC 9989)
    public_suffix: str = "u"  # psd= y/n/u (RFC 9989)


def is_dmarc_record(text: str) -> bool:
    """RFC 7489 §6.6.3: a record that starts with `v=DMARC1` (then ";" or the end)."""
    return _VERSION.match(text) is not None


def parse_record(text: str) -> DmarcRecord:
    """The record's policy; DmarcRecordError when it is not a DMARC tag list."""
    if not is_dmarc_record(text):
        raise DmarcRecordError("does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip(" \t"):
            continue
        name, equals, value = part.partition("=")
        name = name.strip(" \t")
        if not equals or not _TAG_NAME.fullmatch(name):
            raise DmarcRecordError(f"{part.strip()!r} is not a tag")
        if name.lower() in tags:
            raise DmarcRecordError(f"{name}= appears twice")
        tags[name.lower()] = value.strip(" \t")
    return DmarcRecord(
        policy=_policy(tags.get("p")) or "none",
        subdomain_policy=_policy(tags.get("sp")),
        nonexistent_policy=_policy(tags.get("np")),
        dkim_alignment=_choice(tags.get("adkim"), "rs", "r"),
        spf_alignment=_choice(tags.get("aspf"), "rs", "r"),
        percent=_percent(tags.get("pct")),
        testing=_choice(tags.get("t"), "yn", "n") == "y",
        public_suffix=_choice(tags.get("psd"), "ynu", "u"),
    )


def _policy(value: str | None) -> str | None:
    lowered = (value or "").lower()
    return lowered if lowered in POLICIES else None


def _choice(value: str | None, allowed: str, default: str) -> str:
    lowered = (value or "").lower()
    return lowered if len(lowered) == 1 and lowered in allowed else default


def _percent(value: str | None) -> int:
    if value is None or not value.isascii() or not value.isdigit() or int(value) > 100:
        return 100
    return int(value)
