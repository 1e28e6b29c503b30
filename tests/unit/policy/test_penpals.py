"""Pen pals as amavisd-new has them: when the log is asked and about whom, the bonus a mail found earns
(exact arithmetic), the recipient's own score and tests with it, the settings and their policy banks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from qsift import config
from qsift.act.headers import header_fields
from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.checks.spam_levels import SpamLevels
from qsift.errors import ConfigError
from qsift.model import Category, Finding, Recipient
from qsift.policy.destiny import Destiny
from qsift.policy.penpals import (
    MAX_REFERENCES,
    PenPal,
    Skipped,
    message_references,
    penpal_bonus,
    penpal_query,
    with_penpal,
)
from qsift.policy.recipients import decide_recipients
from qsift.policy.settings import Policy
from qsift.store.penpals import PenPalQuery, SentMail

SENDER = "alice@example.org"
BOB, CAROL, REMOTE = "bob@example.net", "carol@example.net", "dave@elsewhere.test"
DAY = 86400.0
WEEK = 7 * DAY
SPAMD = {"type": "spamd", "address": "127.0.0.1:783"}
LOCAL = {"local_domains": ["example.net"]}


def policy(spam: dict[str, Any] | None = None, **top: Any) -> Policy:
    values = {"spam": {**SPAMD, "penpals_bonus_score": 8, **(spam or {})}, "policy": LOCAL, **top}
    return config.from_mapping(values).policies.base


def originating() -> Policy:
    """The policy of our own users' mail (the built-in ORIGINATING bank)."""
    values = {"spam": {**SPAMD, "penpals_bonus_score": 8}, "policy": LOCAL}
    return config.from_mapping(values).policies.policy(("ORIGINATING",))


def scored(score: float | None, *findings: Finding) -> Verdict:
    return Verdict((), findings, spam=SpamResult("sa", score=score, required=5.0, rules=("BAYES_50",)))


def recipients(*addresses: str) -> tuple[Recipient, ...]:
    return tuple(Recipient(a) for a in addresses)


def sent(time_num: int, *, by_reference: bool = False) -> SentMail:
    return SentMail("mailid000001", time_num, "lunch", by_reference)


# --- when the log is asked, and about whom (amavisd-sql.md §2.5 "Preconditions") ---------------------

VIRUS = Finding(Category.VIRUS, 0, "Eicar-Test-Signature")
ASK_CASES: list[tuple[str, Policy, Verdict, str, tuple[str, ...], tuple[str, ...] | str]] = [
    ("asked about the local recipients", policy(), scored(3.0), SENDER, (BOB, CAROL), (BOB, CAROL)),
    ("not a remote recipient", policy(), scored(3.0), SENDER, (BOB, REMOTE), (BOB,)),
    ("not the sender itself", originating(), scored(3.0), BOB, (BOB, CAROL), (CAROL,)),
    ("nor in other case", originating(), scored(3.0), "Bob@Example.NET", (BOB,), "no local recipient"),
    ("off by default", policy({"penpals_bonus_score": 0}), scored(3.0), SENDER, (BOB,), "off"),
    ("only scored mail", policy(), scored(None), SENDER, (BOB,), "not scored"),
    ("never a virus", policy(), scored(3.0, VIRUS), SENDER, (BOB,), "a virus"),
    ("below threshold_low", policy(), scored(0.999), SENDER, (BOB,), "below penpals_threshold_low"),
    ("at threshold_low", policy(), scored(1.0), SENDER, (BOB,), (BOB,)),
    ("a lower threshold_low", policy({"penpals_threshold_low": -5}), scored(-2.0), SENDER, (BOB,), (BOB,)),
    (
        "above threshold_high even with the bonus",
        policy({"penpals_threshold_high": 10}),
        scored(18.001),
        SENDER,
        (BOB,),
        "above penpals_threshold_high",
    ),
    (
        "the bonus brings it to threshold_high",
        policy({"penpals_threshold_high": 10}),
        scored(18.0),
        SENDER,
        (BOB,),
        (BOB,),
    ),
    ("a local sender from outside", policy(), scored(3.0), "eve@example.net", (BOB,), "a local sender"),
    ("the null sender", policy(), scored(3.0), "", (BOB,), (BOB,)),
    (
        "not who bypasses spam checks",
        policy(policy={**LOCAL, "bypass_spam_checks": ["carol@example.net"]}),
        scored(3.0),
        SENDER,
        (BOB, CAROL),
        (BOB,),
    ),
]


