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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from qsift.errors import ConfigError


@dataclass(frozen=True)
class AddressTable:
    """A list of entries, compiled for lookups; an empty table matches nobody."""

    #: Plain keys in their canonical form (`user@domain`, `user@`, `domain`, `.domain`, `.`) to True, or
    #: False for a negative entry.
    keys: dict[str, bool] = field(default_factory=dict)
    patterns: tuple[tuple[re.Pattern[str], bool], ...] = ()
    delimiter: str = ""

    @classmethod
    def parse(cls, entries: object, where: str, delimiter: str = "") -> AddressTable:
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"{where} must be a list of address patterns")
        keys: dict[str, bool] = {}
        patterns: list[tuple[re.Pattern[str], bool]] = []
        for entry in entries:
            positive = not entry.startswith("!")
            text = entry.removeprefix("!").strip()
            if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
                try:
                    patterns.append((re.compile(text[1:-1], re.IGNORECASE), positive))
                except re.error as exc:
                    raise ConfigError(f"{where}: bad regex {entry!r}: {exc}") from None
                continue
            keys[_canonical(text, f"{where}: {entry!r}")] = positive
        return cls(keys, tuple(patterns), delimiter)

    def __bool__(self) -> bool:
        return bool(self.keys or self.patterns)

    def matches(self, address: str) -> bool:
        for key in lookup_keys(address, self.delimiter):
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
        raise ConfigError(f"{where} is not an address, domain or local part")
    if local and not domain:
        return f"{local}@"
    if local:
        return f"{local}@{domain}"
    if not domain.strip("."):
        raise ConfigError(f"{where} is not an address, domain or local part")
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


@dataclass(frozen=True)
class RecipientOverride:
    """One `[[policy.recipient]]` table: settings for the recipients it matches."""

    match: AddressTable
    values: dict[str, float | int | None]


def first_value(
    overrides: Sequence[RecipientOverride], address: str, key: str, default: float | int | None
) -> float | int | None:
    """The value of `key` from the first override that matches `address` and sets it (amavisd-new's
    "first table with a defined value wins"), else `default`."""
    for override in overrides:
        if key in override.values and override.match.matches(address):
            return override.values[key]
    return default
