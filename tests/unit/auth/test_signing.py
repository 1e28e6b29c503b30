"""DKIM signing: which key signs, which fields are signed and oversigned, and that dkimpy verifies the result
in every line-end form the forward methods send."""

from __future__ import annotations

import base64
import email.utils
import re

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift import config
from qsift.auth.dkim_keys import PrivateKey, parse_private_key
from qsift.auth.signing import (
    PLAIN_FROM,
    DkimSigner,
    SigningKey,
    author_domain,
    header_names,
    load_signing_keys,
)
from qsift.errors import ConfigError
from tests.unit.auth.rfc8463 import RFC8463_ED25519_SEED, RFC8463_RSA
from tests.unit.auth.test_dkim_keys import ed25519_pem

RSA = parse_private_key(RFC8463_RSA)
ED = parse_private_key(ed25519_pem(base64.b64decode(RFC8463_ED25519_SEED)))
OTHER_ED = parse_private_key(ed25519_pem(bytes(range(32))))
MESSAGE = (
    b"Received: from client by mx\n"
    b"From: Joe SixPack <joe@football.example.com>\n"
    b"To: Suzie Q <suzie@shopping.example.net>\n"
    b"Subject: Is dinner ready?\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\n"
    b"List-Unsubscribe: <https://football.example.com/u/1>\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    b"X-Spam-Status: No\n"
    b"\n"
    b"Hi.\n\nWe lost the game.  Are you hungry yet?\n\nJoe.\n"
)


def key(domain: str, selector: str, private: PrivateKey) -> SigningKey:
    return SigningKey(domain, selector, private, f"/keys/{selector}.pem")


def records(*keys: SigningKey) -> dict[bytes, bytes]:
    return {f"{k.selector}._domainkey.{k.domain}.".encode(): k.key.record.encode() for k in keys}


def verified(message: bytes, published: dict[bytes, bytes]) -> list[bool]:
    """Each signature's verdict, by dkimpy, in the message's transport (CRLF) form."""
    wire = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    verifier = dkim.DKIM(wire, minkey=1024)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return published.get(name)

    return [bool(verifier.verify(index, dnsfunc=lookup)) for index in range(count)]


def tags(field: bytes) -> dict[bytes, bytes]:
    value = field.split(b":", 1)[1]
    return {k: b"".join(v.split()) for k, v in dkim.util.parse_tag_value(value).items()}


def test_rsa_and_ed25519_signatures_both_verify_rsa_on_top() -> None:
    keys = (key("football.example.com", "brisbane", ED), key("football.example.com", "test", RSA))
    signed = DkimSigner(keys).sign(MESSAGE)
    assert signed.made == (
        "d=football.example.com s=test a=rsa-sha256",
        "d=football.example.com s=brisbane a=ed25519-sha256",
    )
    fields = [f for f in re.split(rb"\n(?=\S)", signed.fields) if f.strip()]
    assert [tags(f)[b"a"] for f in fields] == [b"rsa-sha256", b"ed25519-sha256"]
    assert verified(signed.fields + MESSAGE, records(*keys)) == [True, True]


def test_the_signature_tags() -> None:
    signed = DkimSigner((key("football.example.com", "test", RSA),)).sign(MESSAGE)
    found = tags(signed.fields)
    assert found[b"c"] == b"relaxed/simple"
    assert found[b"d"] == b"football.example.com"
    assert found[b"s"] == b"test"
    assert b"l" not in found  # never a body length limit (RFC 6376 8.2)
    assert b"t" in found
    assert found[b"a"] != b"rsa-sha1"
    names = found[b"h"].split(b":")
    assert names.count(b"from") == 2  # oversigned
    assert names.count(b"subject") == 2
    assert names.count(b"list-unsubscribe") == 2
    assert names.count(b"list-unsubscribe-post") == 2
    assert b"received" not in names
    assert b"x-spam-status" not in names


def test_header_names_sign_each_instance_and_oversign() -> None:
    headers = [[b"From", b""], [b"Received", b""], [b"Received", b""], [b"References", b""], [b"Sender", b""]]
    names = [n.decode() for n in header_names(headers)]
    assert names[:2] == ["from", "references"]
    assert sorted(names[2:]) == sorted(["from", "subject", "date", "reply-to", "to", "cc", "content-type"])
    assert "list-unsubscribe" not in names  # a list adding its own must not break our signature


@pytest.mark.parametrize(
    ("text", "at"),
    [
        (b"jack-o <JOE@Football.Example.COM.>", "football.example.com"),
        (b"a@x.test, b@x.test", "x.test"),
        (b"=?utf-8?q?J=C3=B6e?= <joe@x.test>", "x.test"),
    ],
)
def test_author_domain(text: bytes, at: str) -> None:
    assert author_domain([[b"From", b" " + text + b"\r\n"]]) == (at, "")


