"""The rules that fold per-recipient results into one answer (pipeline/answer.py), as case tables.

Each case is a line: what the forward said for each recipient (or what the policy did), and the answer
as QMQP says it. The integration tests keep only what needs a socket.
"""

from __future__ import annotations

from collections import Counter

import pytest

from qsift.answers import Row
from qsift.model import (
    Answer,
    Disposition,
    Envelope,
    ForwardResult,
    Outcome,
    Recipient,
    RecipientResult,
    Reply,
)
from qsift.pipeline.answer import combine, decide
from qsift.policy.destiny import Destiny

MAIL_ID = "M"
METHOD = "smtp:[127.0.0.1]:10025"
QUEUED = "250 2.0.0 Ok: queued as Q"
BOB, CAROL, DAN = Recipient("bob@example.net"), Recipient("carol@example.net"), Recipient("dan@example.net")
ENVELOPE = Envelope("alice@example.org", (BOB, CAROL, DAN))

OK = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok: queued as Q")
NO_USER = Reply(Answer.REJECT, 550, "5.1.1", "no such user")
TIMEOUT = Reply(Answer.TEMPFAIL, 421, "4.4.2", "timeout")
ODD = Reply(Answer.TEMPFAIL, 354, "4.0.0", "go ahead")
OURS = Reply(Answer.REJECT, 553, "5.1.7", "sender cannot be forwarded: '>'")


def said(outcome: Outcome) -> str:
    """The answer as QMQP says it: letter, code, status, text."""
    return outcome.reply.answer.value + outcome.reply.qmqp_text().decode()


def forwarded(*replies: Reply, queued_as: str | None = QUEUED, by_us: bool = False) -> ForwardResult:
    results = tuple(
        RecipientResult(recipient, reply, from_downstream=not by_us)
        for recipient, reply in zip(ENVELOPE.recipients, replies, strict=False)
    )
    return ForwardResult(METHOD, results, queued_as)


VIA = f"from MTA({METHOD})"

# (what the forward said, recipients delivered by an earlier try, the answer, the disposition)
DECIDE_CASES: list[tuple[ForwardResult, int, str, Disposition]] = [
    (forwarded(OK), 0, f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}", Disposition.PASSED),
    (forwarded(OK, OK), 0, f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}", Disposition.PASSED),
    (forwarded(OK, queued_as=None), 0, f"K250 2.0.0 Ok, id=M, {VIA}: accepted", Disposition.PASSED),
    (forwarded(OK, NO_USER), 0, f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}, but 1 REJECT", Disposition.PASSED),
    (
        forwarded(NO_USER, NO_USER, queued_as=None),
        0,
        f"D550 5.1.1 id=M - rejected by next-hop MTA, {VIA}: 550 5.1.1 no such user",
        Disposition.BLOCKED,
    ),
    # Every recipient left refused, but one was delivered by an earlier try: K, naming the refusal.
    (
        forwarded(NO_USER, queued_as=None),
        1,
        f"K250 2.0.0 Ok, id=M, {VIA}: accepted, but 1 REJECT",
        Disposition.PASSED,
    ),
    (
        forwarded(OURS, by_us=True, queued_as=None),
        0,
        f"D553 5.1.7 id=M - refused by qsift, not sent to MTA({METHOD}): "
        "553 5.1.7 sender cannot be forwarded: '>'",
        Disposition.BLOCKED,
    ),
    # Anything temporary makes the whole answer temporary, in the downstream's code and status.
    (
        forwarded(OK, TIMEOUT),
        0,
        f"Z421 4.4.2 id=M - forward failed, {VIA}: 421 4.4.2 timeout",
        Disposition.TEMPFAILED,
    ),
    (
        forwarded(NO_USER, TIMEOUT),
        0,
        f"Z421 4.4.2 id=M - forward failed, {VIA}: 421 4.4.2 timeout",
        Disposition.TEMPFAILED,
    ),
    # A code that is not 4xx where a temporary failure was due: 451, the downstream's words kept.
    (
        forwarded(ODD),
        0,
        f"Z451 4.0.0 id=M - forward failed, {VIA}: 354 4.0.0 go ahead",
        Disposition.TEMPFAILED,
    ),
]


@pytest.mark.parametrize(("result", "already", "answer", "disposition"), DECIDE_CASES)
def test_decide(result: ForwardResult, already: int, answer: str, disposition: Disposition) -> None:
    outcome = decide(MAIL_ID, ENVELOPE, result, already)
    assert said(outcome) == answer
    assert outcome.disposition is disposition
    assert outcome.per_recipient == result.per_recipient


def test_decide_notes_what_was_kept_for_the_retry_and_who_was_refused() -> None:
    assert decide(MAIL_ID, ENVELOPE, forwarded(OK, TIMEOUT)).notes == ("1 delivered, kept for the retry",)
    assert decide(MAIL_ID, ENVELOPE, forwarded(OK, NO_USER)).notes == (
        "rejected <carol@example.net>: 550 5.1.1 no such user",
    )


