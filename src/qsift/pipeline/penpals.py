"""Pen pals in the pipeline: once the message is scored, the message log is asked once about all its
recipients, and each one it finds a pen pal for gets its bonus (policy/penpals.py decides whether to ask,
about whom, and what the answer earns; store/pg_penpals.py asks)."""

from __future__ import annotations

from dataclasses import replace

from qsift.checks.content import Verdict
from qsift.model import Recipient
from qsift.observe.log import level, logger
from qsift.pipeline.inflight import InFlight
from qsift.pipeline.parts import PenPalLog
from qsift.policy.penpals import PenPal, Skipped, message_references, penpal_bonus, penpal_query


async def penpal_bonuses(
    log: PenPalLog,
    message: InFlight,
    head: bytes,
    verdict: Verdict,
    owed: tuple[Recipient, ...],
    now: float,
) -> dict[str, PenPal]:
    """The bonus each recipient earns, by address; StoreUnreachable when the log does not answer.
    `head` is the message's header section (In-Reply-To and References are read from it)."""
    query = penpal_query(verdict, message.policy, message.envelope.sender, owed)
    if isinstance(query, Skipped):
        logger.log(level(3), "id=%s penpals: not asked, %s", message.mail_id, query.reason)
        return {}
    references = message_references(head)
    found = await log.find(replace(query, references=references))
    if not found:
        logger.log(
            level(3), "id=%s penpals: none among %d recipient(s)", message.mail_id, len(query.recipients)
        )
    levels = message.policy.levels
    return {recipient: penpal_bonus(sent, now, levels) for recipient, sent in found.items()}
