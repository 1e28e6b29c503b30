"""Recipient lookups as amavisd-new does them: is this address on that list?

An entry is one of
- `user@example.com`: that address;
- `user@`: that local part at any domain;
- `example.com` or `@example.com`: any address at that domain (not its subdomains);
- `.example.com` or `@.example.com`: that domain and every subdomain; `.` or `@.` is everyone;
- `/regex/`: a regular expression searched in the whole address, case-insensitively;
- any of these behind `!`: a negative entry, "not on the list", to carve out an exception.

The most specific entry wins, in amavisd-new's order (README.lookups): the full address (with, then without
its extension), the local part (with, then without), the domain, then each parent domain up to `.`. Regex
entries are tried, in order, only when no plain entry matched. Addresses and entries are compared in lower
case ($localpart_is_case_sensitive = 0). With a `recipient_delimiter` ("+", or "-" on qmail),
`user+box@example.com` also matches an entry for `user@example.com`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AddressTable:
    """A list of entries, compiled for lookups; an empty table matches nobody."""

    #: Plain keys in their canonical form (`user@domain`, `user@`, `domain`, `.domain`, `.`) to True, or
    #: False for a negative entry.
    keys: Mapping[str, bool] = field(default_factory=dict)
    patterns: tuple[tuple[re.Pattern[str], bool], ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AddressTable:
        """The table of a configuration's list; ValueError names the entry at fault."""
        keys: dict[str, bool] = {}
        patterns: list[tuple[re.Pattern[str], bool]] = []
        for entry in entries:
            positive = not entry.startswith("!")
            text = entry.removeprefix("!").strip()
            if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
                try:
                    patterns.append((re.compile(text[1:-1], re.IGNORECASE), positive))
                except re.error as exc:
                    raise ValueError(f"bad regex {entry!r}: {exc}") from None
                continue
            keys[_canonical(text, repr(entry))] = positive
        return cls(keys, tuple(patterns))

    def __bool__(self) -> bool:
        return bool(self.keys or self.patterns)

    def __hash__(self) -> int:
        return hash((tuple(self.keys.items()), self.patterns))

    def matches(self, address: str, delimiter: str = "") -> bool:
        """With a `delimiter` ("+"), `user+box@example.com` also matches `user@example.com`'s entry."""
        # Most tables are empty, and the corpus mix made about 40 lookups a message: no keys to make then.
        if self.keys:
            for key in lookup_keys(address, delimiter):
                found = self.keys.get(key)
                if found is not None:
                    return found
        for pattern, positive in self.patterns:
            if pattern.search(address):
                return positive
        return False


def _canonical(text: str, where: str) -> str:
    text = text.lower()
    if text in (".", "@."):
        return "."
    local, at, domain = text.rpartition("@")
    if not at:
        domain = text  # a bare domain
    if at and not local and not domain:
        raise ValueError(f"{where} is not an address, domain or local part")
    if local and not domain:
        return f"{local}@"
    if local:
        return f"{local}@{domain}"
    if not domain.strip("."):
        raise ValueError(f"{where} is not an address, domain or local part")
    return domain


def lookup_keys(address: str, delimiter: str = "") -> Iterator[str]:
    """The keys tried for `address`, most specific first."""
    local, at, domain = address.lower().rpartition("@")
    if not at:
        local, domain = domain, ""
    cut = local.find(delimiter, 1) if delimiter else -1
    locals_ = (local, local[:cut]) if cut > 0 else (local,)
    if domain:
        for name in locals_:
            yield f"{name}@{domain}"
    for name in locals_:
        yield f"{name}@"
    if domain:
        yield domain
        labels = domain.split(".")
        for index in range(len(labels)):
            suffix = ".".join(labels[index:])
            if suffix:
                yield f".{suffix}"
    yield "."
