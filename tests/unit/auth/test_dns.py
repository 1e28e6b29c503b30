"""The DNS client against a real Knot DNS on loopback: answers, long TXT records, negative answers, the
cache, and a timeout as a temporary error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from qsift import config
from qsift.auth.dns import DnsTemporaryError, Resolver
from qsift.auth.settings import DnsSettings
from qsift.errors import ConfigError
from tests.dns_server import DnsServer, running_knot, silent_nameserver, txt_strings

LONG = "v=DKIM1; k=rsa; p=" + "A" * 392
ZONE = f"""\
@ TXT "v=spf1 ip4:192.0.2.0/24 -all"
@ MX 20 backup.example.test.
@ MX 10 mail.example.test.
mail A 192.0.2.10
mail AAAA 2001:db8::10
s2048._domainkey TXT {txt_strings(LONG)}
two TXT "first" "second"
two TXT "other"
"""


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with running_knot({"example.test": ZONE}) as running:
        yield running


def resolver(server: DnsServer, clock: object = time.monotonic) -> Resolver:
    return Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0), clock=clock)  # type: ignore[arg-type]


def test_answers_of_each_kind(server: DnsServer) -> None:
    ask = resolver(server)

    async def main() -> None:
        assert await ask.txt("example.test") == ("v=spf1 ip4:192.0.2.0/24 -all",)
        assert await ask.txt("s2048._domainkey.example.test.") == (LONG,)  # 255 + 155 octets, joined
        assert sorted(await ask.txt("two.example.test")) == ["firstsecond", "other"]
        assert await ask.mx("example.test") == ("mail.example.test", "backup.example.test")
        assert await ask.addresses("mail.example.test", 4) == ("192.0.2.10",)
        assert await ask.addresses("mail.example.test", 6) == ("2001:db8::10",)
        assert await ask.txt("nosuch.example.test") == ()  # NXDOMAIN
        assert await ask.txt("mail.example.test") == ()  # the name exists, no TXT

    asyncio.run(main())


def test_answers_are_kept_for_their_ttl(server: DnsServer) -> None:
    now = [1000.0]
    ask = resolver(server, clock=lambda: now[0])
    calls: list[tuple[str, str]] = []
    real = ask._resolve

    async def counted(name: str, kind: str) -> tuple[tuple[str, ...], float]:
        calls.append((name, kind))
        return await real(name, kind)

    ask._resolve = counted  # type: ignore[method-assign]

    async def main() -> None:
        await ask.txt("example.test")
        await ask.txt("EXAMPLE.test.")
        assert len(calls) == 1
        now[0] += 301  # the zone's TTL is 300
        await ask.txt("example.test")
        assert len(calls) == 2

    asyncio.run(main())


def test_a_silent_resolver_is_a_temporary_error() -> None:
    with silent_nameserver() as address:
        ask = Resolver(DnsSettings(nameservers=(address,), timeout=0.5))
        started = time.monotonic()
        with pytest.raises(DnsTemporaryError):
            asyncio.run(ask.txt("example.test"))
        assert time.monotonic() - started < 3


def test_the_dns_section() -> None:
    built = config.from_mapping({"dns": {"nameservers": ["127.0.0.1:5353", "[::1]:53", "192.0.2.1"]}})
    assert built.dns.nameservers == ("127.0.0.1:5353", "[::1]:53", "192.0.2.1")
    assert config.from_mapping({}).dns.nameservers == ()
    for bad in (["ns.example.org"], ["127.0.0.1:0"], ["127.0.0.1:x"], ["[::1"]):
        with pytest.raises(ConfigError, match=r"\[dns\] nameservers: "):
            config.from_mapping({"dns": {"nameservers": bad}})
