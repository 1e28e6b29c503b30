"""The questions the pipeline asks of state that may live on another machine (the outcome record, the
SQL lookups, the message log, pen pals), each with what its failure means for the message.

Before the forward a failure of the shared record, the lookups or pen pals holds the message back (Z):
the verdict, or the promise of one delivery, would otherwise depend on whether a database answered,
as amavisd-new answers 451 when its database is down before acceptance (docs/cluster.md, "When
PostgreSQL fails"). After the forward nothing may change the answer the downstream earned: a record or
a log row that cannot be written is logged as an error and the message's fate stands.
"""

from __future__ import annotations

from collections.abc import Sequence

from qsift.answers import Row
from qsift.checks.content import Verdict
from qsift.errors import StoreUnreachable
from qsift.model import Category, Disposition, Outcome, Recipient
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline.inflight import InFlight
from qsift.pipeline.parts import MessageLog, OutcomeLedger, PenPalLog, RecipientLookups
from qsift.pipeline.penpals import penpal_bonuses
from qsift.policy.penpals import PenPal
from qsift.policy.settings import Policy
from qsift.store.message_log import LoggedMessage
from qsift.store.outcomes import OutcomeRecord


async def delivered_before(
    outcomes: OutcomeLedger, mail_id: str, keys: Sequence[str], not_before: float
) -> dict[str, OutcomeRecord] | Outcome:
    """The records of these keys; or Z when the shared record does not answer."""
    try:
        return await outcomes.lookup(keys, not_before)
    except StoreUnreachable as exc:
        # It cannot say whether another node delivered this already, and could not record this
        # delivery either: the client keeps the message and tries again.
        logger.error("id=%s outcome record unreachable, the message waits (try later): %s", mail_id, exc)
        reply = Row.OUTCOME_RECORD_UNREACHABLE.reply(mail_id=mail_id, error=exc)
        return Outcome(mail_id, reply, Disposition.TEMPFAILED)
    except Exception as exc:  # a broken record on this node must not stop mail
        logger.error("outcome record lookup failed, forwarding anyway: %s", exc)
        return {}


async def record_delivery(
    outcomes: OutcomeLedger, keys: Sequence[str], mail_id: str, answer: str, now: float
) -> None:
    """Record recipients the downstream took; a failure is logged, never raised."""
    try:
        await outcomes.record(keys, mail_id, answer, now)
    except Exception as exc:  # whatever it is (a full disk, a thread that cannot start)
        # The downstream has the message: answering Z (or dropping the connection) now would make the
        # retry a duplicate for sure, while a missing record only makes a duplicate possible if the
        # client also loses our K.
        logger.error("id=%s delivered but not recorded for dedupe: %s", mail_id, exc)


async def log_finished(message_log: MessageLog, logged: LoggedMessage) -> None:
    """Write a finished message's log rows; a failure is logged, never raised."""
    try:
        await message_log.log(logged)
    except Exception as exc:  # whatever it is: the message's fate is settled and its answer stands
        logger.error("id=%s not logged to SQL: %s", logged.mail_id, exc)


async def looked_up(
    lookups: RecipientLookups, message: InFlight, owed: tuple[Recipient, ...]
) -> Policy | Outcome:
    """The message's policy with its sender and what SQL says of its recipients; or Z when the lookup
    fails (amavisd-new's 451 when a lookup dies, reference amavisd-sql.md §2.7)."""
    policy, sender = message.policy, message.envelope.sender
    if message.scanned_before:
        return policy  # passed on unchecked: no recipient's settings count
    try:
        found = await lookups.found(sender, [r.address for r in owed], policy.rules.recipient_delimiter)
    except StoreUnreachable as exc:
        mail_id = message.mail_id
        logger.error("id=%s SQL lookup failed, the message waits (try later): %s", mail_id, exc)
        reply = Row.LOOKUP_UNREACHABLE.reply(mail_id=mail_id, error=exc)
        metrics.message_fate(Category.UNCHECKED.value, "tempfail", len(owed))
        return Outcome(mail_id, reply, Disposition.TEMPFAILED)
    return policy.for_message(sender, found)


async def penpals_found(
    penpals: PenPalLog,
    message: InFlight,
    head: bytes,
    verdict: Verdict,
    owed: tuple[Recipient, ...],
    now: float,
) -> dict[str, PenPal] | Outcome:
    """Each recipient's pen pals bonus; or Z when the message log does not answer."""
    try:
        return await penpal_bonuses(penpals, message, head, verdict, owed, now)
    except StoreUnreachable as exc:
        # Without the bonus a reply could be judged spam and refused, as amavisd-new: the client retries.
        mail_id = message.mail_id
        logger.error("id=%s pen pals lookup failed, the message waits (try later): %s", mail_id, exc)
        reply = Row.PENPALS_UNREACHABLE.reply(mail_id=mail_id, error=exc)
        metrics.message_fate(verdict.category.value, "tempfail", len(owed))
        return Outcome(mail_id, reply, Disposition.TEMPFAILED, category=verdict.log_text())


__all__ = ["delivered_before", "log_finished", "looked_up", "penpals_found", "record_delivery"]
