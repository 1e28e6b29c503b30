"""The policy a message is judged by: destinies, spam levels, lovers and bypass lists, quarantine, notices.

Its parts are declared here and in destiny.py, checks/spam_levels.py and auth/signing.py, and written in
`[destiny]`, `[quarantine]` (the category switches), `[notify]` (the admins and recipient warnings),
`[spam]` (the levels), `[dkim]` (whether originating mail is signed), `[auth]` (whether inbound mail is
checked), `[arc]` (whether passed-on mail is sealed) and `[policy]`; each policy bank
(bank.py) lays overlays of the same declarations over them, as amavisd-new's `%policy_bank` overlays its
variables. Everything per recipient is answered by
`for_recipient`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from qsift.auth.settings import AuthPolicy, SealingSwitches, SigningSwitches
from qsift.checks.spam_levels import SpamLevels
from qsift.declare import INTEGER, LEVEL, STRINGS, declared, laid_over, setting, tables
from qsift.model import Category
from qsift.policy.destiny import DestinySettings
from qsift.policy.lookup import AddressTable
from qsift.store.amavisd_lookups import (
    BYPASS_COLUMNS,
    NOT_LISTED,
    NOTHING_FOUND,
    FoundSettings,
    SenderListing,
)

#: `[policy]` list keys naming the recipients who accept a category (amavisd-new's @*_lovers_maps).
LOVERS = {
    "virus_lovers": Category.VIRUS,
    "banned_files_lovers": Category.BANNED,
    "dmarc_lovers": Category.DMARC,
    "unchecked_lovers": Category.UNCHECKED,
    "spam_lovers": Category.SPAM,
    "bad_header_lovers": Category.BAD_HEADER,
    "oversized_lovers": Category.OVERSIZED,
}
#: `[policy]` list keys naming the recipients for whom a check does not count (@bypass_*_checks_maps):
#: amavisd-new's names, the same as its `policy` table's columns.
BYPASS = BYPASS_COLUMNS
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


def _keep(category: str, on: bool) -> bool:
    return setting(on, f"Keep {category} mail that is not delivered.")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class QuarantineSwitches:
    """Which categories are quarantined when not delivered."""

    virus: bool = _keep("virus", True)
    banned: bool = _keep("banned", True)
    dmarc: bool = _keep("dmarc", False)
    spam: bool = _keep("spam", True)
    unchecked: bool = _keep("unchecked", False)
    bad_header: bool = _keep("bad_header", False)
    oversized: bool = _keep("oversized", False)


def _admin(category: str) -> str:
    return setting("", f"Address told about blocked {category} mail; empty: nobody.")  # type: ignore[no-any-return]


def _warn(category: str) -> bool:
    return setting(False, f"Warn local recipients of blocked {category} mail.")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class NotifyPolicy:
    """Who hears of blocked mail: admins by category, and which blocked recipients are warned."""

    virus_admin: str = _admin("virus")
    banned_admin: str = _admin("banned")
    spam_admin: str = _admin("spam")
    bad_header_admin: str = _admin("bad_header")
    warn_virus_recip: bool = _warn("virus")
    warn_banned_recip: bool = _warn("banned")
    warn_bad_header_recip: bool = _warn("bad_header")


def _lookup(doc: str, default: list[str] | None = None) -> AddressTable:
    return setting(default, doc, kind=STRINGS, parse=AddressTable.parse)  # type: ignore[no-any-return]


def _level(name: str) -> float | None:
    doc = dict(declared(SpamLevels))[name].doc
    return setting(None, doc, kind=LEVEL)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RecipientOverride:
    """One `[[policy.recipient]]` table: settings for the recipients it matches."""

    match: AddressTable = setting(
        doc="Lookup table of the recipients this applies to.", kind=STRINGS, parse=AddressTable.parse
    )
    tag_level: float | None = _level("tag_level")
    tag2_level: float | None = _level("tag2_level")
    kill_level: float | None = _level("kill_level")
    dsn_cutoff_level: float | None = _level("dsn_cutoff_level")
    quarantine_cutoff_level: float | None = _level("quarantine_cutoff_level")
    message_size_limit: int | None = setting(
        None, "As [policy] message_size_limit, for these recipients.", kind=INTEGER
    )
    whitelist_sender: AddressTable | None = setting(
        None,
        "Senders these recipients take as not spam (lookup table of sender addresses); unset: "
        "[policy] whitelist_sender decides.",
        kind=STRINGS,
        parse=AddressTable.parse,
    )
    blacklist_sender: AddressTable | None = setting(
        None,
        "Senders whose mail is spam to these recipients (lookup table of sender addresses); unset: "
        "[policy] blacklist_sender decides.",
        kind=STRINGS,
        parse=AddressTable.parse,
    )


#: The levels a `[[policy.recipient]]` table may set; the pen pals settings are the message's (the
#: policy banks'), as amavisd-new's are.
_RECIPIENT_LEVELS = tuple(f.name for f in fields(RecipientOverride) if f.name in dict(declared(SpamLevels)))


@dataclass(frozen=True)
class PolicySettings:
    """`[policy]`: who is local, who loves or bypasses what, size limits, per-recipient levels."""

    local_domains: AddressTable | None = _lookup("Lookup table of local recipients; unset: all are local.")
    recipient_delimiter: str = setting(
        "",
        'Address extension delimiter (amavisd-new\'s), e.g. "+".',
        check=lambda v: None if len(v) <= 1 else "must be one character or empty",
    )
    message_size_limit: int = setting(0, "Larger messages are OVERSIZED for a recipient; 0: no limit.")
    virus_lovers: AddressTable = _lookup("Recipients who accept virus mail (lookup table).", [])
    banned_files_lovers: AddressTable = _lookup("Recipients who accept banned mail (lookup table).", [])
    dmarc_lovers: AddressTable = _lookup(
        "Recipients who accept mail failing its domain's DMARC p=reject (lookup table).", []
    )
    unchecked_lovers: AddressTable = _lookup("Recipients who accept unchecked mail (lookup table).", [])
    spam_lovers: AddressTable = _lookup("Recipients who accept spam mail (lookup table).", [])
    bad_header_lovers: AddressTable = _lookup("Recipients who accept bad_header mail (lookup table).", [])
    oversized_lovers: AddressTable = _lookup("Recipients who accept oversized mail (lookup table).", [])
    bypass_virus_checks: AddressTable = _lookup("Recipients for whom the virus check does not count.", [])
    bypass_banned_checks: AddressTable = _lookup("Recipients for whom the banned check does not count.", [])
    bypass_spam_checks: AddressTable = _lookup("Recipients for whom the spam check does not count.", [])
    bypass_header_checks: AddressTable = _lookup(
        "Recipients for whom the bad_header check does not count.", []
    )
    whitelist_sender: AddressTable = _lookup(
        "Senders whose mail is never spam, to any recipient (lookup table of sender addresses; "
        "amavisd-new's @whitelist_sender_maps).",
        [],
    )
    blacklist_sender: AddressTable = _lookup(
        "Senders whose mail is always spam (lookup table of sender addresses; amavisd-new's "
        "@blacklist_sender_maps); a sender on both lists is whitelisted.",
        [],
    )
    recipient: tuple[RecipientOverride, ...] = tables(
        RecipientOverride,
        "Per-recipient spam levels and size limit: the first table whose `match` matches counts.",
    )


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
    #: Whether the recipient white- or blacklists the sender (msgrcpt.wl and bl), and its score boost.
    listing: SenderListing = NOT_LISTED


@dataclass(frozen=True)
class Policy:
    """The sections a policy is made of, the base ones or with banks laid over them."""

    destinies: DestinySettings = field(default_factory=DestinySettings)
    levels: SpamLevels = field(default_factory=SpamLevels)
    rules: PolicySettings = field(default_factory=PolicySettings)
    quarantine: QuarantineSwitches = field(default_factory=QuarantineSwitches)
    notify: NotifyPolicy = field(default_factory=NotifyPolicy)
    dkim: SigningSwitches = field(default_factory=SigningSwitches)
    auth: AuthPolicy = field(default_factory=AuthPolicy)
    arc: SealingSwitches = field(default_factory=SealingSwitches)
    #: Mail from this site's own users (amavisd-new's $originating): logged as outbound or internal.
    originating: bool = False
    #: The policy banks that made this policy, in the order they were laid on; () for the base.
    banks: tuple[str, ...] = ()
    #: The envelope sender the sender lists are asked about; None: no message (no list applies).
    sender: str | None = None
    #: Per recipient address, what amavisd-new's SQL lookup tables set (store/pg_lookups.py); consulted
    #: before the TOML, as amavisd-new puts its SQL lookups first in every @*_maps.
    found: Mapping[str, FoundSettings] = field(default_factory=dict)

    def overlaid(self, overlays: Mapping[str, Mapping[str, object]], originating: bool, name: str) -> Policy:
        """This policy with a bank's overlays (by section: destiny, quarantine, notify, spam, policy,
        dkim, auth, arc)."""
        return Policy(
            laid_over(self.destinies, overlays.get("destiny", {})),
            laid_over(self.levels, overlays.get("spam", {})),
            laid_over(self.rules, overlays.get("policy", {})),
            laid_over(self.quarantine, overlays.get("quarantine", {})),
            laid_over(self.notify, overlays.get("notify", {})),
            laid_over(self.dkim, overlays.get("dkim", {})),
            laid_over(self.auth, overlays.get("auth", {})),
            laid_over(self.arc, overlays.get("arc", {})),
            originating,
            (*self.banks, name),
        )

    def for_message(self, sender: str, found: Mapping[str, FoundSettings]) -> Policy:
        """This policy for one message: its sender, and what SQL said about its recipients."""
        return replace(self, sender=sender, found=found)

    @property
    def quarantined(self) -> frozenset[Category]:
        return frozenset(c for c in Category if getattr(self.quarantine, c.name.lower(), False))

    @property
    def admins(self) -> Mapping[Category, str]:
        """Category to the address its admin notices go to."""
        return {c: getattr(self.notify, key) for key, c in ADMIN_KINDS.items() if getattr(self.notify, key)}

    @property
    def warn_recipients(self) -> frozenset[Category]:
        return frozenset(c for key, c in WARN_RECIPIENTS.items() if getattr(self.notify, key))

    @property
    def message_size_limit(self) -> int:
        return self.rules.message_size_limit

    def for_recipient(self, address: str) -> RecipientSettings:
        """SQL's value where it set one (`found`), else the first matching [[policy.recipient]] table's,
        else [policy]'s and [spam]'s."""
        rules, delimiter = self.rules, self.rules.recipient_delimiter
        sql = self.found.get(address, NOTHING_FOUND)
        override = [o for o in rules.recipient if o.match.matches(address, delimiter)]

        def first(key: str, default: float | int | None) -> float | int | None:
            # amavisd-new's "first table with a defined value wins"
            return next((v for o in override if (v := getattr(o, key)) is not None), default)

        def flagged(
            tables: Mapping[str, Category], sql_flags: Mapping[Category, bool]
        ) -> frozenset[Category]:
            return frozenset(
                c
                for key, c in tables.items()
                if sql_flags.get(c, getattr(rules, key).matches(address, delimiter))
            )

        chosen = {
            name: sql.levels.get(name, first(name, getattr(self.levels, name))) for name in _RECIPIENT_LEVELS
        }
        levels = replace(self.levels, **chosen)  # type: ignore[arg-type]
        local = self.is_local(address)
        size = sql.message_size_limit
        if size is None:
            size = int(first("message_size_limit", rules.message_size_limit) or 0)
        return RecipientSettings(
            local=local,
            levels=levels,
            loves=flagged(LOVERS, sql.loves),
            bypasses=flagged(BYPASS, sql.bypasses),
            message_size_limit=size,
            listing=self._listing(sql.listing, override),
        )

    def _listing(self, sql: SenderListing, override: list[RecipientOverride]) -> SenderListing:
        """SQL's wblist first, then the recipient's own TOML lists, then the global ones; a score boost
        from SQL stays whichever decides."""
        if self.sender is None or sql.whitelisted or sql.blacklisted:
            return sql
        sender, delimiter = self.sender, self.rules.recipient_delimiter
        tables = [(o.whitelist_sender, o.blacklist_sender) for o in override]
        tables.append((self.rules.whitelist_sender, self.rules.blacklist_sender))
        for white, black in tables:
            if white is not None and white.matches(sender, delimiter):
                return replace(sql, whitelisted=True)
            if black is not None and black.matches(sender, delimiter):
                return replace(sql, blacklisted=True)
        return sql

    def is_local(self, address: str) -> bool:
        """Whether the address is local: SQL's users row for a recipient where it says so, else `[policy]
        local_domains` (unset: every address)."""
        sql = self.found.get(address, NOTHING_FOUND).local
        if sql is not None:
            return sql
        table = self.rules.local_domains
        return table is None or table.matches(address, self.rules.recipient_delimiter)

    def bypassed_by_all(self, category: Category, addresses: tuple[str, ...]) -> bool:
        """Whether no recipient needs this check: then it is not run at all. The spam check is not needed
        for a recipient who white- or blacklists the sender, as amavisd-new skips it then."""

        def needs_no(settings: RecipientSettings) -> bool:
            listed = settings.listing.whitelisted or settings.listing.blacklisted
            return category in settings.bypasses or (category is Category.SPAM and listed)

        return bool(addresses) and all(needs_no(self.for_recipient(a)) for a in addresses)
