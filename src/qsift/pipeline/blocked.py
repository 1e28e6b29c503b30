"""What becomes of blocked recipients: kept in quarantine, rejected, bounced or discarded, and told about.

Order matters for "nothing is lost": blocked mail is quarantined first (a failure holds the whole
message back before anything was delivered), then clean recipients are forwarded (stages.py), then DSNs
are sent (unless the answer will be a rejection, which makes the client bounce), then notices (which
never change the answer).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from qsift.answers import Row
from qsift.checks.content import Verdict
from qsift.model import Answer, Category, Disposition, Envelope, Outcome, RecipientResult
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline.inflight import InFlight
from qsift.pipeline.logged import recipient_numbers
from qsift.policy.destiny import Destiny
from qsift.policy.recipients import Decision
from qsift.policy.settings import Policy
from qsift.spool import MessageBody
from qsift.store.quarantine import KeptFacts, QuarantineStore


class Bouncer(Protocol):
    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageBody, dsn_cutoff: float
    ) -> Outcome: ...


class NoBounces:
    """No DSNs can be sent: a bounce acts as a discard."""

    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageBody, dsn_cutoff: float
    ) -> Outcome:
        return _discarded(mail_id, verdict)


class Notifier(Protocol):
    async def admin(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str, admin: str
    ) -> None: ...

    async def recipients(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, quarantine: str, warned: Sequence[str]
    ) -> None: ...


class NoNotices:
    """Nobody is told about blocked mail."""

    async def admin(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str, admin: str
    ) -> None:
        pass

    async def recipients(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, quarantine: str, warned: Sequence[str]
    ) -> None:
        pass


class Keeper(Protocol):
    async def keep_once(self, message: InFlight, blocked: list[Decision]) -> str:
        """Keep a blocked message once if any blocked recipient's category is kept; the file's name, or ""."""
        ...

    def purge(self, older_than: float) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class QuarantineKeeper:
    quarantine: QuarantineStore
    #: A retry within this many seconds finds the copy it left and is not kept twice.
    dedupe_window: float
    clock: Callable[[], float]

    async def keep_once(self, message: InFlight, blocked: list[Decision]) -> str:
        """Keep a blocked message once if any blocked recipient's category is kept (and spam is under
        that recipient's cutoff); the file's name, or ""."""
        kept = [d for d in blocked if _keeps(message.policy, d)]
        if not kept:
            return ""
        view = kept[0].view
        addresses = [d.recipient.address for d in kept]
        sender = message.envelope.sender
        since = self.clock() - self.dedupe_window
        earlier = await asyncio.to_thread(self.quarantine.kept_before, message.fingerprint, sender, since)
        if (
            earlier is not None
            and earlier.category == view.category.value
            and set(addresses) <= set(earlier.recipients)
        ):
            logger.info(
                "id=%s a retry of %s: kept already as %s", message.mail_id, earlier.mail_id, earlier.file
            )
            return os.path.basename(earlier.file)
        entry = await asyncio.to_thread(
            self.quarantine.store,
            message.mail_id,
            view.category.value,
            view.reason(),
            sender,
            addresses,
            message.body.chunks(),
            self.clock(),
            message.fingerprint,
            _facts(message, kept),
        )
        metrics.quarantined(view.category.value)
        return os.path.basename(entry.file)

    def purge(self, older_than: float) -> int:
        return self.quarantine.purge(older_than)

    def close(self) -> None:
        self.quarantine.close()


class NoQuarantine:
    """Blocked mail is kept nowhere."""

    async def keep_once(self, message: InFlight, blocked: list[Decision]) -> str:
        return ""

    def purge(self, older_than: float) -> int:
        return 0

    def close(self) -> None:
        pass


async def reject_bounce_or_discard(
    bounce: Bouncer,
    message: InFlight,
    blocked: list[Decision],
    delivered: bool,
    forwarded: Outcome | None,
) -> tuple[list[Outcome], Counter[Destiny]]:
    """Reject, bounce or discard the blocked recipients, by groups of the same category."""
    one_by_one = message.envelope.replies_per_recipient
    refused_whole = (
        not one_by_one
        and not delivered
        and (
            any(d.destiny is Destiny.REJECT for d in blocked)
            or (forwarded is not None and forwarded.reply.answer is Answer.REJECT)
        )
    )
    counts: Counter[Destiny] = Counter()
    outcomes = []
    for (destiny, _, cutoff), group in _groups(blocked).items():
        counts[destiny] += len(group)
        view = group[0].view
        envelope = replace(message.envelope, recipients=tuple(d.recipient for d in group))
        if (destiny is Destiny.REJECT and (one_by_one or refused_whole)) or (
            destiny is Destiny.BOUNCE and refused_whole
        ):
            outcomes.append(_rejected(message.mail_id, view, group))
        elif destiny in (Destiny.REJECT, Destiny.BOUNCE):
            # A rejection among delivered recipients can only be told by a DSN (amavisd-new's way).
            bounced = await bounce(view, message.mail_id, envelope, message.body, cutoff)
            outcomes.append(_for_each(bounced, group))
        else:
            outcomes.append(_for_each(_discarded(message.mail_id, view), group))
    return outcomes, counts


async def send_notices(
    notices: Notifier, message: InFlight, blocked: list[Decision], quarantined: str
) -> None:
    """Tell each category's admin and its warned local recipients about the blocked mail."""
    if not blocked:
        return
    policy = message.policy
    envelope = replace(message.envelope, client_address=message.client.client.ip or None)
    by_category: dict[Category, list[Decision]] = {}
    for decision in blocked:
        by_category.setdefault(decision.view.category, []).append(decision)
    for category, group in by_category.items():
        view = group[0].view
        to_group = replace(envelope, recipients=tuple(d.recipient for d in group))
        admin = policy.admins.get(category, "")
        if admin:
            await notices.admin(view, message.mail_id, to_group, group[0].destiny.value, quarantined, admin)
        if category in policy.warn_recipients:
            warned = [d.recipient.address for d in group if d.settings.local]
            await notices.recipients(view, message.mail_id, to_group, quarantined, warned)


