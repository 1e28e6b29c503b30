"""ARC chains sealed by dkimpy's arc_sign (through sign_arc), validated against keys in a real knotd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.auth.arc import ArcKey, ArcValidation, sign_arc, validate_arc
from qsift.auth.dkim import verify_dkim
from qsift.auth.dns import Resolver
from qsift.auth.headers import render_authentication_results
from qsift.auth.results import MethodResult
from qsift.auth.settings import DnsSettings
from tests.dns_server import silent_nameserver
from tests.unit.auth import opendkim
from tests.unit.auth.arc_world import ArcWorld, arc_world

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: list@lists.forwarder.test\r\n"
    b"Subject: lunch\r\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)
FIRST_AR = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=example.test; arc=none"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcWorld]:
    """The first sealer (arc._domainkey.example.test) and the list that seals after it
    (seal._domainkey.forwarder.test)."""
    keys = {"first": ("example.test", "arc"), "second": ("forwarder.test", "seal")}
    with arc_world(tmp_path_factory.mktemp("arc-keys"), keys) as made:
        yield made


def validate(world: ArcWorld, message: bytes, remote_ip: str = "") -> ArcValidation:
    return asyncio.run(validate_arc(world.resolver(), message, remote_ip))


def sealed(message: bytes, authserv_id: str, field: bytes, key: ArcKey) -> bytes:
    return b"".join(sign_arc(message, authserv_id, field, key)) + message


def one_set(world: ArcWorld) -> bytes:
    return sealed(MESSAGE, "MX.example.test", FIRST_AR, world.keys["first"])


def two_sets(world: ArcWorld, message: bytes | None = None, arc: str = "pass") -> bytes:
    field = f"Authentication-Results: lists.forwarder.test; arc={arc}".encode()
    return sealed(message or one_set(world), "lists.forwarder.test", field, world.keys["second"])


def test_one_set_passes(world: ArcWorld) -> None:
    message = one_set(world)
    assert message.startswith(b"ARC-Seal: i=1;")
    assert b"ARC-Authentication-Results: i=1; mx.example.test;" in message
    found = validate(world, message, "192.0.2.1")
    assert found == ArcValidation(
        MethodResult("arc", "pass", "", (("header.oldest-pass", "0"), ("smtp.remote-ip", "192.0.2.1"))),
        cv="pass",
        sealer="example.test",
    )


def test_two_sets_pass_and_name_the_newest_sealer(world: ArcWorld) -> None:
    message = two_sets(world)
    assert b"cv=pass" in message.split(b"ARC-Message-Signature")[0]
    found = validate(world, message)
    assert (found.result.result, found.cv, found.sealer) == ("pass", "pass", "forwarder.test")
    assert found.result.properties == (("header.oldest-pass", "0"),)


def test_a_list_that_edits_the_subject_keeps_a_passing_chain_with_oldest_pass(world: ArcWorld) -> None:
    edited = one_set(world).replace(b"Subject: lunch", b"Subject: [list] lunch")
    found = validate(world, two_sets(world, edited))
    assert found.result.result == "pass"
    assert found.result.properties == (("header.oldest-pass", "2"),)


def test_changed_body_after_the_newest_seal_fails(world: ArcWorld) -> None:
    found = validate(world, two_sets(world).replace(b"noon", b"nine"))
    assert (found.result.result, found.cv) == ("fail", "fail")
    assert found.result.reason == "Most recent ARC-Message-Signature did not validate"
    assert found.sealer == "forwarder.test" and not found.temporary


def flip_first_seal(message: bytes) -> bytes:
    signature = message.index(b" b=", message.index(b"ARC-Seal: i=1;")) + 3
    flipped = b"A" if message[signature : signature + 1] != b"A" else b"B"
    return message[:signature] + flipped + message[signature + 1 :]


def test_tampered_first_seal_fails(world: ArcWorld) -> None:
    found = validate(world, flip_first_seal(one_set(world)))
    assert (found.result.result, found.result.reason) == ("fail", "ARC-Seal[1] did not validate")
    # AS(2) covers AS(1): the newest seal is the first to break.
    found = validate(world, flip_first_seal(two_sets(world)))
    assert (found.result.result, found.result.reason) == ("fail", "ARC-Seal[2] did not validate")


def test_a_chain_sealed_as_failed_stays_failed(world: ArcWorld) -> None:
    found = validate(world, two_sets(world, arc="fail"))
    assert (found.result.result, found.cv) == ("fail", "fail")
    assert found.result.reason.startswith("ARC-Seal[2] reported failure")


def test_no_chain_is_none(world: ArcWorld) -> None:
    assert validate(world, MESSAGE) == ArcValidation(MethodResult("arc", "none"), "none")
    assert sign_arc(MESSAGE, "other.test", FIRST_AR, world.keys["first"]) == []
    no_instance = b"ARC-Seal: cv=none; d=example.test; s=arc; b=AAAA\r\n" + MESSAGE
    assert validate(world, no_instance) == ArcValidation(MethodResult("arc", "none"), "none")


def test_incomplete_and_overlong_chains_fail(world: ArcWorld) -> None:
    lone_seal = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test; s=arc; b=AAAA\r\n" + MESSAGE
    found = validate(world, lone_seal)
    assert (found.result.result, found.result.reason) == ("fail", "Incomplete ARC set for instance 1")
    overlong = b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=example.test; s=arc; b=AAAA\r\n" + MESSAGE
    found = validate(world, overlong)
    assert (found.result.result, found.result.reason) == ("fail", "more than 50 ARC sets")
    assert found.sealer == "example.test"
    crowd = b"".join(b"ARC-Seal: i=1; cv=none; d=d%d.test; s=s; b=AAAA\r\n" % n for n in range(151))
    assert validate(world, crowd + MESSAGE).result.reason == "more than 50 ARC sets"
    garbled = b"ARC-Seal: i=1; ;; =\r\nARC-Message-Signature: i=x\r\n" + MESSAGE
    assert validate(world, garbled).result.result == "fail"


def test_unparseable_header_block(world: ArcWorld) -> None:
    broken = b"broken line\r\n" + one_set(world)
    assert validate(world, broken).result.result == "fail"
    assert validate(world, b"broken line\r\n" + MESSAGE).result.result == "none"


def test_dns_timeout_fails_as_temporary(world: ArcWorld) -> None:
    message = one_set(world)
    with silent_nameserver() as address:
        resolver = Resolver(DnsSettings(nameservers=(address,), timeout=0.3))
        found = asyncio.run(validate_arc(resolver, message))
    assert (found.result.result, found.cv, found.temporary) == ("fail", "fail", True)
    assert found.result.reason.startswith("key lookup:")


def test_qsift_checks_then_seals_and_the_next_hop_validates(world: ArcWorld) -> None:
    """The forwarding flow: verify DKIM, validate ARC, write our A-R, seal with it as the AAR."""
    resolver = world.resolver()
    first = world.keys["first"]
    author_key = opendkim.OpenDkimKey(first.domain, first.selector, first.private_key, "")
    inbound = sealed(opendkim.sign(MESSAGE, author_key), "mx.example.test", FIRST_AR, first)
    dkim_results = asyncio.run(verify_dkim(resolver, inbound))
    arc = asyncio.run(validate_arc(resolver, inbound))
    assert arc.cv == "pass"
    field = render_authentication_results("lists.forwarder.test", (*dkim_results, arc.result))
    arc_set = sign_arc(inbound, "lists.forwarder.test", field, world.keys["second"])
    assert [line.split(b":")[0] for line in arc_set] == [
        b"ARC-Seal",
        b"ARC-Message-Signature",
        b"ARC-Authentication-Results",
    ]
    assert b"cv=pass" in arc_set[0]
    b_prefix = dict(dkim_results[0].properties)["header.b"]
    assert b"dkim=pass header.d=example.test header.s=arc header.b=" in arc_set[2]
    assert b_prefix.encode() in arc_set[2] and b"arc=pass header.oldest-pass=0" in arc_set[2]
    onward = b"".join(arc_set) + field + inbound
    found = validate(world, onward)
    assert (found.result.result, found.sealer) == ("pass", "forwarder.test")


arc_names = st.sampled_from(["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"])
arc_tags = st.lists(
    st.tuples(
        st.sampled_from(["i", "a", "b", "bh", "cv", "d", "h", "s", "t"]),
        st.text(st.sampled_from("12 arc;=:example.test-x\t"), max_size=20),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(arc_names, arc_tags), min_size=1, max_size=4))
def test_any_arc_fields_get_a_result(
    world: ArcWorld, fields: list[tuple[str, list[tuple[str, str]]]]
) -> None:
    head = "".join(f"{name}: " + "; ".join(f"{k}={v}" for k, v in tags) + "\r\n" for name, tags in fields)
    found = validate(world, head.encode() + MESSAGE)
    assert found.result.result in ("fail", "none") and found.cv == found.result.result
