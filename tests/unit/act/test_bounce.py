"""DsnBouncer on the senders no DSN can go to: answered as suppressed, never a crash."""

from __future__ import annotations

import re

from qsift.act.bounce import DsnBouncer
from qsift.checks.content import Verdict
from qsift.model import Answer, Category, Envelope, Finding, ForwardResult, Outcome, Recipient, Reply
from qsift.spool import MessageSpool


class Notifier:
    method = "test"

    def __init__(self) -> None:
        self.sent = 0

    async def forward(
        self, envelope: Envelope, spool: object, client_gone: object = None, delivered: object = None
    ) -> ForwardResult:
        self.sent += 1
        return ForwardResult(self.method, ())

    def close(self) -> None:
        pass


async def test_a_sender_nothing_can_be_sent_to_is_suppressed_not_raised() -> None:
    notifier = Notifier()
    bouncer = DsnBouncer(notifier, "mx.test", re.compile("klez"))
    verdict = Verdict((), (Finding(Category.BANNED, 0, ".exe,x.exe"),))
    envelope = Envelope("\x01\x02", (Recipient("bob@example.net"),))
    with MessageSpool.from_bytes(b"Subject: x\n\nbody\n") as spool:
        outcome = await bouncer(verdict, "abcdefgh", envelope, spool, 10.0)
        assert outcome.reply.smtp_code == 250 and "bounce.suppressed" in outcome.reply.text
        assert notifier.sent == 0
        # The same sender, for recipients a downstream refused: the outcome stands, no notice is tried.
        before = Outcome("abcdefgh", Reply(Answer.TEMPFAIL, 250, "4.0.0", "x"), outcome.disposition)
        assert await bouncer.refused(before, envelope, [], spool) is before
        assert notifier.sent == 0
