"""What becomes of a message of each category: pass, discard, bounce or reject (amavisd-new's destinies).

Defaults are the HOWTO's: viruses and banned files bounce (a DSN to the sender, unless it would go to a
faked or null sender), spam is rejected during the SMTP dialogue, bad headers and unchecked mail pass.
amavisd-new's own upstream defaults discard viruses and banned files silently; the HOWTO's choice tells the
sender, which is what a postmaster who follows it expects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields

from qsift.errors import ConfigError
from qsift.model import Category


class Destiny(enum.Enum):
    PASS = "pass"  # noqa: S105 - a destiny, not a password
    DISCARD = "discard"
    BOUNCE = "bounce"
    REJECT = "reject"


@dataclass(frozen=True)
class DestinySettings:
    """The `[destiny]` table: one destiny per category."""

    virus: Destiny = Destiny.BOUNCE
    banned: Destiny = Destiny.BOUNCE
    unchecked: Destiny = Destiny.PASS
    spam: Destiny = Destiny.REJECT
    #: Spammy mail is tagged, never blocked (amavisd-new: CC_SPAMMY has no destiny of its own).
    spammy: Destiny = Destiny.PASS
    bad_header: Destiny = Destiny.PASS
    oversized: Destiny = Destiny.BOUNCE
    clean: Destiny = Destiny.PASS

    def of(self, category: Category) -> Destiny:
        return getattr(self, category.name.lower())  # type: ignore[no-any-return]


def destiny_from_config(table: object, where: str = "[destiny]") -> DestinySettings:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    names = [f.name for f in fields(DestinySettings)]
    allowed = ", ".join(d.value for d in Destiny)
    values: dict[str, Destiny] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown category {key!r} (allowed: {', '.join(names)})")
        try:
            values[key] = Destiny(value)
        except ValueError:
            raise ConfigError(f"{where}: {key} must be one of {allowed}, not {value!r}") from None
    return DestinySettings(**values)
