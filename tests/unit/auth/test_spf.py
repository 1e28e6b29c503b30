"""SPF: the openspf RFC 7208 suite (all of it through a DNS double serving its zonedata, the scenarios a
real server can serve through Knot DNS too), the check_spf/check_helo API against Knot, timeouts, and
property tests that the parser, the expander and the evaluation stay bounded and total."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.auth.dns import Resolver
from qsift.auth.results import RESULTS, MethodResult
from qsift.auth.settings import DnsSettings
from qsift.auth.spf import check_helo, check_host, check_spf, client_ip, spf_domain, valid_domain
from qsift.auth.spf_record import (
    Macro,
    SpfSyntaxError,
    as_domain,
    expand,
    parse_domain_spec,
    parse_macro_string,
    parse_record,
)
from tests.dns_server import DnsServer, running_knot, silent_nameserver
from tests.unit.auth.spf_suite import SuiteCase, ZoneDouble, knot_zones, load_suite, on_knot, run_case

SUITE = load_suite()


@pytest.mark.parametrize("case", SUITE, ids=[f"{c.scenario}/{c.name}" for c in SUITE])
def test_rfc7208_suite(case: SuiteCase) -> None:
    asyncio.run(run_case(ZoneDouble(case.zone), case))


def test_the_whole_suite_is_there() -> None:
    assert len(SUITE) == 203
    assert len({case.scenario for case in SUITE}) == 16


ON_KNOT = [case for case in SUITE if on_knot(case)]


@pytest.mark.parametrize("scenario", sorted({case.scenario for case in ON_KNOT}))
def test_rfc7208_suite_on_knot(scenario: str) -> None:
    """Every case whose answers a real server can give (no timeouts, no names DNS cannot carry), each
    scenario's zone served by knotd."""
    cases = [case for case in ON_KNOT if case.scenario == scenario]
    with running_knot(knot_zones(cases)) as server:

        async def main() -> None:
            for case in cases:
                await run_case(Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0)), case)

        asyncio.run(main())


def test_most_of_the_suite_runs_on_knot() -> None:
    assert len(ON_KNOT) >= 150


ZONE = """\
@ TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a:mail.example.test -all"
mail A 198.51.100.7
mail TXT "v=spf1 a -all"
soft TXT "v=spf1 ~all"
loop TXT "v=spf1 include:loop.example.test -all"
macro TXT "v=spf1 exists:%{l}.users.example.test -all"
alice.users A 127.0.0.2
"""


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with running_knot({"example.test": ZONE}) as running:
        yield running


def resolver(server: DnsServer) -> Resolver:
    return Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0))


@pytest.mark.parametrize(
    ("ip", "mail_from", "helo", "expected"),
    [
        ("192.0.2.1", "user@example.test", "x.example.test", ("pass", "smtp.mailfrom", "example.test")),
        ("2001:db8::5", "user@Example.Test.", "x", ("pass", "smtp.mailfrom", "example.test")),
        ("::ffff:198.51.100.7", "user@example.test", "x", ("pass", "smtp.mailfrom", "example.test")),
        ("203.0.113.9", "user@example.test", "x", ("fail", "smtp.mailfrom", "example.test")),
        ("203.0.113.9", "user@soft.example.test", "x", ("softfail", "smtp.mailfrom", "soft.example.test")),
        ("203.0.113.9", "user@nosuch.example.test", "x", ("none", "smtp.mailfrom", "nosuch.example.test")),
        ("203.0.113.9", "user@loop.example.test", "x", ("permerror", "smtp.mailfrom", "loop.example.test")),
        ("203.0.113.9", "example.test", "x", ("fail", "smtp.mailfrom", "example.test")),
        ("203.0.113.9", "@example.test", "x", ("fail", "smtp.mailfrom", "example.test")),
        ("203.0.113.9", "a@exa\\mple.test", "x", ("none", "smtp.mailfrom", "exa\\mple.test")),
        ("203.0.113.9", "alice@macro.example.test", "x", ("pass", "smtp.mailfrom", "macro.example.test")),
        ("203.0.113.9", "bob@macro.example.test", "x", ("fail", "smtp.mailfrom", "macro.example.test")),
        # A name DNS cannot ask for does not exist: no match, not a temperror
        ("203.0.113.9", "b\\ob@macro.example.test", "x", ("fail", "smtp.mailfrom", "macro.example.test")),
        # The null sender: the HELO identity, postmaster@HELO (RFC 7208 §2.4).
        ("198.51.100.7", "", "mail.example.test", ("pass", "smtp.helo", "mail.example.test")),
        ("192.0.2.1", "", "mail.example.test", ("fail", "smtp.helo", "mail.example.test")),
        ("192.0.2.1", "", "[192.0.2.1]", ("none", "smtp.helo", "[192.0.2.1]")),
    ],
)
def test_check_spf(server: DnsServer, ip: str, mail_from: str, helo: str, expected: tuple[str, ...]) -> None:
    found = asyncio.run(check_spf(resolver(server), ip, mail_from, helo))
    result, ptype, value = expected
    assert found == MethodResult("spf", result, found.reason, ((ptype, value),))
    assert found.reason


