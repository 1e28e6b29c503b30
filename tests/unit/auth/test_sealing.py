"""ARC sealing of passed-on mail: the `[arc]` key read and refused, the set made over the copy as it leaves
(carrying qsift's own Authentication-Results), validated against the keys in a real knotd, and no seal
where the checks cannot vouch for the chain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsift import config
from qsift.auth.arc import ArcValidation, sign_arc, validate_arc
from qsift.auth.headers import render_authentication_results
from qsift.auth.results import AuthResults, MethodResult
from qsift.auth.sealing import load_arc_key, seal
from qsift.auth.settings import ArcSettings
from qsift.errors import ConfigError
from tests.unit.auth.arc_world import ArcWorld, arc_world, ed25519_key

MESSAGE = (
    b"From: Alice <alice@example.test>\n"
    b"To: list@lists.forwarder.test\n"
    b"Subject: lunch\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\n"
    b"Message-ID: <1@example.test>\n"
    b"\n"
    b"Shall we meet at noon?\n"
)
DKIM_PASS = MethodResult("dkim", "pass", "", (("header.d", "example.test"),))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcWorld]:
    """The sender side's earlier hop, which sealed i=1 (up._domainkey.example.test), and qsift's sealing
    key (seal._domainkey.forwarder.test)."""
    keys = {"upstream": ("example.test", "up"), "ours": ("forwarder.test", "seal")}
    with arc_world(tmp_path_factory.mktemp("arc-seal"), keys) as made:
        yield made


def validate(world: ArcWorld, message: bytes) -> ArcValidation:
    return asyncio.run(
        validate_arc(world.resolver(), message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    )


def checked(arc: ArcValidation, temporary: bool = False) -> AuthResults:
    """What qsift's checks came to, as MailAuthentication.results would say it."""
    cv = "" if temporary else arc.cv
    return AuthResults(dkim=(DKIM_PASS,), arc=arc.result, authserv_id="qsift.test", arc_cv=cv)


def as_forwarded(auth: AuthResults, message: bytes) -> bytes:
    """The copy as the pipeline forwards it: qsift's field on top, LF line ends (qmail's)."""
    return render_authentication_results(auth.authserv_id, auth.all, linesep=b"\n") + message


def test_mail_without_a_chain_gets_i1_cv_none_that_validates(world: ArcWorld) -> None:
    auth = checked(validate(world, MESSAGE))
    copy = as_forwarded(auth, MESSAGE)
    sealed = seal(world.keys["ours"], copy, auth)
    assert sealed.reason == ""
    assert sealed.fields.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.test; s=seal;")
    assert b"\r" not in sealed.fields  # the copy's own line ends
    names = [line.split(b":")[0] for line in sealed.fields.split(b"\n") if line[:1].isalpha()]
    assert names == [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    assert b"ARC-Authentication-Results: i=1; qsift.test;" in sealed.fields
    assert b"dkim=pass header.d=example.test" in sealed.fields and b"arc=none" in sealed.fields
    found = validate(world, sealed.fields + copy)
    assert (found.result.result, found.cv, found.sealer) == ("pass", "pass", "forwarder.test")


def test_mail_with_a_valid_chain_gets_i2_cv_pass(world: ArcWorld) -> None:
    upstream_field = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=example.test"
    arrived = b"".join(sign_arc(MESSAGE, "mx.example.test", upstream_field, world.keys["upstream"])) + MESSAGE
    auth = checked(validate(world, arrived))
    assert auth.arc_cv == "pass"
    copy = as_forwarded(auth, arrived)
    sealed = seal(world.keys["ours"], copy, auth)
    assert sealed.fields.startswith(b"ARC-Seal: i=2; cv=pass;")
    found = validate(world, sealed.fields + copy)
    assert (found.result.result, found.sealer) == ("pass", "forwarder.test")


def test_a_chain_that_failed_only_on_dns_is_not_sealed_with_cv_fail(world: ArcWorld) -> None:
    failed = ArcValidation(MethodResult("arc", "fail", "key lookup: timeout"), "fail", "x.test", True)
    auth = checked(failed, temporary=True)
    sealed = seal(world.keys["ours"], as_forwarded(auth, MESSAGE), auth)
    assert sealed.fields == b""
    assert "failed for now (key lookup: timeout)" in sealed.reason


def test_a_chain_that_failed_is_sealed_with_cv_fail(world: ArcWorld) -> None:
    failed = ArcValidation(MethodResult("arc", "fail", "ARC-Seal[1] did not validate"), "fail", "x.test")
    auth = checked(failed)
    copy = as_forwarded(auth, b"ARC-Seal: i=1; cv=none; d=x.test; s=a; b=AAAA\n" + MESSAGE)
    assert seal(world.keys["ours"], copy, auth).fields.startswith(b"ARC-Seal: i=2; cv=fail;")


def test_nothing_to_carry_nothing_sealed(world: ArcWorld) -> None:
    assert "did not run" in seal(world.keys["ours"], MESSAGE, AuthResults()).reason
    too_large = AuthResults(dkim=(DKIM_PASS,), authserv_id="qsift.test")
    assert "not validated" in seal(world.keys["ours"], as_forwarded(too_large, MESSAGE), too_large).reason


def settings(key_file: Path | str) -> ArcSettings:
    return ArcSettings(domain="forwarder.test", selector="seal", key_file=str(key_file))


def test_the_key_is_read_and_an_unusable_one_refused(world: ArcWorld, tmp_path: Path) -> None:
    assert load_arc_key(ArcSettings()) is None
    key = load_arc_key(settings(world.paths["ours"]))
    assert key is not None and (key.domain, key.selector) == ("forwarder.test", "seal")
    with pytest.raises(ConfigError, match="Ed25519 key: ARC seals are rsa-sha256"):
        load_arc_key(settings(ed25519_key(tmp_path / "ed.pem")))
    with pytest.raises(ConfigError, match=r"cannot read the ARC key .*missing\.pem"):
        load_arc_key(settings(tmp_path / "missing.pem"))
    (tmp_path / "text.pem").write_text("hello\n")
    with pytest.raises(ConfigError, match=r"the ARC key .*text\.pem .*no PEM block"):
        load_arc_key(settings(tmp_path / "text.pem"))


def test_a_key_needs_its_domain_and_selector() -> None:
    with pytest.raises(ConfigError, match=r"\[arc\] selector unset: a sealing key needs domain, selector"):
        load_arc_key(ArcSettings(domain="forwarder.test", key_file="/k.pem"))
    with pytest.raises(ConfigError, match=r"\[arc\] domain and key_file unset"):
        load_arc_key(ArcSettings(selector="seal"))
    with pytest.raises(ConfigError, match=r"\[arc\] domain: not a domain name"):
        config.from_mapping({"arc": {"domain": "-x-"}})


def test_a_bank_turns_sealing_on() -> None:
    built = config.from_mapping(
        {
            "arc": {"domain": "forwarder.test", "selector": "seal", "key_file": "/k.pem"},
            "policy_bank": {"LISTS": {"arc": {"seal": True}}},
        }
    )
    assert not built.policies.policy(()).arc.seal
    assert built.policies.policy(("LISTS",)).arc.seal
