"""RFC 8463 Appendix A: the Ed25519 and RSA signatures of its example message, keys served by knotd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from qsift.auth.dkim import verify_dkim
from qsift.auth.dns import Resolver
from qsift.auth.settings import DnsSettings
from tests.dns_server import running_knot

ZONE = """\
brisbane._domainkey TXT "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
test._domainkey TXT ( "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
 "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
 "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
 "Ip3G+2kryOTIKT+l/K4w3QIDAQAB" )
"""

MESSAGE = b"""\
DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
""".replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with running_knot({"football.example.com": ZONE}) as server:
        yield server.address


def verify(address: str, message: bytes) -> list[tuple[str, str, str]]:
    resolver = Resolver(DnsSettings(nameservers=(address,), timeout=2.0))
    found = asyncio.run(verify_dkim(resolver, message))
    return [(r.result, r.reason, dict(r.properties)["header.s"]) for r in found]


def test_both_signatures_pass(address: str) -> None:
    assert verify(address, MESSAGE) == [("pass", "", "brisbane"), ("pass", "", "test")]


def test_changed_body_and_header_fail_both(address: str) -> None:
    body = MESSAGE.replace(b"hungry", b"thirsty")
    assert verify(address, body) == [
        ("fail", "body hash mismatch", "brisbane"),
        ("fail", "body hash mismatch", "test"),
    ]
    header = MESSAGE.replace(b"Is dinner ready?", b"Is lunch ready?")
    assert [result for result, _, _ in verify(address, header)] == ["fail", "fail"]


def test_relaxed_body_ignores_collapsed_spaces(address: str) -> None:
    single_space = MESSAGE.replace(b"game.  Are", b"game. Are")
    assert [result for result, _, _ in verify(address, single_space)] == ["pass", "pass"]