@pytest.mark.parametrize(
    ("rules", "verdict", "sender", "to", "expected"),
    [case[1:] for case in ASK_CASES],
    ids=[case[0] for case in ASK_CASES],
)
def test_who_is_asked_about(
    rules: Policy, verdict: Verdict, sender: str, to: tuple[str, ...], expected: tuple[str, ...] | str
) -> None:
    asked = penpal_query(verdict, rules, sender, recipients(*to))
    if isinstance(expected, str):
        assert isinstance(asked, Skipped) and expected in asked.reason, asked
    else:
        assert asked == PenPalQuery(sender, expected)


def test_an_originating_bank_asks_for_a_local_sender() -> None:
    own = originating()
    assert own.originating
    asked = penpal_query(scored(3.0), own, "eve@example.net", recipients(BOB))
    assert asked == PenPalQuery("eve@example.net", (BOB,))


def test_a_bank_may_turn_it_off_or_change_it() -> None:
    banks = {
        "QUIET": {"client_networks": ["192.0.2.0/24"], "spam": {"penpals_bonus_score": 0}},
        "HALF": {"spam": {"penpals_halflife": 3600, "penpals_threshold_low": 5}},
    }
    values = {
        "spam": {**SPAMD, "penpals_bonus_score": 8},
        "policy": LOCAL,
        "policy_bank": banks,
        "listen": [{"protocol": "qmqp", "address": "127.0.0.1:10628", "policy_bank": "HALF"}],
    }
    policies = config.from_mapping(values).policies
    quiet, half = policies.policy(("QUIET",)), policies.policy(("HALF",))
    assert isinstance(penpal_query(scored(3.0), quiet, SENDER, recipients(BOB)), Skipped)
    assert (half.levels.penpals_bonus_score, half.levels.penpals_halflife) == (8.0, 3600.0)
    assert isinstance(penpal_query(scored(3.0), half, SENDER, recipients(BOB)), Skipped)


def test_a_recipient_table_does_not_change_them() -> None:
    rules = policy(policy={**LOCAL, "recipient": [{"match": [BOB], "kill_level": 20}]})
    levels = rules.for_recipient(BOB).levels
    assert (levels.kill_level, levels.penpals_bonus_score) == (20.0, 8.0)


