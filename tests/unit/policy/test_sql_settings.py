"""What amavisd-new's lookup rows mean (store/amavisd_lookups.py), what they change in a recipient's settings
before the TOML's, and what a white- or blacklisted sender, or a score boost, does to a recipient's lot;
also the TOML's own whitelist_sender / blacklist_sender lists, for a site without SQL."""

from __future__ import annotations

from typing import Any

import pytest

from qsift import config
from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.model import Category, Recipient
from qsift.policy.destiny import Destiny
from qsift.policy.recipients import Decision, decide_recipient
from qsift.policy.settings import Policy
from qsift.store.amavisd_lookups import (
    NOT_LISTED,
    FoundSettings,
    PolicyRow,
    SenderListing,
    found_settings,
    sender_listing,
    sql_keys,
    truth,
)

RCPT = "bob@example.com"


def policy(**sections: Any) -> Policy:
    return config.from_mapping(sections).policies.base


def decide(rules: Policy, score: float | None, address: str = RCPT) -> Decision:
    spam = SpamResult("spamd", score=score, rules=("BAYES_99",)) if score is not None else None
    return decide_recipient(Verdict((), (), spam), rules, Recipient(address), 100)


def test_sql_keys_are_amavisds_make_query_keys() -> None:
    assert sql_keys("User+Foo@Sub.Example.COM", "+") == (
        "User+Foo@Sub.Example.COM",
        "user+foo@sub.example.com",
        "user@sub.example.com",
        "@sub.example.com",
        "@.sub.example.com",
        "@.example.com",
        "@.com",
        "@.",
    )
    assert sql_keys("a@b.c") == ("a@b.c", "@b.c", "@.b.c", "@.c", "@.")
    assert sql_keys("") == ("", "@", "@.")
    assert len([k for k in sql_keys("a@" + ".".join(["d"] * 50)) if k.startswith("@.")]) == 21  # 20 + "@."


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Y", True), ("y", True), ("x", True), ("1", True), ("N", False), ("n", False), ("F", False),
     ("f", False), ("0", False), (" ", False), ("\0", False), ("", False), (None, None)],
)  # fmt: skip
def test_booleans(value: str | None, expected: bool | None) -> None:
    assert truth(value) is expected


def test_the_first_non_null_value_wins_and_null_falls_through() -> None:
    rows = [
        PolicyRow(1, "u@d", {"spam_lover": None, "spam_kill_level": None, "message_size_limit": 0}),
        PolicyRow(2, "@d", {"spam_lover": "Y", "spam_kill_level": 12.0, "message_size_limit": 99}),
    ]
    found = found_settings(rows)
    assert found.user_ids == (1, 2)
    assert found.loves == {Category.SPAM: True}
    assert found.levels == {"kill_level": 12.0}
    assert found.message_size_limit == 0  # 0 is a value (no limit), not NULL
    assert found.local is True


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, NOT_LISTED),
        ({1: "W"}, SenderListing(whitelisted=True)),
        ({1: "B "}, SenderListing(blacklisted=True)),
        ({1: " "}, NOT_LISTED),
        ({1: ""}, NOT_LISTED),
        ({1: "-2", 2: "B"}, SenderListing(blacklisted=True, score_boost=-2.0)),
        ({1: " +1.5 ", 2: "3."}, SenderListing(score_boost=4.5)),
        ({1: " ", 2: "B"}, NOT_LISTED),  # neutral stops the search
        ({2: "W"}, SenderListing(whitelisted=True)),
        ({1: "weird"}, SenderListing(whitelisted=True)),
    ],
)
def test_wb_values(values: dict[int, str], expected: SenderListing) -> None:
    assert sender_listing((1, 2), values) == expected


def test_sql_comes_before_the_toml_and_null_leaves_it_to_the_toml() -> None:
    rules = policy(
        policy={
            "spam_lovers": ["bob@example.com"],
            "local_domains": ["example.org"],
            "recipient": [{"match": ["example.com"], "kill_level": 20.0, "message_size_limit": 5}],
        }
    )
    sql = FoundSettings(
        user_ids=(1,),
        local=True,
        loves={Category.SPAM: False, Category.VIRUS: True},
        levels={"tag2_level": 3.0},
    )
    settings = rules.for_message("", {RCPT: sql}).for_recipient(RCPT)
    assert settings.local is True  # SQL's users row, though example.com is not in local_domains
    assert settings.loves == {Category.VIRUS}  # SQL's N beats the TOML's spam_lovers
    assert (settings.levels.tag2_level, settings.levels.kill_level) == (3.0, 20.0)
    assert settings.message_size_limit == 5
    unfound = rules.for_message("", {}).for_recipient(RCPT)
    assert unfound.local is False and unfound.loves == {Category.SPAM}