def blocked(row: Row, *recipients: Recipient, **fields: object) -> Outcome:
    """What the policy did to a group of recipients, each with the group's reply."""
    reply = row.reply(mail_id=MAIL_ID, **fields)
    disposition = Disposition.TEMPFAILED if reply.answer is Answer.TEMPFAIL else Disposition.BLOCKED
    per_recipient = tuple(RecipientResult(r, reply) for r in recipients)
    return Outcome(MAIL_ID, reply, disposition, per_recipient=per_recipient)


SENT_TO_BOB = decide(MAIL_ID, ENVELOPE, forwarded(OK))
SENT_TO_BOB_NOT_CAROL = decide(MAIL_ID, ENVELOPE, forwarded(OK, NO_USER))
REFUSED_DOWNSTREAM = decide(MAIL_ID, ENVELOPE, forwarded(NO_USER, queued_as=None))
FORWARD_FAILED = decide(MAIL_ID, ENVELOPE, forwarded(TIMEOUT, queued_as=None))
BOUNCED = blocked(Row.BOUNCED, CAROL)
DISCARDED = blocked(Row.DISCARDED, DAN, reason="SPAM 9.1")
REJECTED = blocked(Row.REJECTED, CAROL, reason="VIRUS Eicar")
DSN_FAILED = blocked(Row.DSN_FAILED, CAROL, text="no route")

# (what was forwarded, what the policy did, how many it did what to, the answer)
COMBINE_CASES: list[tuple[Outcome | None, list[Outcome], Counter[Destiny], str]] = [
    (SENT_TO_BOB, [], Counter(), f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}"),
    (
        SENT_TO_BOB,
        [BOUNCED],
        Counter({Destiny.BOUNCE: 1}),
        f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}, but 1 BOUNCE",
    ),
    (
        SENT_TO_BOB,
        [BOUNCED, DISCARDED],
        Counter({Destiny.DISCARD: 1, Destiny.BOUNCE: 1}),
        f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}, but 1 BOUNCE, 1 DISCARD",
    ),
    # The downstream's refusals and the policy's add up, named once each.
    (
        SENT_TO_BOB_NOT_CAROL,
        [DISCARDED],
        Counter({Destiny.DISCARD: 1}),
        f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}, but 1 REJECT, 1 DISCARD",
    ),
    (
        SENT_TO_BOB_NOT_CAROL,
        [blocked(Row.BOUNCED, DAN)],
        Counter({Destiny.REJECT: 1}),
        f"K250 2.0.0 Ok, id=M, {VIA}: {QUEUED}, but 2 REJECT",
    ),
    # Nothing forwarded.
    (None, [REJECTED], Counter({Destiny.REJECT: 1}), "D554 5.7.0 Reject, id=M - VIRUS Eicar"),
    (None, [DISCARDED], Counter({Destiny.DISCARD: 1}), "K250 2.7.0 Ok, discarded, id=M - SPAM 9.1"),
    (
        None,
        [BOUNCED, DISCARDED],
        Counter({Destiny.BOUNCE: 1, Destiny.DISCARD: 1}),
        "K250 2.5.0 Ok, id=M, 1 BOUNCE, 1 DISCARD",
    ),
    (
        None,
        [DISCARDED, REJECTED],
        Counter({Destiny.DISCARD: 1, Destiny.REJECT: 1}),
        "D554 5.7.0 Reject, id=M - VIRUS Eicar",
    ),
    # The policy's refusal is said before the downstream's, which stands when the policy refused none.
    (REFUSED_DOWNSTREAM, [REJECTED], Counter({Destiny.REJECT: 1}), "D554 5.7.0 Reject, id=M - VIRUS Eicar"),
    (
        REFUSED_DOWNSTREAM,
        [DISCARDED],
        Counter({Destiny.DISCARD: 1}),
        f"D550 5.1.1 id=M - rejected by next-hop MTA, {VIA}: 550 5.1.1 no such user",
    ),
    # Anything temporary makes the whole answer temporary.
    (
        FORWARD_FAILED,
        [BOUNCED],
        Counter({Destiny.BOUNCE: 1}),
        f"Z421 4.4.2 id=M - forward failed, {VIA}: 421 4.4.2 timeout",
    ),
    (
        SENT_TO_BOB,
        [DSN_FAILED],
        Counter({Destiny.BOUNCE: 1}),
        "Z451 4.5.0 id=M - BOUNCE: the DSN could not be sent (no route)",
    ),
    (
        None,
        [DISCARDED, DSN_FAILED],
        Counter(),
        "Z451 4.5.0 id=M - BOUNCE: the DSN could not be sent (no route)",
    ),
]


@pytest.mark.parametrize(("sent", "policy", "counts", "answer"), COMBINE_CASES)
def test_combine(sent: Outcome | None, policy: list[Outcome], counts: Counter[Destiny], answer: str) -> None:
    outcome = combine(MAIL_ID, sent, policy, counts)
    assert said(outcome) == answer
    everyone = [r for o in (sent, *policy) if o is not None for r in o.per_recipient]
    assert list(outcome.per_recipient) == everyone
