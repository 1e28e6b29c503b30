"""A finished message as the message log keeps it (store/message_log.py): amavisd-new's codes for what
became of it and of each recipient (reference: amavisd-sql.md §1.3-1.4). Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from qsift.answers import Row
from qsift.checks.content import Verdict
from qsift.model import Answer, Outcome, Recipient, Reply
from qsift.pipeline.inflight import InFlight
from qsift.policy.destiny import Destiny
from qsift.policy.recipients import Decision
from qsift.store.amavisd_forms import CONTENT_CODES
from qsift.store.message_log import LoggedMessage, LoggedRecipient

#: msgrcpt.ds of a blocked recipient, whatever it was answered (amavisd-new's Log.pm: its destiny, unless
#: the reply was temporary).
_BLOCKED_STATUS = {Destiny.REJECT: "R", Destiny.BOUNCE: "B", Destiny.DISCARD: "D"}


def logged_message(
    message: InFlight, decisions: Sequence[Decision], outcome: Outcome, head: bytes, received: float
) -> LoggedMessage:
    """The log's rows of a message whose recipients' fates are `decisions` and whose answer is `outcome`."""
    replies = _replies(outcome)
    numbers = recipient_numbers(message.envelope.recipients, [d.recipient for d in decisions])
    recipients = []
    fates: list[tuple[Destiny, Reply]] = []
    for decision, number in zip(decisions, numbers, strict=True):
        queue = replies.get(decision.recipient)
        reply = queue.pop(0) if queue else outcome.reply
        fates.append((decision.destiny, reply))
        spam = decision.view.spam
        recipients.append(
            LoggedRecipient(
                address=decision.recipient.address,
                number=number,
                local=decision.settings.local,
                content=content_code(decision.view),
                delivery_status=delivery_status(decision.destiny, reply),
                spam_level=spam.score if spam is not None else None,
                reply=reply.smtp_line(),
                blacklisted=decision.blacklisted,
                whitelisted=decision.whitelisted,
            )
        )
    levels = [r.spam_level for r in recipients if r.spam_level is not None]
    worst = min(decisions, key=lambda d: d.view.category.rank)
    return LoggedMessage(
        mail_id=message.mail_id,
        secret_id=message.secret_id,
        received=received,
        sender=message.envelope.sender,
        recipients=tuple(recipients),
        size=message.body.size,
        content=content_code(worst.view),
        policy=",".join(outcome.banks),
        # As the shared quarantine writes it: the client qsift-queue vouched for, else the peer.
        client_address=message.client.client.ip,
        originating=message.policy.originating,
        spam_level=min(levels) if levels else None,
        dsn_sent=dsn_sent(message.mail_id, fates),
        head=head,
    )


def unchecked(message: InFlight, owed: Sequence[Recipient]) -> list[Decision]:
    """The fates of mail nothing was checked on: clean, passed, for every recipient."""
    clean = Verdict(parts=(), findings=())
    policy = message.policy
    return [Decision(r, policy.for_recipient(r.address), clean, Destiny.PASS) for r in owed]


def content_code(view: Verdict) -> str:
    """amavisd-new's letter for the category a recipient (or the message) is in; "?" for one it lacks."""
    return CONTENT_CODES.get(view.category.value, "?")


def delivery_status(destiny: Destiny, reply: Reply) -> str:
    """msgrcpt.ds: T for a temporary reply, then P for a passing recipient the downstream took (R if it
    refused it), R, B or D for a blocked one by its destiny."""
    if reply.answer is Answer.TEMPFAIL:
        return "T"
    if destiny is Destiny.PASS:
        return "P" if reply.answer is Answer.ACCEPT else "R"
    return _BLOCKED_STATUS[destiny]


def dsn_sent(mail_id: str, fates: Sequence[tuple[Destiny, Reply]]) -> str:
    """msgs.dsn_sent: Y when a blocked recipient was bounced with a DSN, q when its DSN was suppressed
    (a spam score over the cutoff, a faked sender, no way to send it), N when none was due."""
    told = [reply for destiny, reply in fates if destiny in _TOLD and reply.answer is Answer.ACCEPT]
    if Row.BOUNCED.reply(mail_id=mail_id) in told:
        return "Y"
    return "q" if told else "N"


#: The destinies whose recipients are told by a DSN when others took the message.
_TOLD = (Destiny.REJECT, Destiny.BOUNCE)


def recipient_numbers(everyone: Sequence[Recipient], some: Sequence[Recipient]) -> tuple[int, ...]:
    """msgrcpt.rseqnum of `some`, recipients of the envelope in its order: each one's place among
    `everyone`, from 1. The quarantine and the log number them alike, a recipient named twice twice."""
    numbers = []
    places = iter(enumerate(everyone, 1))
    for recipient in some:
        numbers.append(next(number for number, candidate in places if candidate == recipient))
    return tuple(numbers)


def _replies(outcome: Outcome) -> dict[Recipient, list[Reply]]:
    replies: dict[Recipient, list[Reply]] = {}
    for result in outcome.per_recipient:
        replies.setdefault(result.recipient, []).append(result.reply)
    return replies