def test_a_whitelisted_sender_makes_spam_pass_and_a_blacklisted_one_makes_clean_mail_spam() -> None:
    base = policy()
    white = base.for_message("x@example.org", {RCPT: FoundSettings(listing=SenderListing(whitelisted=True))})
    passed = decide(white, 30.0)
    assert passed.destiny is Destiny.PASS and passed.whitelisted and not passed.blacklisted
    assert passed.view.category is Category.CLEAN
    assert passed.view.spam is not None and passed.view.spam.score == 0.0  # X-Spam-Score at most 0
    black = base.for_message("x@example.org", {RCPT: FoundSettings(listing=SenderListing(blacklisted=True))})
    blocked = decide(black, -1.0)
    assert blocked.destiny is Destiny.REJECT and blocked.blacklisted
    assert blocked.view.category is Category.SPAM
    assert blocked.view.spam is not None and blocked.view.spam.score == 64.0
    # Even with no spam score at all (the scan was skipped for a listed sender).
    assert decide(black, None).view.category is Category.SPAM


def test_a_score_boost_adds_to_the_score_with_its_rule() -> None:
    boosted = policy().for_message(
        "x@example.org", {RCPT: FoundSettings(listing=SenderListing(score_boost=5))}
    )
    decision = decide(boosted, 2.0)
    assert decision.view.category is Category.SPAM
    assert decision.view.spam is not None
    assert (decision.view.spam.score, decision.view.spam.rules[0]) == (7.0, "AM.WBL=5")
    soft = policy().for_message("x@example.org", {RCPT: FoundSettings(listing=SenderListing(score_boost=-5))})
    softened = decide(soft, 10.0)
    assert softened.view.category is Category.CLEAN  # 5.0: under tag2_level
    assert softened.view.spam is not None and softened.view.spam.score == 5.0


def test_a_recipient_who_bypasses_spam_checks_ignores_its_lists() -> None:
    rules = policy(policy={"bypass_spam_checks": [RCPT]})
    black = rules.for_message("x@example.org", {RCPT: FoundSettings(listing=SenderListing(blacklisted=True))})
    assert decide(black, 50.0).destiny is Destiny.PASS


def test_toml_sender_lists_global_and_per_recipient() -> None:
    rules = policy(
        policy={
            "whitelist_sender": ["friend@example.org"],
            "blacklist_sender": [".spam.example", "friend@example.org"],
            "recipient": [
                {"match": ["carol@example.com"], "blacklist_sender": ["friend@example.org"]},
                {"match": ["dave@example.com"], "whitelist_sender": ["@.spam.example"]},
            ],
        }
    )
    friend = rules.for_message("friend@example.org", {})
    assert decide(friend, 30.0).whitelisted  # on both global lists: whitelisted
    assert decide(friend, -5.0, "carol@example.com").blacklisted  # her own list first
    spammer = rules.for_message("a@x.spam.example", {})
    assert decide(spammer, -5.0).destiny is Destiny.REJECT
    assert decide(spammer, 30.0, "dave@example.com").destiny is Destiny.PASS
    # SQL's wblist before the TOML's lists.
    sql = {RCPT: FoundSettings(listing=SenderListing(blacklisted=True))}
    assert decide(rules.for_message("friend@example.org", sql), 0.0).blacklisted
    # Without a message (qsift scan) no list applies.
    assert not decide(rules, 30.0).whitelisted


def test_the_spam_check_is_skipped_when_every_recipient_lists_the_sender() -> None:
    rules = policy(policy={"whitelist_sender": ["friend@example.org"]})
    friend = rules.for_message("friend@example.org", {})
    assert friend.bypassed_by_all(Category.SPAM, (RCPT, "carol@example.com"))
    assert not friend.bypassed_by_all(Category.VIRUS, (RCPT,))
    other = rules.for_message(
        "x@example.org", {"carol@example.com": FoundSettings(listing=SenderListing(blacklisted=True))}
    )
    assert not other.bypassed_by_all(Category.SPAM, (RCPT, "carol@example.com"))
    assert other.bypassed_by_all(Category.SPAM, ("carol@example.com",))
