"""The recipients of one message the downstream has accepted so far, recorded the moment it accepts them.

A forward tells `Deliveries` of each accepted transaction right after the downstream's final reply and
before it goes on (`model.Delivered`); the keys go into the outcome record then, before any DSN,
notice or metric, so a worker killed after that point leaves a record that answers the client's retry.
What is left between the downstream's reply and the record's commit is DESIGN.md's invariant 2.

Once anything was delivered, an unexpected error must not drop the connection (the client would retry:
a duplicate). `answer_after_error` gives the answer that is still certain instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from qsift.answers import Row
from qsift.model import Disposition, Outcome, Recipient, RecipientResult

#: Writes delivery keys to the outcome record with the reply they got; never raises.
Record = Callable[[Sequence[str], str], Awaitable[None]]


@dataclass
class Deliveries:
    #: The delivery key of each recipient address (outcomes.delivery_key).
    keys: Mapping[str, str]
    record: Record
    #: Accepted by the downstream so far, by address.
    accepted: dict[str, RecipientResult] = field(default_factory=dict)

    async def __call__(self, results: tuple[RecipientResult, ...]) -> None:
        """The forward's `delivered`: remember and record these recipients now."""
        if not results:
            return
        for result in results:
            self.accepted[result.recipient.address] = result
        await self.record([self.keys[r.recipient.address] for r in results], results[0].reply.smtp_line())

    def not_recorded(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` not recorded yet (by this message's forwards)."""
        done = {self.keys[address] for address in self.accepted}
        return [key for key in keys if key not in done]

    def answer_after_error(self, mail_id: str, owed: Sequence[Recipient], error: Exception) -> Outcome:
        """The answer after `error` broke off a message some of whose recipients were delivered: K when
        every recipient due was, else Z for the others (the delivered ones are recorded, so the retry
        goes only to the rest; were the record lost too, a duplicate is still better than a loss)."""
        rest = [r for r in owed if r.address not in self.accepted]
        delivered = tuple(self.accepted.values())
        if not rest:
            reply = Row.DELIVERED_THEN_ERROR.reply(mail_id=mail_id, error=error)
            return Outcome(mail_id, reply, Disposition.PASSED, per_recipient=delivered)
        reply = Row.ERROR_AFTER_SOME_DELIVERED.reply(
            mail_id=mail_id, delivered=len(delivered), owed=len(owed), error=error
        )
        held = tuple(RecipientResult(r, reply) for r in rest)
        return Outcome(mail_id, reply, Disposition.TEMPFAILED, per_recipient=delivered + held)
