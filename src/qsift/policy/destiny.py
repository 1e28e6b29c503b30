"""What becomes of a message of each category: pass, discard, bounce or reject (amavisd-new's destinies).

Defaults are the HOWTO's: viruses and banned files bounce (a DSN to the sender, unless it would go to a
faked or null sender), spam is rejected during the SMTP dialogue, bad headers and unchecked mail pass.
amavisd-new's own upstream defaults discard viruses and banned files silently; the HOWTO's choice tells the
sender, which is what a postmaster who follows it expects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qsift.declare import setting
from qsift.model import Category


class Destiny(enum.Enum):
    PASS = "pass"  # noqa: S105 - a destiny, not a password
    DISCARD = "discard"
    BOUNCE = "bounce"
    REJECT = "reject"


_CHOICES = tuple(d.value for d in Destiny)


def _destiny(default: str, category: str, why: str = "") -> Destiny:
    doc = f"What happens to mail in the {category} category.{why}"
    return setting(default, doc, choices=_CHOICES, parse=Destiny)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DestinySettings:
    """`[destiny]`: one destiny per category."""

    virus: Destiny = _destiny("bounce", "virus")
    banned: Destiny = _destiny("bounce", "banned")
    dmarc: Destiny = _destiny(
        "reject",
        "dmarc",
        " Only p=reject failures; a p=quarantine failure is tagged as spammy and passes.",
    )
    unchecked: Destiny = _destiny("pass", "unchecked")
    spam: Destiny = _destiny("reject", "spam")
    spammy: Destiny = _destiny("pass", "spammy", " Tagged, never blocked (amavisd-new's CC_SPAMMY).")
    bad_header: Destiny = _destiny("pass", "bad_header")
    oversized: Destiny = _destiny("bounce", "oversized")
    clean: Destiny = _destiny("pass", "clean")

    def of(self, category: Category) -> Destiny:
        return getattr(self, category.name.lower())  # type: ignore[no-any-return]
