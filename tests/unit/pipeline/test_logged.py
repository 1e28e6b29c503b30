"""amavisd-new's codes for a finished message (pipeline/logged.py; reference amavisd-sql.md §1.4), as case
tables over the pure functions."""

from __future__ import annotations

import pytest

from qsift.answers import Row
from qsift.model import Answer, Recipient, Reply
from qsift.pipeline.logged import delivery_status, dsn_sent, recipient_numbers
from qsift.policy.destiny import Destiny

MAIL_ID = "abcdefghijkl"
TAKEN = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok: queued as 1")
REFUSED = Reply(Answer.REJECT, 550, "5.1.1", "no such user")
LATER = Reply(Answer.TEMPFAIL, 451, "4.2.0", "try later")
BOUNCED = Row.BOUNCED.reply(mail_id=MAIL_ID)
SUPPRESSED = Row.BOUNCE_SUPPRESSED.reply(mail_id=MAIL_ID, reason="spam over the cutoff")
DISCARDED = Row.DISCARDED.reply(mail_id=MAIL_ID, reason="BANNED")
REJECTED = Row.REJECTED.reply(mail_id=MAIL_ID, reason="BANNED")


@pytest.mark.parametrize(
    ("destiny", "reply", "letter"),
    [
        (Destiny.PASS, TAKEN, "P"),
        (Destiny.PASS, REFUSED, "R"),  # the downstream refused it
        (Destiny.PASS, LATER, "T"),
        (Destiny.REJECT, REJECTED, "R"),
        (Destiny.REJECT, BOUNCED, "R"),  # rejected among delivered ones: told by a DSN, still a reject
        (Destiny.BOUNCE, BOUNCED, "B"),
        (Destiny.BOUNCE, SUPPRESSED, "B"),
        (Destiny.BOUNCE, REJECTED, "B"),  # refused whole: the client's own bounce
        (Destiny.BOUNCE, Row.DSN_FAILED.reply(mail_id=MAIL_ID, text="down"), "T"),
        (Destiny.DISCARD, DISCARDED, "D"),
    ],
)
def test_delivery_status(destiny: Destiny, reply: Reply, letter: str) -> None:
    assert delivery_status(destiny, reply) == letter


@pytest.mark.parametrize(
    ("fates", "sent"),
    [
        ([(Destiny.PASS, TAKEN)], "N"),
        ([(Destiny.PASS, TAKEN), (Destiny.BOUNCE, BOUNCED)], "Y"),
        ([(Destiny.REJECT, BOUNCED)], "Y"),
        ([(Destiny.BOUNCE, SUPPRESSED)], "q"),
        ([(Destiny.BOUNCE, SUPPRESSED), (Destiny.BOUNCE, BOUNCED)], "Y"),
        ([(Destiny.REJECT, REJECTED)], "N"),  # refused: the client bounces, not us
        ([(Destiny.DISCARD, DISCARDED)], "N"),
    ],
)
def test_dsn_sent(fates: list[tuple[Destiny, Reply]], sent: str) -> None:
    assert dsn_sent(MAIL_ID, fates) == sent


A, B, C = Recipient("a@example.net"), Recipient("b@example.net"), Recipient("c@example.net")


@pytest.mark.parametrize(
    ("some", "numbers"),
    [
        ((A, B, C), (1, 2, 3)),
        ((B, C), (2, 3)),  # a retry for the ones not delivered yet, or the kept ones
        ((C,), (3,)),
        ((), ()),
    ],
)
def test_recipient_numbers(some: tuple[Recipient, ...], numbers: tuple[int, ...]) -> None:
    assert recipient_numbers((A, B, C), some) == numbers


def test_a_recipient_named_twice_gets_two_numbers() -> None:
    assert recipient_numbers((A, B, A), (A, A)) == (1, 3)
    assert recipient_numbers((A, B, A), (B, A)) == (2, 3)