def test_reasons_name_the_domain_and_address(server: DnsServer) -> None:
    passed = asyncio.run(check_spf(resolver(server), "192.0.2.1", "a@example.test", "h"))
    assert passed.reason == "example.test designates 192.0.2.1 as permitted sender"
    looped = asyncio.run(check_spf(resolver(server), "192.0.2.1", "a@loop.example.test", "h"))
    assert looped.reason == "more than 10 DNS-querying terms"


def test_check_helo(server: DnsServer) -> None:
    found = asyncio.run(check_helo(resolver(server), "198.51.100.7", "Mail.Example.Test"))
    assert (found.result, found.properties) == ("pass", (("smtp.helo", "mail.example.test"),))


def test_a_dns_timeout_is_temperror() -> None:
    with silent_nameserver() as address:
        silent = Resolver(DnsSettings(nameservers=(address,), timeout=0.3))
        found = asyncio.run(check_spf(silent, "192.0.2.1", "user@example.test", "h"))
    assert found.result == "temperror"
    assert found.properties == (("smtp.mailfrom", "example.test"),)


class Stalling(ZoneDouble):
    """Answers TXT questions from its zone and address questions never."""

    async def addresses(self, name: str, family: int) -> tuple[str, ...]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_the_whole_evaluation_is_bounded_in_time() -> None:
    stalling = Stalling({"example.test": [("TXT", ["v=spf1 a -all"])]})
    found = asyncio.run(check_host(stalling, "192.0.2.1", "example.test", "a@example.test", time_limit=0.05))
    assert (found.result, found.reason) == ("temperror", "SPF evaluation took too long")


def test_spf_domain() -> None:
    assert spf_domain("User@Example.ORG", "helo.test") == "example.org"
    assert spf_domain("", "Helo.Example.") == "helo.example"


