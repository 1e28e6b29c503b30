"""What becomes of a message for each recipient: the checks' findings seen through that recipient's policy.

amavisd-new's per-recipient categories: a recipient who bypasses a check does not see its findings; the
spam category follows the recipient's own tag2 and kill levels, and its own score with a pen pals bonus
(penpals.py); a message larger than the recipient's `message_size_limit` is OVERSIZED for it. A sender
the recipient blacklists makes the message spam for it, one it whitelists makes it not spam, and a soft
listing adds to the score (store/amavisd_lookups.py). The recipient is blocked by the most severe category
whose destiny is not pass and which the recipient does not love; a virus lover blocked for a banned file
sees the banned file, not the virus, in its DSN and notices. Pure functions: no I/O, easy to test
exhaustively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from qsift.checks.auth_verdict import DMARC_QUARANTINE
from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.checks.spam_levels import spam_findings
from qsift.model import Category, Finding, Recipient
from qsift.policy.destiny import Destiny
from qsift.policy.penpals import PenPal, with_penpal
from qsift.policy.settings import Policy, RecipientSettings
from qsift.store.amavisd_lookups import SenderListing

_SPAM_CATEGORIES = (Category.SPAM, Category.SPAMMY)
_NO_PENPALS: Mapping[str, PenPal] = MappingProxyType({})


@dataclass(frozen=True)
class Decision:
    """One recipient's lot: what it sees of the message and what is done with it for it."""

    recipient: Recipient
    settings: RecipientSettings
    #: The checks' findings as this recipient sees them; when blocked, from the blocking category down.
    view: Verdict
    destiny: Destiny

    @property
    def blocked(self) -> bool:
        return self.destiny is not Destiny.PASS

    @property
    def whitelisted(self) -> bool:
        """The recipient whitelists the sender (msgrcpt.wl = 'Y')."""
        return self.settings.listing.whitelisted

    @property
    def blacklisted(self) -> bool:
        """The recipient blacklists the sender (msgrcpt.bl = 'Y')."""
        return self.settings.listing.blacklisted


def decide_recipients(
    verdict: Verdict,
    policy: Policy,
    recipients: Sequence[Recipient],
    size: int,
    penpals: Mapping[str, PenPal] = _NO_PENPALS,
) -> list[Decision]:
    """Each recipient's decision; `penpals` are the bonuses the message log earned them (penpals.py)."""
    return [
        decide_recipient(verdict, policy, recipient, size, penpals.get(recipient.address))
        for recipient in recipients
    ]


def decide_recipient(
    verdict: Verdict, policy: Policy, recipient: Recipient, size: int, penpal: PenPal | None = None
) -> Decision:
    settings = policy.for_recipient(recipient.address)
    if penpal is not None and verdict.spam is not None:
        # Its own score, as amavisd-new's per-recipient spam level: the others keep the message's.
        verdict = replace(verdict, spam=with_penpal(verdict.spam, penpal))
    view = recipient_view(verdict, settings, size)
    for category in view.categories:
        destiny = policy.destinies.of(category)
        if destiny is Destiny.PASS or category in settings.loves:
            continue
        blocking = tuple(f for f in view.findings if f.category.rank >= category.rank)
        return Decision(recipient, settings, _with_findings(view, blocking), destiny)
    return Decision(recipient, settings, view, Destiny.PASS)


def recipient_view(verdict: Verdict, settings: RecipientSettings, size: int) -> Verdict:
    """The verdict without the bypassed checks, with spam judged by the recipient's levels."""
    skipped = set(settings.bypasses)
    if Category.SPAM in skipped:
        skipped.add(Category.SPAMMY)
    findings = [
        f
        for f in verdict.findings
        if f.category not in skipped and (f.category not in _SPAM_CATEGORIES or _not_a_score(f))
    ]
    spam = None if Category.SPAM in skipped else _listed_score(verdict.spam, settings.listing)
    listing = settings.listing
    # A recipient who bypasses the spam check has no use for its sender lists either.
    if Category.SPAM not in skipped and listing.blacklisted:
        findings.append(Finding(Category.SPAM, 0, "sender blacklisted by the recipient"))
    elif spam is not None and not listing.whitelisted:
        findings.extend(spam_findings(spam, settings.levels))
    limit = settings.message_size_limit
    if limit and size > limit:
        findings.append(Finding(Category.OVERSIZED, 0, f"{size} bytes, over the limit of {limit}"))
    return replace(verdict, findings=tuple(findings), spam=spam, rescan=())


def _listed_score(spam: SpamResult | None, listing: SenderListing) -> SpamResult | None:
    """The score as the recipient's lists make it (amavisd-new's): the boost added, with AM.WBL among the
    rules, then at most 0 for a whitelisted sender and at least 64 for a blacklisted one (X-Spam-Score)."""
    if spam is None or spam.score is None:
        return spam
    score, rules = spam.score, spam.rules
    if listing.score_boost:
        score += listing.score_boost
        rules = (f"AM.WBL={listing.score_boost:g}", *rules)
    if listing.whitelisted:
        score = min(score, 0.0)
    elif listing.blacklisted:
        score = max(score, 64.0)
    return replace(spam, score=score, rules=rules)


def _with_findings(view: Verdict, findings: tuple[Finding, ...]) -> Verdict:
    return replace(view, findings=findings)


def _not_a_score(finding: Finding) -> bool:
    """A spammy finding of DMARC's (p=quarantine), which no recipient's spam levels judge again."""
    return finding.category is Category.SPAMMY and finding.minor == DMARC_QUARANTINE
