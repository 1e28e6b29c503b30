"""Per-recipient decisions: lovers, bypass, per-recipient spam levels, oversized, the blocking category."""

from __future__ import annotations

from typing import Any

import pytest

from qsift import config
from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.errors import ConfigError
from qsift.model import Category, Client, Finding, Recipient
from qsift.policy.bank import ORIGINATING, Policies
from qsift.policy.destiny import Destiny
from qsift.policy.recipients import decide_recipient
from qsift.policy.settings import Policy

VIRUS = Finding(Category.VIRUS, 0, "Eicar-Test-Signature")
BANNED = Finding(Category.BANNED, 0, ".exe-ms,x.exe")
BAD_HEADER = Finding(Category.BAD_HEADER, 7, "Date: missing")


def policy(**sections: Any) -> Policy:
    return config.from_mapping(sections).policies.base


def spam(score: float) -> SpamResult:
    return SpamResult("spamd", score=score, rules=("BAYES_99",))


def decide(verdict: Verdict, rules: Policy, address: str = "bob@example.com", size: int = 100) -> Any:
    return decide_recipient(verdict, rules, Recipient(address), size)


def test_defaults_follow_the_howto() -> None:
    rules = policy()
    assert decide(Verdict((), (VIRUS,)), rules).destiny is Destiny.BOUNCE
    assert decide(Verdict((), (BANNED,)), rules).destiny is Destiny.BOUNCE
    assert decide(Verdict((), (BAD_HEADER,)), rules).destiny is Destiny.PASS
    assert decide(Verdict((), (), spam(7.0)), rules).destiny is Destiny.REJECT
    spammy = decide(Verdict((), (), spam(6.5)), rules)
    assert spammy.destiny is Destiny.PASS and spammy.view.category is Category.SPAMMY


def test_a_lover_gets_the_message_and_sees_what_it_is() -> None:
    rules = policy(policy={"virus_lovers": ["lab@example.com"]})
    lover = decide(Verdict((), (VIRUS,)), rules, "lab@example.com")
    assert lover.destiny is Destiny.PASS and lover.view.category is Category.VIRUS
    assert decide(Verdict((), (VIRUS,)), rules, "bob@example.com").destiny is Destiny.BOUNCE


def test_a_virus_lover_is_still_blocked_by_a_banned_file_and_told_about_that() -> None:
    rules = policy(policy={"virus_lovers": ["lab@"]}, destiny={"banned": "reject"})
    decision = decide(Verdict((), (VIRUS, BANNED)), rules, "lab@example.com")
    assert decision.destiny is Destiny.REJECT
    assert decision.view.category is Category.BANNED
    assert decision.view.reason().startswith("BANNED: ")


def test_bypass_hides_the_findings_as_if_never_checked() -> None:
    rules = policy(policy={"bypass_virus_checks": ["@example.com"], "bypass_spam_checks": ["@example.com"]})
    decision = decide(Verdict((), (VIRUS,), spam(50.0)), rules)
    assert decision.destiny is Destiny.PASS
    assert decision.view.category is Category.CLEAN and decision.view.spam is None
    assert rules.bypassed_by_all(Category.VIRUS, ("a@example.com", "b@example.com"))
    assert not rules.bypassed_by_all(Category.VIRUS, ("a@example.com", "b@example.org"))
    assert not rules.bypassed_by_all(Category.BANNED, ("a@example.com",))


def test_per_recipient_spam_levels() -> None:
    rules = policy(
        spam={"type": "spamd", "address": "127.0.0.1:783", "kill_level": 10.0},
        policy={"recipient": [{"match": ["strict@example.com"], "kill_level": 4.0, "tag2_level": 3.0}]},
    )
    verdict = Verdict((), (), spam(5.0))
    assert decide(verdict, rules, "strict@example.com").destiny is Destiny.REJECT
    relaxed = decide(verdict, rules, "easy@example.com")
    assert relaxed.destiny is Destiny.PASS and relaxed.view.category is Category.CLEAN
    assert decide(verdict, rules, "strict@example.com").settings.levels.kill_level == 4.0


def test_oversized_per_recipient() -> None:
    rules = policy(
        policy={"message_size_limit": 1000, "recipient": [{"match": ["big@"], "message_size_limit": 0}]}
    )
    small = decide(Verdict((), ()), rules, "bob@example.com", size=5000)
    assert small.destiny is Destiny.BOUNCE and small.view.category is Category.OVERSIZED
    assert decide(Verdict((), ()), rules, "big@example.com", size=5000).destiny is Destiny.PASS
    assert decide(Verdict((), ()), rules, "bob@example.com", size=1000).destiny is Destiny.PASS


