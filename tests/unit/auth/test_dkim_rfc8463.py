"""RFC 8463 Appendix A: the Ed25519 and RSA signatures of its example message, keys served by knotd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from qsift.auth.dkim import verify_dkim
from qsift.auth.dns import Resolver
from qsift.auth.settings import DnsSettings
from tests.dns_server import running_knot
from tests.unit.auth.rfc8463 import RFC8463_MESSAGE, RFC8463_ZONE


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with running_knot({"football.example.com": RFC8463_ZONE}) as server:
        yield server.address


def verify(address: str, message: bytes) -> list[tuple[str, str, str]]:
    resolver = Resolver(DnsSettings(nameservers=(address,), timeout=2.0))
    found = asyncio.run(verify_dkim(resolver, message))
    return [(r.result, r.reason, dict(r.properties)["header.s"]) for r in found]


def test_both_signatures_pass(address: str) -> None:
    assert verify(address, RFC8463_MESSAGE) == [("pass", "", "brisbane"), ("pass", "", "test")]


def test_changed_body_and_header_fail_both(address: str) -> None:
    body = RFC8463_MESSAGE.replace(b"hungry", b"thirsty")
    assert verify(address, body) == [
        ("fail", "body hash mismatch", "brisbane"),
        ("fail", "body hash mismatch", "test"),
    ]
    header = RFC8463_MESSAGE.replace(b"Is dinner ready?", b"Is lunch ready?")
    assert [result for result, _, _ in verify(address, header)] == ["fail", "fail"]


def test_relaxed_body_ignores_collapsed_spaces(address: str) -> None:
    single_space = RFC8463_MESSAGE.replace(b"game.  Are", b"game. Are")
    assert [result for result, _, _ in verify(address, single_space)] == ["pass", "pass"]
