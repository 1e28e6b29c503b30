"""Once the downstream accepted a message, no error turns the answer into a dropped connection: the
answer is what is still certain (K when every recipient due was delivered, else Z for the others), and
the delivered recipients are on record before anything else runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qsift.config import loads
from qsift.model import Answer, Envelope, Outcome, Recipient, RecipientResult, Reply
from qsift.pipeline import build_pipeline
from qsift.pipeline.deliveries import Deliveries
from qsift.pipeline.parts import NoRefusalNotice
from qsift.spool import MessageBody, MessageSpool
from tests.fakes.mta import Script, fake_mta

BOB, CAROL = Recipient("bob@example.net"), Recipient("carol@example.net")
DELIVERED = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok: queued as SINK1")
MESSAGE = b"From: alice@example.org\nSubject: hi\n\nhello\n"


async def nothing_recorded(keys: object, answer: str) -> None:
    """Deliveries' record, for the cases that only look at the answer."""


@pytest.mark.parametrize(
    ("owed", "accepted", "letter", "per_recipient"),
    [
        ((BOB,), (BOB,), "K", {BOB: "K"}),
        ((BOB, CAROL), (BOB, CAROL), "K", {BOB: "K", CAROL: "K"}),
        ((BOB, CAROL), (BOB,), "Z", {BOB: "K", CAROL: "Z"}),
    ],
)
async def test_the_answer_after_an_error_is_what_is_certain(
    owed: tuple[Recipient, ...],
    accepted: tuple[Recipient, ...],
    letter: str,
    per_recipient: dict[Recipient, str],
) -> None:
    deliveries = Deliveries({r.address: r.address for r in owed}, nothing_recorded)
    await deliveries(tuple(RecipientResult(r, DELIVERED) for r in accepted))
    outcome = deliveries.answer_after_error("ID", owed, RuntimeError("a bug"))
    assert outcome.reply.answer.value == letter
    assert "a bug" in outcome.reply.text
    assert {r.recipient: r.reply.answer.value for r in outcome.per_recipient} == per_recipient


class BrokenRefusalNotice:
    """Stands for a bug in a stage after the forward: it raises instead of sending the DSN."""

    async def __call__(
        self, outcome: Outcome, envelope: Envelope, refused: list[RecipientResult], spool: MessageBody
    ) -> Outcome:
        raise RuntimeError("a bug after the forward")


async def test_an_error_after_a_delivery_is_answered_and_the_retry_goes_only_to_the_rest(
    tmp_path: Path,
) -> None:
    """Bob is delivered, Carol refused by the downstream; the DSN about her fails with an error no one
    expected. Before, the error went up to the listener, which dropped the connection (the retry
    delivered Bob twice). Now: Z, Bob on record, and the retry goes to Carol alone."""
    script = Script(rcpt_replies={CAROL.address: "550 5.1.1 no such user"})
    envelope = Envelope("alice@example.org", (BOB, CAROL))
    async with fake_mta(script) as mta:
        config = loads(f'state_dir = "{tmp_path}"\n[forward]\nmethod = "smtp:[127.0.0.1]:{mta.port}"\n')
        pipeline = build_pipeline(config)
        try:
            broken = replace(pipeline, refusal_notice=BrokenRefusalNotice())
            with MessageSpool.from_bytes(MESSAGE) as spool:
                first = await broken.handle(envelope, spool)
            assert first.reply.answer is Answer.TEMPFAIL, first
            assert "after 1 of 2 recipients were delivered" in first.reply.text
            with MessageSpool.from_bytes(MESSAGE) as spool:
                # No DSN about Carol this time either: the downstream sees only the retry.
                retry = await replace(pipeline, refusal_notice=NoRefusalNotice()).handle(envelope, spool)
            assert retry.reply.answer is Answer.ACCEPT, retry
        finally:
            await pipeline.close()
    assert [d.recipients for d in mta.accepted] == [[BOB.address.encode()]]
    assert [line for line in mta.transcript if line.startswith(b"RCPT")] == [
        b"RCPT TO:<bob@example.net>\r\n",
        b"RCPT TO:<carol@example.net>\r\n",
        b"RCPT TO:<carol@example.net>\r\n",  # the retry: Carol alone
    ]
