"""The inbound checks together (checks/authentication.py) against a real Knot DNS: what DMARC makes of a
message, which SMTP client SPF judges, and a trusted forwarder's ARC chain lifting a DMARC failure."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from qsift.auth.arc import ArcKey, sign_arc
from qsift.auth.dns import Resolver
from qsift.auth.results import AuthResults, DmarcVerdict, MethodResult
from qsift.auth.settings import AuthSettings, DnsSettings
from qsift.checks.auth_verdict import DMARC_QUARANTINE, Client, findings
from qsift.checks.authentication import LARGE, MailAuthentication
from qsift.model import Category
from tests.dns_server import running_knot, silent_nameserver, txt_strings
from tests.unit.auth import opendkim

FORGED = (
    b"From: ceo@strict.test\r\nTo: bob@example.net\r\nSubject: pay this\r\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1@strict.test>\r\n\r\nNow.\r\n"
)


@dataclass(frozen=True)
class World:
    address: str
    sealer: ArcKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    key = opendkim.genkey(tmp_path_factory.mktemp("arc") / "k", "lists.example", "seal")
    zones = {
        "strict.test": '_dmarc TXT "v=DMARC1; p=reject"\n@ TXT "v=spf1 ip4:192.0.2.0/24 -all"\n',
        "lists.example": f"seal._domainkey TXT {txt_strings(key.record)}\n",
    }
    with running_knot(zones) as server:
        yield World(server.address, ArcKey(key.domain, key.selector, key.private_pem))


def check(world: World, message: bytes, client: Client, trusted: tuple[str, ...] = ()) -> AuthResults:
    resolver = Resolver(DnsSettings(nameservers=(world.address,), timeout=2.0))
    checks = MailAuthentication(resolver, AuthSettings(arc_trusted_sealers=trusted), "mx.test")
    return asyncio.run(checks.results(lambda: io.BytesIO(message), len(message), client))


def test_spf_judges_the_client_and_dmarc_aligns_it(world: World) -> None:
    found = check(world, FORGED, Client("192.0.2.7", "mx.strict.test", "billing@strict.test"))
    assert found.summary() == "dkim=none spf=pass dmarc=pass arc=none"
    assert found.verdict == DmarcVerdict("none", "strict.test")
    assert findings(found) == ()


def test_a_forgery_of_a_p_reject_domain_is_the_dmarc_category(world: World) -> None:
    found = check(world, FORGED, Client("203.0.113.9", "", "billing@strict.test"))
    assert found.summary() == "dkim=none spf=fail dmarc=fail arc=none"
    [finding] = findings(found)
    assert finding.category is Category.DMARC and finding.detail.startswith("strict.test p=reject (")


def test_without_a_client_address_there_is_no_spf(world: World) -> None:
    found = check(world, FORGED, Client("", "", "billing@strict.test"))
    assert found.spf is None and found.summary() == "dkim=none dmarc=fail arc=none"


def test_a_trusted_sealers_chain_lifts_the_dmarc_failure(world: World) -> None:
    field = b"Authentication-Results: lists.example; dmarc=pass header.from=strict.test; arc=none"
    sealed = b"".join(sign_arc(FORGED, "lists.example", field, world.sealer)) + FORGED
    stranger = Client("198.51.100.1", "", "owner@lists.example")
    held = check(world, sealed, stranger)
    assert held.arc is not None and held.arc.result == "pass" and held.verdict.disposition == "reject"
    lifted = check(world, sealed, stranger, trusted=("lists.example",))
    assert lifted.verdict == DmarcVerdict("none", "strict.test") and findings(lifted) == ()
    assert lifted.dmarc is not None and lifted.dmarc.result == "fail"
    assert "ARC sealed by lists.example (trusted)" in lifted.dmarc.reason


def test_the_cv_of_our_seal_is_the_chain_found_but_none_for_a_dns_failure(world: World) -> None:
    field = b"Authentication-Results: lists.example; arc=none"
    sealed = b"".join(sign_arc(FORGED, "lists.example", field, world.sealer)) + FORGED
    client = Client("", "", "owner@lists.example")
    assert check(world, FORGED, client).arc_cv == "none"
    assert check(world, sealed, client).arc_cv == "pass"
    assert check(world, sealed.replace(b"Now.", b"Later."), client).arc_cv == "fail"
    with silent_nameserver() as address:
        resolver = Resolver(DnsSettings(nameservers=(address,), timeout=0.3))
        checks = MailAuthentication(resolver, AuthSettings(), "mx.test")
        found = asyncio.run(checks.results(lambda: io.BytesIO(sealed), len(sealed), client))
    assert found.arc is not None and found.arc.result == "fail" and found.arc_cv == ""


def test_p_quarantine_is_a_spammy_finding_of_its_own() -> None:
    results = AuthResults(
        dmarc=MethodResult("dmarc", "fail"), verdict=DmarcVerdict("quarantine", "lenient.test")
    )
    [finding] = findings(results)
    assert (finding.category, finding.minor) == (Category.SPAMMY, DMARC_QUARANTINE)


def test_large_messages_are_checked_one_at_a_time_and_small_ones_side_by_side(world: World) -> None:
    """A large message is held whole in memory while it is verified: two at once would double that."""
    reading = 0
    most = {"large": 0, "small": 0}

    class Counted(io.BytesIO):
        """A reader that counts the readers open at once, and holds each open a moment."""

        def __init__(self, data: bytes, kind: str) -> None:
            super().__init__(data)
            self.kind = kind

        def __enter__(self) -> Counted:
            nonlocal reading
            reading += 1
            most[self.kind] = max(most[self.kind], reading)
            time.sleep(0.05)
            return self

        def __exit__(self, *exc: object) -> None:
            nonlocal reading
            reading -= 1

    resolver = Resolver(DnsSettings(nameservers=(world.address,), timeout=2.0))
    checks = MailAuthentication(resolver, AuthSettings(), "mx.test")
    client = Client("", "", "billing@strict.test")

    async def four(kind: str, size: int) -> None:
        message = FORGED + b"x" * (size - len(FORGED))
        await asyncio.gather(
            *(checks.results(lambda: Counted(message, kind), len(message), client) for _ in range(4))
        )

    asyncio.run(four("large", LARGE + 1))
    asyncio.run(four("small", LARGE))
    assert most == {"large": 1, "small": 4}
