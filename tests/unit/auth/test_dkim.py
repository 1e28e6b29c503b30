"""DKIM verification of OpenDKIM's signatures against keys served by a real Knot DNS on loopback."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.auth.dkim import MAX_SIGNATURES, _b_prefixes, verify_dkim, verify_dkim_body
from qsift.auth.dns import Resolver
from qsift.auth.results import MethodResult
from qsift.auth.settings import DnsSettings
from qsift.spool import MessageSpool
from tests.dns_server import running_knot, silent_nameserver, txt_strings
from tests.unit.auth import opendkim
from tests.unit.auth.opendkim import OpenDkimKey

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: lunch\r\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Shall we  meet at noon?\r\n"
)


@dataclass(frozen=True)
class Keys:
    good: OpenDkimKey
    other: OpenDkimKey
    short: OpenDkimKey
    unpublished: OpenDkimKey
    revoked: OpenDkimKey
    broken: OpenDkimKey
    ed25519: OpenDkimKey
    twice: OpenDkimKey
    tlsrpt: OpenDkimKey
    sha1only: OpenDkimKey
    strict: OpenDkimKey
    directory: Path


@dataclass(frozen=True)
class World:
    keys: Keys
    address: str


def _renamed(key: OpenDkimKey, selector: str) -> OpenDkimKey:
    return OpenDkimKey(key.domain, selector, key.private_pem, key.record)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("dkim-keys")
    good = opendkim.genkey(directory / "good", "example.test", "s1")
    other = opendkim.genkey(directory / "other", "example.test", "s2")
    short = opendkim.genkey(directory / "short", "example.test", "short", bits=512)
    keys = Keys(
        good=good,
        other=other,
        short=short,
        unpublished=_renamed(good, "gone"),
        revoked=_renamed(good, "revoked"),
        broken=_renamed(good, "broken"),
        ed25519=_renamed(good, "ed"),
        twice=_renamed(good, "twice"),
        tlsrpt=_renamed(good, "tlsrpt"),
        sha1only=_renamed(good, "sha1only"),
        strict=_renamed(good, "strict"),
        directory=directory,
    )
    raw_ed25519 = base64.b64encode(bytes(32)).decode()
    zone = "\n".join(
        [
            f"s1._domainkey TXT {txt_strings(good.record)}",
            f"s2._domainkey TXT {txt_strings(other.record)}",
            f"short._domainkey TXT {txt_strings(short.record)}",
            'revoked._domainkey TXT "v=DKIM1; k=rsa; p="',
            'broken._domainkey TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"',
            f'ed._domainkey TXT "v=DKIM1; k=ed25519; p={raw_ed25519}"',
            # RFC 6376 §3.6.2.2: two records at one selector, only one of them the signer's key.
            f"twice._domainkey TXT {txt_strings(other.record)}",
            f"twice._domainkey TXT {txt_strings(good.record)}",
            f"tlsrpt._domainkey TXT {txt_strings(good.record + '; s=tlsrpt')}",
            f"sha1only._domainkey TXT {txt_strings(good.record.replace('h=sha256', 'h=sha1'))}",
            f"strict._domainkey TXT {txt_strings(good.record + '; t=y:s')}",
        ]
    )
    with running_knot({"example.test": zone}) as server:
        yield World(keys, server.address)


def verify(world: World, message: bytes) -> tuple[MethodResult, ...]:
    resolver = Resolver(DnsSettings(nameservers=(world.address,), timeout=2.0))
    return asyncio.run(verify_dkim(resolver, message))


def results(world: World, message: bytes) -> list[tuple[str, str]]:
    return [(result.result, result.reason) for result in verify(world, message)]


def test_opendkim_signature_passes_with_its_properties(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.good)
    (result,) = verify(world, signed)
    assert (result.method, result.result, result.reason) == ("dkim", "pass", "")
    properties = dict(result.properties)
    assert properties["header.d"] == "example.test"
    assert properties["header.s"] == "s1"
    b_value = b"".join(re.search(rb"\sb=([^;]*)\r\n\r\n", signed, re.S)[1].split()).decode()  # type: ignore[index]
    assert len(properties["header.b"]) == 8 and b_value.startswith(properties["header.b"])


def test_lf_line_ends_verify_too(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.good).replace(b"\r\n", b"\n")
    assert results(world, signed) == [("pass", "")]


def test_changed_body_fails(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.good).replace(b"noon", b"nine")
    assert results(world, signed) == [("fail", "body hash mismatch")]


def test_changed_header_fails(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.good).replace(b"Subject: lunch", b"Subject: dinner")
    assert results(world, signed) == [("fail", "signature does not verify")]


def test_missing_key_is_permerror(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.unpublished)
    assert results(world, signed) == [("permerror", "no key at gone._domainkey.example.test")]


def test_revoked_and_broken_keys_are_permerror(world: World) -> None:
    for key in (world.keys.revoked, world.keys.broken):
        ((result, reason),) = results(world, opendkim.sign(MESSAGE, key))
        assert result == "permerror" and reason.startswith("bad key:")


def test_key_of_another_type_is_permerror(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.ed25519)
    assert results(world, signed) == [("permerror", "key type ed25519 does not match a=rsa-sha256")]


def test_short_key_is_policy(world: World) -> None:
    # libopendkim refuses to sign with a key under 1024 bits (dkim_eom: DKIM_STAT_KEYTOOSMALL), so the
    # too-short key's signature is dkimpy's.
    key = world.keys.short
    signed = dkim.sign(MESSAGE, key.selector.encode(), key.domain.encode(), key.private_pem) + MESSAGE
    assert results(world, signed) == [("policy", "512-bit key is too short (RFC 8301)")]


def test_the_matching_one_of_two_key_records_passes(world: World) -> None:
    assert results(world, opendkim.sign(MESSAGE, world.keys.twice)) == [("pass", "")]


def test_dns_timeout_is_temperror() -> None:
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s1; h=from; bh=AAAA; b=AAAA\r\n" + MESSAGE
    with silent_nameserver() as address:
        resolver = Resolver(DnsSettings(nameservers=(address,), timeout=0.3))
        ((result),) = asyncio.run(verify_dkim(resolver, signed))
    assert result.result == "temperror" and result.reason.startswith("key lookup:")


def test_rsa_sha1_is_permerror(world: World) -> None:
    signed = opendkim.sign_sha1(MESSAGE, world.keys.good, world.keys.directory)
    assert b"a=rsa-sha1" in signed
    assert results(world, signed) == [("permerror", "rsa-sha1 is not accepted (RFC 8301)")]


def test_body_length_limit(world: World) -> None:
    body_length = len(MESSAGE.split(b"\r\n\r\n", 1)[1])
    whole = opendkim.sign(MESSAGE, world.keys.good, length=body_length)
    assert b"l=" in whole
    assert results(world, whole) == [("pass", "")]
    appended = opendkim.sign(MESSAGE, world.keys.good, length=body_length) + b"Click here!\r\n"
    ((result, reason),) = results(world, appended)
    assert (result, reason) == (
        "policy",
        f"body length limit l={body_length} leaves part of the body unsigned",
    )


def test_two_signatures_one_good_one_bad(world: World) -> None:
    signed = opendkim.sign(opendkim.sign(MESSAGE, world.keys.good), world.keys.unpublished)
    first, second = verify(world, signed)
    assert (first.result, second.result) == ("permerror", "pass")
    assert dict(first.properties)["header.s"] == "gone"
    assert dict(second.properties)["header.s"] == "s1"
    # Same key, same headers, different t=: the header.b prefixes still differ.
    assert dict(first.properties)["header.b"] != dict(second.properties)["header.b"]


def test_signatures_past_the_limit_are_counted_not_verified(world: World) -> None:
    signed = MESSAGE
    for _ in range(MAX_SIGNATURES + 2):
        signed = opendkim.sign(signed, world.keys.good)
    found = verify(world, signed)
    assert [r.result for r in found] == ["pass"] * MAX_SIGNATURES + ["policy"]
    assert found[-1].reason == f"2 more signatures not verified (limit {MAX_SIGNATURES})"
    assert found[-1].properties == ()


def test_signature_syntax_errors_are_permerror(world: World) -> None:
    broken_tags = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; d=again\r\n" + MESSAGE
    missing = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s1\r\n" + MESSAGE
    bad_length = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; s=s; h=from; bh=AAAA; b=AAAA; l=\r\n" + MESSAGE
    )
    ((result, reason),) = results(world, broken_tags)
    assert result == "permerror" and reason.startswith("signature tags do not parse")
    assert results(world, missing) == [("permerror", "missing b=")]
    assert results(world, bad_length) == [("permerror", "l= is not a number")]


def test_unsigned_message_is_none_and_broken_header_block_neutral(world: World) -> None:
    assert verify(world, MESSAGE) == (MethodResult("dkim", "none"),)
    ((result, reason),) = results(world, b"From: a@example.test\r\nnot a header line\r\n\r\nbody\r\n")
    assert result == "neutral" and reason.startswith("header block does not parse")


def spooled(data: bytes) -> MessageSpool:
    spool = MessageSpool(None, memory_limit=64)  # past 64 bytes it is on disk, as large mail is
    spool.write(data)
    return spool


def test_spooled_message_verifies_and_one_too_large_gets_policy(world: World) -> None:
    signed = opendkim.sign(MESSAGE, world.keys.good)
    resolver = Resolver(DnsSettings(nameservers=(world.address,), timeout=2.0))
    with spooled(signed) as body:
        (passed,) = asyncio.run(verify_dkim_body(resolver, body))
        (large,) = asyncio.run(verify_dkim_body(resolver, body, max_size=100))
    assert passed.result == "pass"
    assert large.result == "policy"
    assert large.reason == f"message of {len(signed)} bytes is over the verification limit of 100"
    assert large.properties == passed.properties
    with spooled(MESSAGE) as body:
        assert asyncio.run(verify_dkim_body(resolver, body, max_size=10)) == (MethodResult("dkim", "none"),)
    with spooled(b"From: a@example.test\r\nbroken\r\n\r\nbody\r\n") as body:
        ((broken),) = asyncio.run(verify_dkim_body(resolver, body, max_size=10))
    assert broken.result == "neutral"


def test_key_for_another_service_and_bad_canonicalization_are_permerror(world: World) -> None:
    ((result, reason),) = results(world, opendkim.sign(MESSAGE, world.keys.tlsrpt))
    assert (result, reason) == ("permerror", "Message is not tlsrpt and Service Type is tlsrpt")
    field = b"DKIM-Signature: v=1; a=rsa-sha256; c=odd; d=example.test; s=s1; h=from; bh=AAAA; b=AAAA\r\n"
    ((result, reason),) = results(world, field + MESSAGE)
    assert (result, reason) == ("permerror", "invalid c= value: odd")


def test_header_b_grows_until_unique() -> None:
    assert _b_prefixes([b"abcdefghij", b"abcdefghik", b"xyz"]) == ["abcdefghij", "abcdefghik", "xyz"]
    assert _b_prefixes([b"abcd efgh\r\n ijk", b"abcdefgh"]) == ["abcdefghi", "abcdefgh"]


def test_keys_are_looked_up_at_once() -> None:
    fields = b"".join(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s%d; h=from; bh=AAAA; b=AAAA\r\n" % n
        for n in range(3)
    )
    with silent_nameserver() as address:
        resolver = Resolver(DnsSettings(nameservers=(address,), timeout=1.0))
        started = time.monotonic()
        found = asyncio.run(verify_dkim(resolver, fields + MESSAGE))
        elapsed = time.monotonic() - started
    assert [r.result for r in found] == ["temperror"] * 3
    assert elapsed < 2.5  # one after the other they would take 3 s


tag_values = st.text(st.sampled_from("abs=;: \t\r\n-./+1@éAZ="), max_size=40)
tag_lists = st.lists(
    st.tuples(
        st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s", "t", "x", "z"]), tag_values
    ),
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(tag_lists, min_size=1, max_size=3))
def test_any_signature_field_gets_a_result(world: World, signatures: list[list[tuple[str, str]]]) -> None:
    fields = b"".join(
        b"DKIM-Signature: " + "; ".join(f"{k}={v}" for k, v in tags).encode().replace(b"\n", b"\n ") + b"\r\n"
        for tags in signatures
    )
    found = verify(world, fields + MESSAGE)
    assert found and all(r.result in ("neutral", "permerror", "temperror", "fail", "policy") for r in found)


def test_key_record_limits(world: World) -> None:
    assert "h=sha256" in world.keys.good.record
    assert results(world, opendkim.sign(MESSAGE, world.keys.sha1only)) == [
        ("permerror", "key allows only h=sha1")
    ]
    assert results(world, opendkim.sign(MESSAGE, world.keys.strict)) == [("pass", "")]
    subdomain = opendkim.sign(MESSAGE, world.keys.strict, identity="@mail.example.test")
    assert b"i=@mail.example.test" in subdomain
    assert results(world, subdomain) == [("permerror", "key with t=s does not cover a subdomain in i=")]
    assert results(world, opendkim.sign(MESSAGE, world.keys.good, identity="@mail.example.test")) == [
        ("pass", "")
    ]


def test_from_must_be_signed(world: World) -> None:
    field = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s1; h=to:subject; bh=AAAA; b=AAAA\r\n"
    assert results(world, field + MESSAGE) == [("permerror", "From is not signed")]
