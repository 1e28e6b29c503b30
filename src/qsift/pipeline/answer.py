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

from collections.abc import Sequence
from dataclasses import replace

from qsift.model import Answer, Disposition, Envelope, ForwardResult, Outcome, RecipientResult, Reply


def decide(mail_id: str, envelope: Envelope, result: ForwardResult, already_delivered: int = 0) -> Outcome:
    """Fold the per-recipient results of the forward into the one answer QMQP and SMTP can give."""
    results = result.per_recipient
    temp = [r for r in results if r.reply.answer is Answer.TEMPFAIL]
    rejected = [r for r in results if r.reply.answer is Answer.REJECT]
    accepted = len(results) - len(temp) - len(rejected) + already_delivered
    via = f"from MTA({result.method})"
    if temp:
        first = temp[0].reply
        reply = Reply(
            Answer.TEMPFAIL,
            first.smtp_code if 400 <= first.smtp_code < 500 else 451,
            first.enhanced_status,
            f"id={mail_id} - forward failed, {via}: {first.smtp_code} {first.enhanced_status} {first.text}",
        )
        kept: tuple[str, ...] = (f"{accepted} delivered, kept for the retry",) if accepted else ()
        return Outcome(mail_id, reply, Disposition.TEMPFAILED, per_recipient=results, notes=kept)
    if rejected and not accepted:
        first = rejected[0].reply
        by = f"rejected by next-hop MTA, {via}"
        if not rejected[0].from_downstream:
            by = f"refused by qsift, not sent to MTA({result.method})"
        reply = Reply(
            Answer.REJECT,
            first.smtp_code,
            first.enhanced_status,
            f"id={mail_id} - {by}: {first.smtp_code} {first.enhanced_status} {first.text}",
        )
        return Outcome(mail_id, reply, Disposition.BLOCKED, per_recipient=results)
    text = f"Ok, id={mail_id}, {via}: {result.queued_as or 'accepted'}"
    notes: tuple[str, ...] = ()
    if rejected:
        text += f", but {len(rejected)} REJECT"
        notes = tuple(_rejection_note(r) for r in rejected)
    reply = Reply(Answer.ACCEPT, 250, "2.0.0", text)
    return Outcome(
        mail_id, reply, Disposition.PASSED, per_recipient=results, queued_as=result.queued_as, notes=notes
    )


def _rejection_note(result: RecipientResult) -> str:
    reply = result.reply
    return f"rejected <{result.recipient.address}>: {reply.smtp_code} {reply.enhanced_status} {reply.text}"


def combine(
    mail_id: str,
    forwarded: Outcome | None,
    blocked: Sequence[Outcome],
    counts: dict[str, int],
) -> Outcome:
    """The answer for a message some of whose recipients were forwarded (`forwarded`, None if none were)
    and the others blocked (`blocked`: one outcome per group, as the policy acted on it). `counts` says
    how many recipients were rejected, bounced and discarded by policy, for the reply text."""
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
    summary = ", ".join(f"{n} {word}" for word, n in counts.items() if n)
    if forwarded is not None:
        # Delivered to some: K, with what became of the others in the text.
        text = forwarded.reply.text + (f", but {summary}" if summary else "")
        if ", but " in forwarded.reply.text and summary:
            text = f"{forwarded.reply.text}, {summary}"
        reply = replace(forwarded.reply, text=text)
        return replace(forwarded, reply=reply, per_recipient=per_recipient, notes=notes)
    if len(blocked) == 1:
        return replace(blocked[0], per_recipient=per_recipient, notes=notes)
    first = blocked[0]
    reply = Reply(Answer.ACCEPT, 250, "2.5.0", f"Ok, id={mail_id}, {summary}")
    return replace(first, reply=reply, per_recipient=per_recipient, notes=notes)