@settings(max_examples=300)
@given(st.from_regex(PLAIN_FROM, fullmatch=True) | st.binary(max_size=40))
def test_plain_from_values_are_read_as_the_full_parser_reads_them(value: bytes) -> None:
    found = author_domain([[b"From", value]])
    text = value.decode("utf-8", "replace")
    addresses = [address for _, address in email.utils.getaddresses([text]) if "@" in address]
    domains = {address.rpartition("@")[2].strip().rstrip(".").lower() for address in addresses} - {""}
    assert found[0] == (domains.pop() if len(domains) == 1 else None)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([[b"To", b" a@x.test"]], "no From: field"),
        ([[b"From", b" a@x.test"], [b"from", b" b@x.test"]], "2 From: fields"),
        ([[b"From", b" undisclosed"]], "From: has no address"),
        ([[b"From", b" a@x.test, b@y.test"]], "From: has addresses in several domains"),
    ],
)
def test_mail_that_cannot_be_signed_says_why(headers: list[list[bytes]], why: str) -> None:
    assert author_domain(headers) == (None, why)


def test_unsigned_mail_says_why() -> None:
    signer = DkimSigner((key("example.org", "s1", RSA),))
    assert signer.sign(MESSAGE).reason == "no DKIM key for football.example.com or a parent domain"
    assert signer.sign(b"To: a@b\n\nhi\n").reason == "no From: field"
    assert signer.sign(b"From: a@example.org\nFrom: b@example.org\n\nhi\n").fields == b""
    assert "cannot be read" in signer.sign(b"From: a@example.org\n\x01bad line\n\nhi\n").reason


def test_a_parent_domain_key_signs_the_nearest_wins() -> None:
    parent, child = key("example.com", "p", RSA), key("football.example.com", "c", ED)
    signer = DkimSigner((parent, child))
    assert signer.keys_for("news.example.com") == [parent]
    assert signer.keys_for("a.football.example.com") == [child]
    assert signer.keys_for("example.org") == []
    assert signer.keys_for("xample.com") == []


def test_the_first_key_of_each_type_signs_the_others_wait() -> None:
    old, new = key("x.test", "new", OTHER_ED), key("x.test", "old", ED)
    assert DkimSigner((old, new)).keys_for("x.test") == [old]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_signed_in_the_message_own_line_ends(ending: bytes) -> None:
    message = MESSAGE.replace(b"\n", ending) + b"trailing  white space \t" + ending + ending + ending
    ours = key("football.example.com", "test", RSA)
    signed = DkimSigner((ours,)).sign(message)
    assert signed.fields.endswith(ending)
    assert (b"\r\n" in signed.fields) == (ending == b"\r\n")
    assert verified(signed.fields + message, records(ours)) == [True]


def test_bare_cr_counts_as_a_line_end_as_the_forward_sends_it() -> None:
    message = MESSAGE + b"one\rtwo\n"
    ours = key("football.example.com", "test", RSA)
    signed = DkimSigner((ours,)).sign(message)
    assert verified(signed.fields + message, records(ours)) == [True]


def test_a_changed_subject_or_a_second_from_breaks_it() -> None:
    ours = key("football.example.com", "test", RSA)
    signed = DkimSigner((ours,)).sign(MESSAGE)
    changed = signed.fields + MESSAGE.replace(b"dinner", b"lunch")
    assert verified(changed, records(ours)) == [False]
    added = signed.fields + b"From: Eve <eve@football.example.com>\n" + MESSAGE
    assert verified(added, records(ours)) == [False]


def test_keys_are_loaded_with_a_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    good = tmp_path / "good.pem"
    good.write_bytes(RFC8463_RSA)
    (tmp_path / "public.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")

    def settings(path: Path) -> config.Config:
        entry = {"domain": "x.test", "selector": "s1", "key_file": str(path)}
        return config.from_mapping({"dkim": {"keys": [entry]}})

    (loaded,) = load_signing_keys(settings(good).dkim)
    assert (loaded.domain, loaded.selector, loaded.key) == ("x.test", "s1", RSA)
    with pytest.raises(ConfigError, match=r"cannot read the DKIM key .*missing.pem \(s1._domainkey.x.test\)"):
        load_signing_keys(settings(tmp_path / "missing.pem").dkim)
    with pytest.raises(ConfigError, match=r"public.pem .*holds a PUBLIC KEY, not an unencrypted private key"):
        load_signing_keys(settings(tmp_path / "public.pem").dkim)


def test_configuration_names_keys_once_and_banks_turn_signing_off() -> None:
    entry = {"domain": "X.test.", "selector": "s1", "key_file": "/k.pem"}
    with pytest.raises(ConfigError, match=r"s1 for x.test is \[\[dkim.keys\]\] #1's too"):
        config.from_mapping({"dkim": {"keys": [entry, entry]}})
    with pytest.raises(ConfigError, match="not a domain name"):
        config.from_mapping({"dkim": {"keys": [{**entry, "domain": "a b"}]}})
    built = config.from_mapping(
        {"dkim": {"keys": [entry]}, "policy_bank": {"QUIET": {"dkim": {"sign": False}}}}
    )
    assert built.dkim.keys[0].domain == "x.test"
    policies = built.policies
    assert policies.policy(("ORIGINATING",)).dkim.sign
    assert policies.policy(("ORIGINATING",)).originating
    assert not policies.policy(("ORIGINATING", "QUIET")).dkim.sign
    assert not config.from_mapping({"dkim": {"sign": False}}).policies.base.dkim.sign