def test_client_ip() -> None:
    assert str(client_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(client_ip("2001:DB8::1")) == "2001:db8::1"


@pytest.mark.parametrize(
    ("domain", "valid"),
    [
        ("example.org", True),
        ("example.org.", True),
        ("_spf.example.org", True),
        ("org", False),
        ("a..org", False),
        ("[1.2.3.4]", False),
        ("a\\.example.org", False),
        ("bücher.example", False),  # the caller passes A-labels
        ("a b.example", True),  # DNS carries any octet
        ("a." * 126 + "org", False),
    ],
)
def test_valid_domain(domain: str, valid: bool) -> None:
    assert valid_domain(domain) is valid


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 exp=a.example exp=b.example",
        "v=spf1 redirect=a.example redirect=b.example",
        "v=spf1 ip4:192.0.2.0/33",
        "v=spf1 ip4:192.0.2.0/024",
        "v=spf1 ip4:192.0.2",
        "v=spf1 ip4",
        "v=spf1 ip6:2001:db8::/129",
        "v=spf1 ip6:2001:db8::g",
        "v=spf1 a:example.com/33",
        "v=spf1 a//129",
        "v=spf1 include",
        "v=spf1 exists:",
        "v=spf1 allx",
        "v=spf1 all:example.com",
        "v=spf1 1a=b",
        "v=spf1 foo:example.com",
        "v=spf1 a:example.123",
        "v=spf1 a:%{c}.example.com",
        "v=spf1 a:%{d0}.example.com",
        "v=spf1 a:%{x}.example.com",
        "v=spf1 a:%",
        "v=spf1 a%",
        "v=spf10",
        "spf1",
    ],
)
def test_syntax_errors(record: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record(record)


def test_records_parse_to_terms() -> None:
    record = parse_record("V=SPF1 ~A:%{d}/24//64  mx/16 ?ip6:2001:db8::/48 ip4:192.0.2.1 unknown=%{s}x -all")
    names = [(m.qualifier, m.name, m.cidr4, m.cidr6) for m in record.mechanisms]
    assert names == [
        ("softfail", "a", 24, 64),
        ("pass", "mx", 16, 128),
        ("neutral", "ip6", 48, 48),
        ("pass", "ip4", 32, 128),
        ("fail", "all", 32, 128),
    ]
    assert record.mechanisms[0].domain == (Macro("d", 0, False, "."),)
    assert record.redirect is None and record.explanation is None


VALUES = {
    "s": "strong-bad@email.example.com",
    "l": "strong-bad",
    "o": "email.example.com",
    "d": "email.example.com",
    "i": "192.0.2.3",
    "v": "in-addr",
    "h": "mx.example.org",
    "c": "192.0.2.3",
    "r": "unknown",
    "t": "1",
    "p": "unknown",
}


@pytest.mark.parametrize(
    ("text", "expanded"),
    [  # RFC 7208 §7.4's examples
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("%%%_%-", "% %20"),
    ],
)
def test_macro_expansion(text: str, expanded: str) -> None:
    assert expand(parse_macro_string(text), VALUES) == expanded


def test_explanations_allow_spaces_and_their_own_letters() -> None:
    text = parse_macro_string("%{c} is not one of %{d}'s at %{t} (%{r})", explanation=True)
    assert expand(text, VALUES) == "192.0.2.3 is not one of email.example.com's at 1 (unknown)"
    with pytest.raises(SpfSyntaxError):
        parse_macro_string("two words")


def test_long_names_lose_labels_on_the_left() -> None:
    name = ".".join(["a" * 60] * 5) + ".example.com."
    assert as_domain(name) == ".".join(["a" * 60] * 3) + ".example.com"
    assert parse_domain_spec("%{d}") == (Macro("d", 0, False, "."),)


# Terms drawn from the grammar's pieces, so that generated records reach the evaluation as well as
# the parser's errors.
TERM_TEXT = (
    "a mx ptr -all ~all ?all +all a/24 mx//64 a:%{d} a:%{ir}.%{v}.x.test include:x.test include:%{o} "
    "exists:%{l}.%{d} ip4:192.0.2.0/24 ip6:2001:db8::/32 redirect=x.test redirect=%{d} exp=%{d} "
    "ptr:%{p}.test mx:%{h} foo=%{s} % a: ip4:1.2.3.4/99 x a:%{d0} %{c}"
)
TERMS = st.sampled_from(TERM_TEXT.split())
RECORDS = st.one_of(
    st.lists(TERMS, max_size=12).map(lambda terms: " ".join(["v=spf1", *terms])),
    st.text(max_size=80).map(lambda text: "v=spf1 " + text),
)


@given(RECORDS)
@settings(max_examples=300, deadline=None)
def test_parser_raises_only_syntax_errors(record: str) -> None:
    with contextlib.suppress(SpfSyntaxError):
        parse_record(record)


@given(st.text(max_size=60), st.booleans())
@settings(max_examples=300, deadline=None)
def test_expander_is_total_and_bounded(text: str, explanation: bool) -> None:
    try:
        parts = parse_macro_string(text, explanation=explanation)
    except SpfSyntaxError:
        return
    long_values = dict.fromkeys(VALUES, "x." * 100)
    assert len(expand(parts, long_values)) <= len(text) * 210 + 10


@given(st.lists(st.tuples(st.sampled_from(["x.test", "y.x.test", "z.x.test"]), RECORDS), max_size=4))
@settings(max_examples=200, deadline=None)
def test_any_records_give_an_spf_result_with_bounded_lookups(records: list[tuple[str, str]]) -> None:
    zone: dict[str, list[object]] = {}
    for name, record in records:
        zone.setdefault(name, []).append(("TXT", [record]))
    zone["mx.x.test"] = [("MX", [0, f"m{n}.x.test"]) for n in range(11)]
    double = ZoneDouble(zone)
    found = asyncio.run(check_host(double, "2001:db8::1", "x.test", "a@x.test", "h.x.test"))
    assert found.result in RESULTS["spf"]
    # 10 terms, each at most one question plus 10 MX or PTR names' addresses, plus the %{p} names.
    assert len(double.questions) <= 1 + 10 * 12 + 12 * 20


def test_a_ptr_lookup_that_fails_matches_nothing() -> None:
    zone: dict[str, list[object]] = {
        "x.test": [("TXT", ["v=spf1 ptr ?all"])],
        "1.2.0.192.in-addr.arpa": ["TIMEOUT"],
    }
    found = asyncio.run(check_host(ZoneDouble(zone), "192.0.2.1", "x.test", "a@x.test"))
    assert found.result == "neutral"
