"""Pen pals: a reply to mail a local user sent scores lower, as amavisd-new's (amavisd-sql.md §2.5).

`penpal_query` says whether the message log is asked at all and about which recipients; `penpal_bonus`
turns the mail found for a recipient into its adjustment, `-penpals_bonus_score * 2^(-age/halflife)`;
`with_penpal` is that recipient's spam result with it: the score lowered and `AM.PENPAL=<adjustment>`
first among the tests, so X-Spam-Status, the spam category and the log line all say it. Pure functions;
pipeline/penpals.py asks the log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.checks.spam_levels import SpamLevels
from qsift.model import Category, Recipient
from qsift.policy.settings import Policy
from qsift.store.penpals import PenPalQuery, SentMail

#: The test amavisd-new adds to the recipient's spam tests.
TEST = "AM.PENPAL"
#: Message-IDs asked about at most: a thread's References grows with every reply.
MAX_REFERENCES = 20
_REFERRING = re.compile(rb"^(?:in-reply-to|references)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_MESSAGE_ID = re.compile(rb"<[^<>]*>")


@dataclass(frozen=True)
class Skipped:
    """Why the log is not asked about this message (for the debug log)."""

    reason: str


@dataclass(frozen=True)
class PenPal:
    """What a mail a recipient sent earlier earns it for this message."""

    #: Added to the recipient's score: negative, at most the whole bonus.
    adjustment: float
    #: Seconds from that mail to this message.
    age: float
    sent: SentMail

    @property
    def test(self) -> str:
        """The test as X-Spam-Status lists it, rounded as amavisd-new rounds it: `AM.PENPAL=-7.321`."""
        return f"{TEST}={self.adjustment:.3f}"

    def note(self, recipient: str) -> str:
        """The summary line's words for it."""
        how = "Message-ID" if self.sent.by_reference else "address"
        sent = self.sent
        return f"penpals: <{recipient}> {self.test} (mail_id {sent.mail_id}, {_days(self.age)} old, by {how})"


def penpal_query(
    verdict: Verdict, policy: Policy, sender: str, recipients: Sequence[Recipient]
) -> PenPalQuery | Skipped:
    """Whom to ask the log about, by amavisd-new's preconditions (Amavis.pm:2862-2914), or why nobody.
    The References are left for the caller to fill: they need the header, read only when asked."""
    levels = policy.levels
    spam = verdict.spam
    if levels.penpals_bonus_score <= 0 or levels.penpals_halflife <= 0:
        return Skipped("off (penpals_bonus_score is 0)")
    if spam is None or spam.score is None:
        return Skipped("not scored")
    if Category.VIRUS in verdict.categories:
        return Skipped("a virus")
    # Without a scanner per recipient, the message's score is every recipient's lowest and highest.
    if spam.score < levels.penpals_threshold_low:
        return Skipped(f"score {spam.score:.3f} below penpals_threshold_low")
    high = levels.penpals_threshold_high
    if high is not None and spam.score - levels.penpals_bonus_score > high:
        return Skipped(f"score {spam.score:.3f} above penpals_threshold_high even with the bonus")
    if sender and policy.is_local(sender) and not policy.originating:
        # A local sender on mail from outside is likely forged: it must not reap a local user's bonus.
        return Skipped("a local sender, not originating")
    asked = tuple(
        r.address
        for r in recipients
        if r.address.lower() != sender.lower()
        and policy.is_local(r.address)
        and Category.SPAM not in policy.for_recipient(r.address).bypasses
    )
    return PenPalQuery(sender, asked) if asked else Skipped("no local recipient but the sender")


def message_references(header: bytes) -> tuple[str, ...]:
    """The Message-IDs the In-Reply-To and References fields name, in msgs.message_id's form (7-bit,
    no white space), In-Reply-To's first and then the newest of References, at most MAX_REFERENCES."""
    in_reply_to: list[str] = []
    references: list[str] = []
    for match in _REFERRING.finditer(header):
        found = in_reply_to if match.group(0)[:1] in b"iI" else references
        for raw in _MESSAGE_ID.findall(match.group(1)):
            message_id = "".join(c for c in raw.decode("ascii", "replace") if " " < c < "\x7f")
            if len(message_id) > 2:
                found.append(message_id)
    return tuple(dict.fromkeys([*in_reply_to, *reversed(references)]))[:MAX_REFERENCES]


def penpal_bonus(sent: SentMail, now: float, levels: SpamLevels) -> PenPal:
    """amavisd-new's formula: the bonus halved for every halflife since the mail was sent."""
    age = max(0.0, now - sent.time_num)
    weight = 2.0 ** (-age / levels.penpals_halflife)
    return PenPal(-weight * levels.penpals_bonus_score, age, sent)


def with_penpal(spam: SpamResult, penpal: PenPal) -> SpamResult:
    """The spam result as a recipient with this pen pal sees it."""
    if spam.score is None:
        return spam
    return replace(spam, score=spam.score + penpal.adjustment, rules=(penpal.test, *spam.rules))


def _days(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds:.0f} s"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