def _groups(blocked: list[Decision]) -> dict[tuple[Destiny, Category, float], list[Decision]]:
    groups: dict[tuple[Destiny, Category, float], list[Decision]] = {}
    for decision in blocked:
        key = (decision.destiny, decision.view.category, decision.settings.levels.dsn_cutoff_level)
        groups.setdefault(key, []).append(decision)
    return groups


#: amavisd-new's msgrcpt.ds letter for a blocked recipient's destiny (reference amavisd-sql.md §1.4).
_DELIVERY_STATUS = {Destiny.PASS: "P", Destiny.REJECT: "R", Destiny.BOUNCE: "B", Destiny.DISCARD: "D"}


def _facts(message: InFlight, kept: list[Decision]) -> KeptFacts:
    """What a shared quarantine writes beside the message into amavisd-new's msgs and msgrcpt rows."""
    spam = kept[0].view.spam
    return KeptFacts(
        delivery_status=tuple(_DELIVERY_STATUS[d.destiny] for d in kept),
        local=tuple(d.settings.local for d in kept),
        spam_level=spam.score if spam is not None else None,
        client_address=message.client.client.ip or "",
        secret_id=message.secret_id,
        numbers=recipient_numbers(message.envelope.recipients, [d.recipient for d in kept]),
    )


def _keeps(policy: Policy, decision: Decision) -> bool:
    view = decision.view
    if view.category not in policy.quarantined:
        return False
    cutoff = decision.settings.levels.quarantine_cutoff_level
    score = view.spam.score if view.spam is not None else None
    return not (
        view.category is Category.SPAM and cutoff is not None and score is not None and score >= cutoff
    )


def _rejected(mail_id: str, view: Verdict, group: list[Decision]) -> Outcome:
    lead = view.lead
    if view.category is Category.DMARC and lead is not None:
        # As the large mailbox providers word it (RFC 7372's X.7.26), so a sender's admin recognises it.
        reply = Row.REJECTED_DMARC.reply(mail_id=mail_id, domain=lead.detail.partition(" ")[0])
    else:
        reply = Row.REJECTED.reply(mail_id=mail_id, reason=view.reason())
    return _for_each(Outcome(mail_id, reply, Disposition.BLOCKED), group)


def _discarded(mail_id: str, view: Verdict) -> Outcome:
    reply = Row.DISCARDED.reply(mail_id=mail_id, reason=view.reason())
    return Outcome(mail_id, reply, Disposition.BLOCKED)


def _for_each(outcome: Outcome, group: list[Decision]) -> Outcome:
    """The outcome with its reply as every recipient's own (for LMTP and the outcome record)."""
    return replace(outcome, per_recipient=tuple(RecipientResult(d.recipient, outcome.reply) for d in group))
