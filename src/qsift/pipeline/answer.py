"""One answer from many recipients' fates: what QMQP (one letter) and SMTP (one reply) can say.

The rules (DESIGN.md §3, amavisd-new's observed replies):
- anything temporary (a forward that failed, a DSN that could not be sent) makes the whole answer
  temporary; what was settled is recorded, so the retry deals only with the rest;
- nothing delivered and some recipient rejected (by policy or by the downstream): D / 554 with the reason;
  the client's own bounce then covers every recipient, so no DSN of ours goes with it;
- otherwise K / 250, saying what else happened: `..., but 1 REJECT, 1 BOUNCE, 1 DISCARD`.
LMTP answers each recipient with its own result, so there a rejected recipient is just refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from qsift.answers import Row
from qsift.model import Answer, Disposition, Envelope, ForwardResult, Outcome, RecipientResult, Reply
from qsift.policy.destiny import Destiny

#: The destinies a reply names, in the order it names them.
_REPORTED = (Destiny.REJECT, Destiny.BOUNCE, Destiny.DISCARD)


def decide(mail_id: str, envelope: Envelope, result: ForwardResult, already_delivered: int = 0) -> Outcome:
    """Fold the per-recipient results of the forward into the one answer QMQP and SMTP can give."""
    results = result.per_recipient
    temp = [r for r in results if r.reply.answer is Answer.TEMPFAIL]
    rejected = [r for r in results if r.reply.answer is Answer.REJECT]
    accepted = len(results) - len(temp) - len(rejected) + already_delivered
    if temp:
        first = temp[0].reply
        reply = Row.FORWARD_FAILED.relay(
            first.smtp_code, first.enhanced_status, **_relayed(mail_id, result, first)
        )
        kept: tuple[str, ...] = (f"{accepted} delivered, kept for the retry",) if accepted else ()
        return Outcome(mail_id, reply, Disposition.TEMPFAILED, per_recipient=results, notes=kept)
    if rejected and not accepted:
        first = rejected[0].reply
        row = Row.REJECTED_DOWNSTREAM if rejected[0].from_downstream else Row.REFUSED_BY_QSIFT
        reply = row.relay(first.smtp_code, first.enhanced_status, **_relayed(mail_id, result, first))
        return Outcome(mail_id, reply, Disposition.BLOCKED, per_recipient=results)
    return Outcome(
        mail_id,
        _delivered(mail_id, result.method, result.queued_as, results, Counter()),
        Disposition.PASSED,
        per_recipient=results,
        queued_as=result.queued_as,
        method=result.method,
        notes=tuple(_rejection_note(r) for r in rejected),
    )


def _relayed(mail_id: str, result: ForwardResult, reply: Reply) -> dict[str, object]:
    """The fields of a row that passes on what the downstream said for the first recipient."""
    return {
        "mail_id": mail_id,
        "method": result.method,
        "code": reply.smtp_code,
        "status": reply.enhanced_status,
        "text": reply.text,
    }


def _delivered(
    mail_id: str,
    method: str,
    queued_as: str | None,
    forwarded: Sequence[RecipientResult],
    blocked: Counter[Destiny],
) -> Reply:
    """K for a message delivered to some recipients, naming what became of the others: those the
    downstream refused and those the policy rejected, bounced or discarded."""
    refused = sum(1 for r in forwarded if r.reply.answer is Answer.REJECT)
    others = _summary(blocked + Counter({Destiny.REJECT: refused}))
    return Row.DELIVERED.reply(
        mail_id=mail_id,
        method=method,
        queued_as=queued_as or "accepted",
        others=f", but {others}" if others else "",
    )


def _summary(counts: Counter[Destiny]) -> str:
    """What the policy did to recipients, for a reply: "1 REJECT, 2 DISCARD"."""
    return ", ".join(f"{counts[d]} {d.name}" for d in _REPORTED if counts[d])


def _rejection_note(result: RecipientResult) -> str:
    reply = result.reply
    return f"rejected <{result.recipient.address}>: {reply.smtp_code} {reply.enhanced_status} {reply.text}"


def combine(
    mail_id: str,
    forwarded: Outcome | None,
    blocked: Sequence[Outcome],
    counts: Counter[Destiny],
) -> Outcome:
    """The answer for a message some of whose recipients were forwarded (`forwarded`, None if none were)
    and the others blocked (`blocked`: one outcome per group, as the policy acted on it). `counts` says
    how many recipients the policy rejected, bounced and discarded, for the reply text."""
    per_recipient = tuple(
        r for outcome in (forwarded, *blocked) if outcome is not None for r in outcome.per_recipient
    )
    notes = tuple(n for outcome in (forwarded, *blocked) if outcome is not None for n in outcome.notes)
    for outcome in (forwarded, *blocked):
        if outcome is not None and outcome.reply.answer is Answer.TEMPFAIL:
            return replace(outcome, per_recipient=per_recipient, notes=notes)
    refusals = [o for o in blocked if o.reply.answer is Answer.REJECT]
    if forwarded is None or forwarded.reply.answer is Answer.REJECT:
        first = refusals[0] if refusals else forwarded
        if first is not None and first.reply.answer is Answer.REJECT:
            return replace(first, per_recipient=per_recipient, notes=notes)
    if forwarded is not None:
        # Delivered to some: K, with what became of the others in the text.
        reply = _delivered(mail_id, forwarded.method, forwarded.queued_as, forwarded.per_recipient, counts)
        return replace(forwarded, reply=reply, per_recipient=per_recipient, notes=notes)
    if len(blocked) == 1:
        return replace(blocked[0], per_recipient=per_recipient, notes=notes)
    reply = Row.NONE_DELIVERED.reply(mail_id=mail_id, others=_summary(counts))
    return replace(blocked[0], reply=reply, per_recipient=per_recipient, notes=notes)