@pytest.mark.parametrize(
    ("spam", "problem"),
    [
        ({"penpals_bonus_score": -1}, "must be 0 (off) or more"),
        ({"penpals_halflife": 0}, "penpals_halflife"),
        ({"penpals_threshold_high": "x"}, "penpals_threshold_high"),
    ],
)
def test_bad_settings_are_refused(spam: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        config.from_mapping({"spam": {**SPAMD, **spam}})


def test_the_defaults_are_amavisd_new_s() -> None:
    levels = SpamLevels()
    assert levels.penpals_bonus_score == 0.0  # amavisd-new's undef: off
    assert levels.penpals_halflife == WEEK
    assert (levels.penpals_threshold_low, levels.penpals_threshold_high) == (1.0, None)


# --- the formula: adj = -bonus * 2^(-age/halflife) --------------------------------------------------

NOW = 1_800_000_000
BONUS_CASES = [
    ("sent just now", NOW, -8.0),
    ("sent after the message (clocks apart)", NOW + 60, -8.0),
    ("one halflife", NOW - int(WEEK), -4.0),
    ("two halflives", NOW - int(2 * WEEK), -2.0),
    ("half a halflife", NOW - int(WEEK / 2), -8.0 / 2**0.5),
    ("ten halflives", NOW - int(10 * WEEK), -8.0 / 1024),
]


@pytest.mark.parametrize(
    ("time_num", "adjustment"), [case[1:] for case in BONUS_CASES], ids=[case[0] for case in BONUS_CASES]
)
def test_the_bonus_halves_every_halflife(time_num: int, adjustment: float) -> None:
    penpal = penpal_bonus(sent(time_num), NOW, SpamLevels(penpals_bonus_score=8.0))
    assert penpal.adjustment == pytest.approx(adjustment, rel=1e-15)
    assert penpal.age == max(0, NOW - time_num)


def test_the_test_is_rounded_to_a_thousandth() -> None:
    levels = SpamLevels(penpals_bonus_score=8.0)
    assert penpal_bonus(sent(NOW - int(WEEK)), NOW, levels).test == "AM.PENPAL=-4.000"
    # 8 * 2^(-1/3) = 6.3496...
    assert penpal_bonus(sent(NOW - int(WEEK / 3)), NOW, levels).test == "AM.PENPAL=-6.350"
    half_day = SpamLevels(penpals_bonus_score=3.0, penpals_halflife=43200.0)
    assert penpal_bonus(sent(NOW - 86400), NOW, half_day).test == "AM.PENPAL=-0.750"


def test_the_recipient_s_score_and_tests_carry_it() -> None:
    penpal = PenPal(-4.0, WEEK, sent(NOW - int(WEEK)))
    spam = with_penpal(SpamResult("sa", score=7.5, required=5.0, rules=("BAYES_99", "URIBL")), penpal)
    assert (spam.score, spam.rules) == (3.5, ("AM.PENPAL=-4.000", "BAYES_99", "URIBL"))
    assert with_penpal(SpamResult("sa"), penpal) == SpamResult("sa")


def test_each_recipient_sees_its_own_bonus() -> None:
    # 7.5 is spam (kill_level 6.9) for carol; bob's pen pal brings it to 3.5: tagged, passed.
    rules = policy()
    verdict = scored(7.5, Finding(Category.SPAM, 0, "score 7.500"))
    penpal = penpal_bonus(sent(NOW - int(WEEK)), NOW, rules.levels)
    bob, carol = decide_recipients(verdict, rules, recipients(BOB, CAROL), 100, {BOB: penpal})
    assert (bob.destiny, bob.view.category, bob.view.spam and bob.view.spam.score) == (
        Destiny.PASS,
        Category.CLEAN,
        3.5,
    )
    assert (carol.view.category, carol.view.spam and carol.view.spam.score) == (Category.SPAM, 7.5)
    fields = header_fields(bob.view, bob.settings.levels, "mx.test", virus_scanned=False)
    assert "X-Spam-Score: 3.500" in fields
    assert (
        "X-Spam-Status: No, score=3.500 tagged_above=2 required=6.2 tests=[AM.PENPAL=-4.000,BAYES_50]"
        in fields
    )


def test_the_log_line_note() -> None:
    penpal = PenPal(-4.0, WEEK, sent(NOW - int(WEEK), by_reference=True))
    assert penpal.note(BOB) == (
        "penpals: <bob@example.net> AM.PENPAL=-4.000 (mail_id mailid000001, 7.0 days old, by Message-ID)"
    )
    assert PenPal(-8.0, 5400, sent(NOW)).note(BOB).endswith("(mail_id mailid000001, 1.5 h old, by address)")
    assert PenPal(-8.0, 59.6, sent(NOW)).note(BOB).endswith("(mail_id mailid000001, 60 s old, by address)")


# --- In-Reply-To and References ----------------------------------------------------------------------

REFERENCE_CASES = [
    ("none", b"Subject: hi\r\n", ()),
    ("in-reply-to", b"In-Reply-To: <a@x>\r\n", ("<a@x>",)),
    (
        "in-reply-to first, then the newest reference",
        b"References: <r1@x> <r2@x>\r\n\t<r3@x>\r\nIN-REPLY-TO: <r3@x>\r\n",
        ("<r3@x>", "<r2@x>", "<r1@x>"),
    ),
    ("white space inside is dropped, as msgs keeps it", b"In-Reply-To: < a b@x >\n", ("<ab@x>",)),
    ("comments and phrases around", b'In-Reply-To: "Bob" (note) <a@x> (sent)\n', ("<a@x>",)),
    ("an empty one is no id", b"References: <>\n", ()),
    ("not a field of that name", b"X-References: <a@x>\nResent-In-Reply-To: <b@x>\n", ()),
]


@pytest.mark.parametrize(
    ("header", "expected"), [case[1:] for case in REFERENCE_CASES], ids=[case[0] for case in REFERENCE_CASES]
)
def test_message_references(header: bytes, expected: tuple[str, ...]) -> None:
    assert message_references(header) == expected


def test_a_long_thread_is_cut_to_its_newest_references() -> None:
    listed = b" ".join(b"<m%d@x>" % n for n in range(100))
    found = message_references(b"In-Reply-To: <m99@x>\nReferences: " + listed + b"\n")
    assert len(found) == MAX_REFERENCES
    assert found[:3] == ("<m99@x>", "<m98@x>", "<m97@x>")
