"""Spam scores into categories, by amavisd-new's levels.

amavisd-new's sample configuration: at `tag_level` (2.0) the X-Spam headers are added (CLEAN, minor 1,
"CleanTag"); at `tag2_level` (6.2) the message is **spammy** (X-Spam-Flag: YES, subject tag); at
`kill_level` (6.9) it is **spam**, and its destiny applies. `dsn_cutoff_level` (10) suppresses the DSN
for spam scored at or above it, `quarantine_cutoff_level` (none) the quarantine. Scores can be negative
and levels can be too, so every level is a plain number here.

The pen pals settings sit beside the levels, as amavisd-new's do in its policy banks: a reply to mail a
local user sent lowers the score by `penpals_bonus_score`, halved every `penpals_halflife` since
(policy/penpals.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from qsift.checks.scanners import SpamResult
from qsift.declare import LEVEL, SECONDS, setting
from qsift.model import Category, Finding


@dataclass(frozen=True)
class SpamLevels:
    """The levels, in `[spam]`; a policy bank may change them."""

    tag_level: float = setting(
        2.0, "Score from which X-Spam-* headers are added (local recipients).", kind=LEVEL
    )
    tag2_level: float = setting(
        6.2, "Score from which mail is spammy: subject tag and X-Spam-Flag: YES.", kind=LEVEL
    )
    kill_level: float = setting(6.9, "Score from which mail is spam and gets the spam destiny.", kind=LEVEL)
    dsn_cutoff_level: float = setting(10.0, "Score from which no DSN is sent for blocked spam.", kind=LEVEL)
    quarantine_cutoff_level: float | None = setting(
        None, "Score from which spam is not quarantined; none: always quarantined.", kind=LEVEL
    )
    penpals_bonus_score: float = setting(
        0.0,
        "Pen pals: how much a reply to mail a local user sent lowers its score (amavisd-new's sample: 8); "
        "0: off. Needs [store] url and the message log (docs/cluster.md).",
        kind=LEVEL,
        check=lambda v: None if v >= 0 else "must be 0 (off) or more",
    )
    penpals_halflife: float = setting(
        7 * 24 * 3600.0,
        "Pen pals: seconds after which the bonus for a mail sent then is halved.",
        kind=SECONDS,
    )
    penpals_threshold_low: float = setting(
        1.0, "Pen pals: a score below this is not looked up (it needs no bonus).", kind=LEVEL
    )
    penpals_threshold_high: float | None = setting(
        None,
        "Pen pals: a score that stays above this even with the whole bonus is not looked up; none: always.",
        kind=LEVEL,
    )


def spam_findings(result: SpamResult, levels: SpamLevels) -> tuple[Finding, ...]:
    """SPAM or SPAMMY with the score and the rules; nothing for a message that scored low or not at all."""
    if result.score is None:
        return ()
    score = result.score
    rules = ",".join(result.rules[:30])
    detail = f"score {score:.3f} ({result.scanner}: {rules or 'no rules'})"
    if score >= levels.kill_level:
        return (Finding(Category.SPAM, 0, detail),)
    if score >= levels.tag2_level:
        return (Finding(Category.SPAMMY, 0, detail),)
    return ()
