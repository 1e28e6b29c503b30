"""The policy a message is judged by: destinies, spam levels, lovers and bypass lists, quarantine, notices.

One `Policy` is built from the configuration's `[destiny]`, `[quarantine]` (the category switches),
`[notify]` (the admins and recipient warnings), `[spam]` (the levels) and `[policy]` tables; each policy
bank (bank.py) is the same tables overlaid key by key, as amavisd-new's `%policy_bank` overlays its
variables. Everything per recipient is answered by `for_recipient`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qsift.checks.scanner_config import LEVEL_KEYS, levels_from_config
from qsift.checks.spam_levels import SpamLevels
from qsift.errors import ConfigError
from qsift.model import Category
from qsift.policy.destiny import DestinySettings, destiny_from_config
from qsift.policy.lookup import AddressTable, RecipientOverride, first_value

#: `[policy]` list keys naming the recipients who accept a category (amavisd-new's @*_lovers_maps).
LOVERS = {
    "virus_lovers": Category.VIRUS,
    "banned_files_lovers": Category.BANNED,
    "unchecked_lovers": Category.UNCHECKED,
    "spam_lovers": Category.SPAM,
    "bad_header_lovers": Category.BAD_HEADER,
    "oversized_lovers": Category.OVERSIZED,
}
#: `[policy]` list keys naming the recipients for whom a check does not count (@bypass_*_checks_maps).
BYPASS = {
    "bypass_virus_checks": Category.VIRUS,
    "bypass_banned_checks": Category.BANNED,
    "bypass_spam_checks": Category.SPAM,
    "bypass_header_checks": Category.BAD_HEADER,
}
#: `[notify]` keys a bank may change: who hears of blocked mail, and which blocked recipients are warned.
ADMIN_KINDS = {
    "virus_admin": Category.VIRUS,
    "banned_admin": Category.BANNED,
    "spam_admin": Category.SPAM,
    "bad_header_admin": Category.BAD_HEADER,
}
WARN_RECIPIENTS = {
    "warn_virus_recip": Category.VIRUS,
    "warn_banned_recip": Category.BANNED,
    "warn_bad_header_recip": Category.BAD_HEADER,
}
#: `[quarantine]` switches: the categories kept when they are not delivered (and their defaults).
QUARANTINE_DEFAULTS = {
    Category.VIRUS: True,
    Category.BANNED: True,
    Category.SPAM: True,
    Category.UNCHECKED: False,
    Category.BAD_HEADER: False,
    Category.OVERSIZED: False,
}
_RECIPIENT_KEYS = (*LEVEL_KEYS, "message_size_limit")


@dataclass(frozen=True)
class RecipientSettings:
    """The policy as it applies to one recipient."""

    local: bool
    levels: SpamLevels
    #: Categories this recipient accepts: they are noted (headers) but never block.
    loves: frozenset[Category]
    #: Categories whose checks do not count for this recipient (as if never run).
    bypasses: frozenset[Category]
    #: 0 for no limit; a larger message is OVERSIZED for this recipient.
    message_size_limit: int


@dataclass(frozen=True)
class Policy:
    destinies: DestinySettings = field(default_factory=DestinySettings)
    levels: SpamLevels = field(default_factory=SpamLevels)
    #: None: every recipient is local (no `local_domains` configured).
    local_domains: AddressTable | None = None
    lovers: Mapping[Category, AddressTable] = field(default_factory=dict)
    bypass: Mapping[Category, AddressTable] = field(default_factory=dict)
    recipient_overrides: tuple[RecipientOverride, ...] = ()
    message_size_limit: int = 0
    quarantined: frozenset[Category] = frozenset(c for c, on in QUARANTINE_DEFAULTS.items() if on)
    #: Category to the address its admin notices go to.
    admins: Mapping[Category, str] = field(default_factory=dict)
    warn_recipients: frozenset[Category] = frozenset()
    #: Mail from this site's own users (amavisd-new's $originating): logged as outbound or internal.
    originating: bool = False
    #: The policy banks that made this policy, in the order they were laid on; () for the base.
    banks: tuple[str, ...] = ()

    def for_recipient(self, address: str) -> RecipientSettings:
        overrides = self.recipient_overrides
        levels = self.levels
        if overrides:
            levels = SpamLevels(
                **{key: first_value(overrides, address, key, getattr(levels, key)) for key in LEVEL_KEYS}  # type: ignore[arg-type]
            )
        size_limit = first_value(overrides, address, "message_size_limit", self.message_size_limit)
        return RecipientSettings(
            local=self.local_domains is None or self.local_domains.matches(address),
            levels=levels,
            loves=frozenset(c for c, table in self.lovers.items() if table.matches(address)),
            bypasses=frozenset(c for c, table in self.bypass.items() if table.matches(address)),
            message_size_limit=int(size_limit or 0),
        )

    def bypassed_by_all(self, category: Category, addresses: tuple[str, ...]) -> bool:
        """Whether no recipient needs this check: then it is not run at all."""
        table = self.bypass.get(category)
        return bool(table) and bool(addresses) and all(table.matches(a) for a in addresses)  # type: ignore[union-attr]


#: The sections a policy is made of; a bank may set any of them.
SECTIONS = ("destiny", "quarantine", "notify", "spam", "policy")


def build_policy(sections: Mapping[str, Any], where: str, *, banks: tuple[str, ...] = ()) -> Policy:
    """A Policy from its sections (each a TOML table), with errors naming the section and key."""
    unknown = set(sections) - {*SECTIONS, "originating"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    policy = _table(sections.get("policy", {}), f"{where} [policy]")
    delimiter = policy.get("recipient_delimiter", "")
    if not isinstance(delimiter, str) or len(delimiter) > 1:
        raise ConfigError(f"{where} [policy] recipient_delimiter must be one character or empty")
    known = {"local_domains", "recipient_delimiter", "message_size_limit", "recipient", *LOVERS, *BYPASS}
    _known(policy, known, f"{where} [policy]")

    def table(key: str) -> AddressTable:
        return AddressTable.parse(policy.get(key, []), f"{where} [policy] {key}", delimiter)

    local = policy.get("local_domains")
    originating = sections.get("originating", False)
    if not isinstance(originating, bool):
        raise ConfigError(f"{where}: originating must be true or false")
    notify = _table(sections.get("notify", {}), f"{where} [notify]")
    return Policy(
        destinies=destiny_from_config(sections.get("destiny", {}), f"{where} [destiny]"),
        levels=_levels(sections.get("spam", {}), f"{where} [spam]"),
        local_domains=None if local is None else table("local_domains"),
        lovers={category: table(key) for key, category in LOVERS.items() if key in policy},
        bypass={category: table(key) for key, category in BYPASS.items() if key in policy},
        recipient_overrides=_overrides(
            policy.get("recipient", []), f"{where} [[policy.recipient]]", delimiter
        ),
        message_size_limit=_size(policy.get("message_size_limit", 0), f"{where} [policy] message_size_limit"),
        quarantined=_quarantined(sections.get("quarantine", {}), f"{where} [quarantine]"),
        admins=_admins(notify, f"{where} [notify]"),
        warn_recipients=_warned(notify, f"{where} [notify]"),
        originating=originating,
        banks=banks,
    )


def _levels(section: object, where: str) -> SpamLevels:
    return levels_from_config({k: v for k, v in _table(section, where).items() if k in LEVEL_KEYS}, where)


def _overrides(tables: object, where: str, delimiter: str) -> tuple[RecipientOverride, ...]:
    if not isinstance(tables, list):
        raise ConfigError(f"{where} must be a list of tables")
    overrides = []
    for index, raw in enumerate(tables, 1):
        here = f"{where} #{index}"
        entry = dict(_table(raw, here))
        match = AddressTable.parse(entry.pop("match", None), f"{here} match", delimiter)
        _known(entry, set(_RECIPIENT_KEYS), here)
        values: dict[str, float | int | None] = {}
        if "message_size_limit" in entry:
            values["message_size_limit"] = _size(
                entry.pop("message_size_limit"), f"{here} message_size_limit"
            )
        levels = levels_from_config(entry, here)
        values.update({key: getattr(levels, key) for key in entry})
        overrides.append(RecipientOverride(match, values))
    return tuple(overrides)


def _size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a whole number of bytes >= 0 (0: no limit), not {value!r}")
    return value


def _quarantined(section: object, where: str) -> frozenset[Category]:
    table = _table(section, where)
    names = {c.name.lower(): c for c in QUARANTINE_DEFAULTS}
    _known(table, set(names), where)
    kept = set()
    for name, category in names.items():
        value = table.get(name, QUARANTINE_DEFAULTS[category])
        if not isinstance(value, bool):
            raise ConfigError(f"{where} {name} must be true or false, not {value!r}")
        if value:
            kept.add(category)
    return frozenset(kept)


def _admins(notify: Mapping[str, object], where: str) -> dict[Category, str]:
    admins = {}
    for key, category in ADMIN_KINDS.items():
        value = notify.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"{where} {key} must be an address (a string), not {value!r}")
        if value:
            admins[category] = value
    return admins


def _warned(notify: Mapping[str, object], where: str) -> frozenset[Category]:
    warned = set()
    for key, category in WARN_RECIPIENTS.items():
        value = notify.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where} {key} must be true or false, not {value!r}")
        if value:
            warned.add(category)
    return frozenset(warned)


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    return value


def _known(table: Mapping[str, object], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
