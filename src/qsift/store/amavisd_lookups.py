"""What amavisd-new's lookup tables say about one recipient: its `users` rows joined with `policy`, and the
`wblist` rows of those users for the sender (reference: amavisd-sql.md §1.1, §2.2).

Pure, and below the policy (policy/settings.py lays these values over the TOML's): the rows come from
store/pg_lookups.py, in the order amavisd-new's statements give them (highest
`priority` first), and are read here as amavisd-new reads them:
- a `policy` column that is NULL (or missing) says nothing: the next row, then the TOML, decides;
- booleans are false for N, n, F, f, 0, NUL or space, and true for any other character;
- a `users` row makes the recipient local, unless `users.local` exists (then its value does); a match on
  the catch-all `@.` alone does not (`Lookup/SQL.pm`);
- `wblist.wb`, tried for each matching user in turn: a number adds to the score and the search goes on;
  space or empty is neutral and stops it; B, N or F blacklists; W, Y, T or anything else whitelists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qsift.model import Category

#: `policy` columns that carry a qsift per-recipient setting, as amavisd-new's `@*_lovers_maps`.
LOVER_COLUMNS = {
    "virus_lover": Category.VIRUS,
    "banned_files_lover": Category.BANNED,
    "unchecked_lover": Category.UNCHECKED,
    "spam_lover": Category.SPAM,
    "bad_header_lover": Category.BAD_HEADER,
}
BYPASS_COLUMNS = {
    "bypass_virus_checks": Category.VIRUS,
    "bypass_banned_checks": Category.BANNED,
    "bypass_spam_checks": Category.SPAM,
    "bypass_header_checks": Category.BAD_HEADER,
}
#: `policy` column to the SpamLevels field it sets.
LEVEL_COLUMNS = {
    "spam_tag_level": "tag_level",
    "spam_tag2_level": "tag2_level",
    "spam_kill_level": "kill_level",
    "spam_dsn_cutoff_level": "dsn_cutoff_level",
    "spam_quarantine_cutoff_level": "quarantine_cutoff_level",
}
#: At most this many domain keys per address, as amavisd-new's make_query_keys.
_DOMAIN_KEYS = 20
_NUMBER = re.compile(r" *([+-]?\d+(?:\.\d*)?) *")


@dataclass(frozen=True)
class PolicyRow:
    """One `users` row that matched a recipient's key, with its `policy` row's columns (None: NULL)."""

    user_id: int
    key: str
    columns: Mapping[str, object]


@dataclass(frozen=True)
class SenderListing:
    """A recipient's verdict on the sender: white- or blacklisted, and a score to add (soft lists)."""

    whitelisted: bool = False
    blacklisted: bool = False
    score_boost: float = 0.0


NOT_LISTED = SenderListing()


@dataclass(frozen=True)
class FoundSettings:
    """What the rows set for one recipient; a value left None (or out of a mapping) falls through."""

    #: The matching users' ids, highest priority first: the wblist rows belong to them.
    user_ids: tuple[int, ...] = ()
    local: bool | None = None
    loves: Mapping[Category, bool] = field(default_factory=dict)
    bypasses: Mapping[Category, bool] = field(default_factory=dict)
    #: SpamLevels field name to its value.
    levels: Mapping[str, float] = field(default_factory=dict)
    message_size_limit: int | None = None
    listing: SenderListing = NOT_LISTED


NOTHING_FOUND = FoundSettings()


def sql_keys(address: str, delimiter: str = "") -> tuple[str, ...]:
    """The keys amavisd-new looks `address` up by in SQL, most specific first (make_query_keys):
    `User+Ext@Dom` as given, `user+ext@dom`, `user@dom`, `@dom`, `@.dom` and each parent, `@.`.
    The null sender's are "", "@" and "@.". Bare local parts (`user`) are not looked up."""
    if not address:
        return ("", "@", "@.")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    lowered, domain = local.lower(), domain.lower()
    keys = [address, f"{lowered}@{domain}" if domain else lowered]
    cut = lowered.find(delimiter, 1) if delimiter else -1
    if cut > 0 and domain:
        keys.append(f"{lowered[:cut]}@{domain}")
    if domain:
        keys.append(f"@{domain}")
        labels = domain.split(".")
        keys.extend(f"@.{'.'.join(labels[i:])}" for i in range(min(len(labels), _DOMAIN_KEYS)))
    keys.append("@.")
    return tuple(dict.fromkeys(keys))


def truth(value: object) -> bool | None:
    """amavisd-new's reading of a Y/N column: None for NULL."""
    if value is None:
        return None
    text = str(value)
    return not (text == "" or text[0] in "NnFf0\0 ")


def found_settings(rows: Sequence[PolicyRow]) -> FoundSettings:
    """The settings `rows` (one recipient's, highest priority first) give: the first non-NULL value wins."""

    def first(column: str) -> object:
        return next((v for row in rows if (v := row.columns.get(column)) is not None), None)

    def flags(columns: Mapping[str, Category]) -> dict[Category, bool]:
        return {c: flag for column, c in columns.items() if (flag := truth(first(column))) is not None}

    levels = {name: float(v) for column, name in LEVEL_COLUMNS.items() if (v := first(column)) is not None}  # type: ignore[arg-type]
    size = first("message_size_limit")
    return FoundSettings(
        user_ids=tuple(row.user_id for row in rows),
        local=_local(rows),
        loves=flags(LOVER_COLUMNS),
        bypasses=flags(BYPASS_COLUMNS),
        levels=levels,
        message_size_limit=int(size) if size is not None else None,  # type: ignore[call-overload]
    )


def _local(rows: Sequence[PolicyRow]) -> bool | None:
    for row in rows:
        if "local" in row.columns:
            said = truth(row.columns["local"])
            if said is not None:
                return said
        elif row.key != "@.":
            return True
    return None


def sender_listing(user_ids: Sequence[int], wb_by_user: Mapping[int, str]) -> SenderListing:
    """The listing of the sender by the users `user_ids` (highest priority first), each user's `wb` being
    its highest-priority row for the sender's keys."""
    boost = 0.0
    for user_id in user_ids:
        wb = wb_by_user.get(user_id)
        if wb is None:
            continue
        number = _NUMBER.fullmatch(wb)
        if number:
            boost += float(number.group(1))
            continue
        if not wb.strip(" \0"):
            return SenderListing(score_boost=boost)
        if re.fullmatch(r"[BbNnFf] *", wb):
            return SenderListing(blacklisted=True, score_boost=boost)
        return SenderListing(whitelisted=True, score_boost=boost)
    return SenderListing(score_boost=boost)