def test_local_domains() -> None:
    rules = policy(policy={"local_domains": [".example.com"]})
    assert rules.for_recipient("a@sub.example.com").local
    assert not rules.for_recipient("a@example.org").local
    assert policy().for_recipient("a@example.org").local  # none configured: everyone is local


@pytest.mark.parametrize(
    "sections",
    [
        {"policy": {"spam_lover": ["x@"]}},
        {"policy": {"recipient": [{"match": ["x@"], "kill": 1}]}},
        {"policy": {"recipient": [{"kill_level": 1}]}},
        {"policy": {"message_size_limit": -1}},
        {"policy": {"recipient_delimiter": "++"}},
        {"quarantine": {"virus": "yes"}},
        {"quarantine": {"viruses": True}},
        {"notify": {"virus_admin": 1}},
        {"notify": {"warn_virus_recip": "yes"}},
        {"destiny": {"spam": "drop"}},
        {"originating": "yes"},
        {"policies": {}},
    ],
)
def test_bad_policy_settings_are_config_errors(sections: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        policy(**sections)


def banks(**tables: Any) -> Policies:
    listen = [{"protocol": "smtp", "address": "127.0.0.1:10026", "policy_bank": "OUTBOUND"}]
    raw = {"destiny": {"spam": "reject"}, "policy_bank": tables}
    return config.from_mapping({**raw, "listen": listen} if "OUTBOUND" in tables else raw).policies


def test_relayclient_or_auth_selects_the_built_in_originating_bank() -> None:
    set_ = banks()
    assert set_.select("qmqp:x", Client(ip="192.0.2.1")) == ()
    assert set_.select("qmqp:x", Client(ip="192.0.2.1", relay_client=True)) == (ORIGINATING,)
    assert set_.select("qmqp:x", Client(auth_user="alice")) == (ORIGINATING,)
    assert set_.policy((ORIGINATING,)).originating
    assert not set_.base.originating


def test_banks_by_listener_then_network_then_context_laid_on_in_order() -> None:
    set_ = banks(
        OUTBOUND={"destiny": {"spam": "bounce"}, "originating": True},
        PARTNERS={
            "client_networks": ["192.0.2.0/24"],
            "spam": {"kill_level": 12},
            "destiny": {"spam": "pass"},
        },
        ORIGINATING={"destiny": {"banned": "discard"}},
    )
    client = Client(ip="192.0.2.9", relay_client=True)
    names = set_.select("smtp:127.0.0.1:10026", client)
    assert names == ("OUTBOUND", "PARTNERS", ORIGINATING)
    combined = set_.policy(names)
    assert combined.destinies.spam is Destiny.PASS  # PARTNERS came after OUTBOUND
    assert combined.destinies.banned is Destiny.DISCARD
    assert combined.levels.kill_level == 12
    assert combined.originating and combined.banks == names
    assert set_.policy(names) is combined  # built once
    assert set_.select("qmqp:x", Client(ip="::ffff:192.0.2.9")) == ("PARTNERS",)
    assert set_.select("qmqp:x", Client(ip="not an ip")) == ()


def test_a_bank_that_does_not_say_originating_keeps_what_the_banks_before_it_said() -> None:
    # A bank is an overlay: PARTNERS, laid over OUTBOUND, leaves OUTBOUND's `originating` alone (before
    # the overlays, every bank reset it to its own default, false).
    set_ = banks(OUTBOUND={"originating": True}, PARTNERS={"client_networks": ["192.0.2.0/24"]})
    names = set_.select("smtp:127.0.0.1:10026", Client(ip="192.0.2.9"))
    assert names == ("OUTBOUND", "PARTNERS")
    assert set_.policy(names).originating
    assert not set_.policy(("PARTNERS",)).originating


@pytest.mark.parametrize(
    "table",
    [
        {"client_networks": ["300.1.1.1"]},
        {"client_networks": "192.0.2.0/24"},
        {"relay_client": "yes"},
        {"spam": {"address": "127.0.0.1:783"}},
        {"quarantine": {"dir": "/tmp"}},
        {"notify": {"method": "smtp:[127.0.0.1]:25"}},
        {"forward": {"method": "smtp:[127.0.0.1]:25"}},
        {"destiny": "reject"},
        {"destiny": {"spam": "later"}},
    ],
)
def test_bad_banks_are_config_errors(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        banks(B=table)


def test_a_listener_naming_an_unknown_bank_is_a_config_error() -> None:
    listen = [{"protocol": "smtp", "address": "127.0.0.1:10026", "policy_bank": "NOPE"}]
    with pytest.raises(ConfigError, match=r"there is no \[policy_bank\.NOPE\]"):
        config.from_mapping({"listen": listen})
