"""DMARC against a real Knot DNS: policy discovery (the From: domain, then its Organizational Domain with
sp=), strict and relaxed alignment of SPF and DKIM, pct=0 and t=y, bad and duplicate records, a DNS
timeout; the record parser as a case table and a property test; the From: domain of a header."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.auth.dmarc import aligned, author_domain, check_dmarc, organizational_domain
from qsift.auth.dmarc_record import POLICIES, DmarcRecord, DmarcRecordError, parse_record
from qsift.auth.dns import Resolver
from qsift.auth.results import DmarcVerdict, MethodResult
from qsift.auth.settings import DnsSettings
from tests.dns_server import DnsServer, running_knot, silent_nameserver

ZONES = {
    "reject.test": """\
_dmarc TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc@reject.test"
_dmarc.own TXT "v=DMARC1; p=none"
""",
    "quarantine.test": '_dmarc TXT "v=DMARC1;p=quarantine"',
    "none.test": '_dmarc TXT "v=DMARC1; p=none"',
    "strict.test": '_dmarc TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
    "pct.test": '_dmarc TXT "v=DMARC1; p=reject; pct=0"',
    "half.test": '_dmarc TXT "v=DMARC1; p=reject; pct=50"',
    "testing.test": '_dmarc TXT "v=DMARC1; p=quarantine; t=y"',
    "bad.test": '_dmarc TXT "v=DMARC1; p=reject; oops"',
    "multi.test": '_dmarc TXT "v=DMARC1; p=reject"\n_dmarc TXT "v=DMARC1; p=none"',
    "lenient.test": '_dmarc TXT "v=DMARC1; p=bogus; adkim=x"',
    "other.test": '_dmarc TXT "v=spf1 -all"\n_dmarc TXT "hello"',
    "nopolicy.test": "",
}


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with running_knot(ZONES) as running:
        yield running


def spf(result: str) -> MethodResult:
    return MethodResult("spf", result, "", (("smtp.mailfrom", "x"),))


def dkim(result: str, domain: str) -> MethodResult:
    return MethodResult("dkim", result, "", (("header.d", domain), ("header.s", "s1")))


FAIL = spf("fail")
PASS = spf("pass")

#: from domain, SPF result, SPF domain, DKIM results -> dmarc result, disposition, policy.dmarc
CASES = [
    # p=reject
    ("reject.test", FAIL, "reject.test", [], "fail", "reject", "reject"),
    ("reject.test", PASS, "reject.test", [], "pass", "none", "reject"),
    ("reject.test", PASS, "mail.reject.test", [], "pass", "none", "reject"),  # relaxed SPF
    ("reject.test", PASS, "elsewhere.test", [], "fail", "reject", "reject"),  # passed, not aligned
    ("reject.test", FAIL, "", [dkim("pass", "Reject.Test")], "pass", "none", "reject"),
    ("reject.test", FAIL, "", [dkim("pass", "s.reject.test")], "pass", "none", "reject"),  # relaxed
    (
        "reject.test",
        FAIL,
        "",
        [dkim("fail", "reject.test"), dkim("pass", "x.test")],
        "fail",
        "reject",
        "reject",
    ),
    (
        "reject.test",
        None,
        "",
        [dkim("fail", "reject.test"), dkim("pass", "reject.test")],
        "pass",
        "none",
        "reject",
    ),
    ("reject.test", FAIL, "", [MethodResult("dkim", "pass")], "fail", "reject", "reject"),  # no header.d
    # A subdomain without a record of its own: the Organizational Domain's sp=
    ("mail.reject.test", FAIL, "", [], "fail", "quarantine", "quarantine"),
    ("a.b.reject.test", PASS, "reject.test", [], "pass", "none", "quarantine"),
    # ... but one with a record has its own p=
    ("own.reject.test", FAIL, "", [], "fail", "none", "none"),
    # No sp=: p= for the subdomains too
    ("sub.quarantine.test", FAIL, "", [], "fail", "quarantine", "quarantine"),
    ("quarantine.test", FAIL, "", [], "fail", "quarantine", "quarantine"),
    ("none.test", FAIL, "", [], "fail", "none", "none"),
    # Strict alignment: only the same name counts
    ("strict.test", PASS, "strict.test", [], "pass", "none", "reject"),
    ("strict.test", PASS, "mail.strict.test", [], "fail", "reject", "reject"),
    ("strict.test", FAIL, "", [dkim("pass", "mail.strict.test")], "fail", "reject", "reject"),
    ("strict.test", FAIL, "", [dkim("pass", "STRICT.test")], "pass", "none", "reject"),
    # pct=0 is t=y: one level lower; any other pct is 100 (RFC 9989 drops pct)
    ("pct.test", FAIL, "", [], "fail", "quarantine", "reject"),
    ("half.test", FAIL, "", [], "fail", "reject", "reject"),
    ("testing.test", FAIL, "", [], "fail", "none", "quarantine"),
    # A bad p= reads as p=none, a bad adkim= as relaxed
    ("lenient.test", FAIL, "", [dkim("pass", "x.lenient.test")], "pass", "none", "none"),
    ("lenient.test", FAIL, "", [], "fail", "none", "none"),
]


@pytest.mark.parametrize(
    ("domain", "spf_result", "spf_domain", "dkims", "result", "disposition", "policy"), CASES
)
def test_check_dmarc(
    server: DnsServer,
    domain: str,
    spf_result: MethodResult | None,
    spf_domain: str,
    dkims: list[MethodResult],
    result: str,
    disposition: str,
    policy: str,
) -> None:
    resolver = Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0))
    found, verdict = asyncio.run(check_dmarc(resolver, domain, spf_result, spf_domain, dkims))
    assert (found.method, found.result) == ("dmarc", result)
    assert found.properties == (("header.from", domain.lower()), ("policy.dmarc", policy))
    assert verdict == DmarcVerdict(disposition, domain.lower())


def test_reasons_say_what_passed_and_what_was_asked(server: DnsServer) -> None:
    resolver = Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0))

    async def main() -> tuple[MethodResult, ...]:
        return (
            (await check_dmarc(resolver, "reject.test", PASS, "reject.test", []))[0],
            (await check_dmarc(resolver, "reject.test", FAIL, "", [dkim("pass", "reject.test")]))[0],
            (await check_dmarc(resolver, "sub.reject.test", FAIL, "", []))[0],
            (await check_dmarc(resolver, "pct.test", FAIL, "", []))[0],
        )

    spf_pass, dkim_pass, failed, testing = asyncio.run(main())
    assert spf_pass.reason == "SPF reject.test aligned (p=reject sp=quarantine)"
    assert dkim_pass.reason == "DKIM d=reject.test aligned (p=reject sp=quarantine)"
    assert failed.reason == "no aligned SPF or DKIM pass (p=reject sp=quarantine dis=quarantine)"
    assert testing.reason == "no aligned SPF or DKIM pass (p=reject sp=reject t=y dis=quarantine)"


@pytest.mark.parametrize(
    ("domain", "result"),
    [
        ("nopolicy.test", "none"),  # no record, and it is its own Organizational Domain
        ("a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 40 + ".nopolicy.test", "none"),
        # _dmarc.<name> would be too long to ask for: no record there, the Organizational Domain's
        ("a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 50 + ".nopolicy.test", "none"),
        ("sub.nopolicy.test", "none"),  # no record at the subdomain nor at the Organizational Domain
        ("multi.test", "none"),  # several records: no policy (RFC 7489 §6.6.3)
        ("sub.multi.test", "none"),
        ("other.test", "none"),  # TXT records, none of them DMARC
        ("bad.test", "permerror"),  # not a tag list
        ("sub.bad.test", "permerror"),
    ],
)
def test_no_policy_and_bad_policies(server: DnsServer, domain: str, result: str) -> None:
    resolver = Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0))
    found, verdict = asyncio.run(check_dmarc(resolver, domain, FAIL, domain, []))
    assert (found.result, found.properties) == (result, (("header.from", domain),))
    assert found.reason
    assert verdict == DmarcVerdict("none", domain)


def test_no_from_domain_is_not_evaluated(server: DnsServer) -> None:
    resolver = Resolver(DnsSettings(nameservers=(server.address,), timeout=2.0))
    found, verdict = asyncio.run(check_dmarc(resolver, "", PASS, "reject.test", []))
    assert found == MethodResult("dmarc", "none", "no single From: domain to evaluate")
    assert verdict == DmarcVerdict()


def test_a_dns_timeout_is_temperror() -> None:
    with silent_nameserver() as address:
        resolver = Resolver(DnsSettings(nameservers=(address,), timeout=0.3))
        found, verdict = asyncio.run(check_dmarc(resolver, "reject.test", FAIL, "", []))
    assert (found.result, found.properties) == ("temperror", (("header.from", "reject.test"),))
    assert verdict == DmarcVerdict("none", "reject.test")


@pytest.mark.parametrize(
    ("domain", "organization"),
    [
        ("a.b.example.co.uk", "example.co.uk"),
        ("Example.ORG.", "example.org"),
        ("co.uk", "co.uk"),
        ("mail.example.test", "example.test"),
    ],
)
def test_organizational_domain(domain: str, organization: str) -> None:
    assert organizational_domain(domain) == organization


def test_alignment() -> None:
    assert aligned("mail.example.co.uk", "example.co.uk", "r")
    assert not aligned("other.co.uk", "example.co.uk", "r")
    assert not aligned("mail.example.co.uk", "example.co.uk", "s")
    assert aligned("EXAMPLE.co.uk.", "example.co.uk", "s")


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("v=DMARC1; p=reject", DmarcRecord(policy="reject")),
        ("v=DMARC1", DmarcRecord()),
        ("v = DMARC1 ;p = Quarantine ; sp=none;", DmarcRecord(policy="quarantine", subdomain_policy="none")),
        ("v=DMARC1; sp=reject; p=none", DmarcRecord(subdomain_policy="reject")),  # any order (RFC 9989)
        ("v=DMARC1; p=reject; adkim=s; aspf=S", DmarcRecord("reject", dkim_alignment="s", spf_alignment="s")),
        ("v=DMARC1; p=reject; pct=20", DmarcRecord("reject", percent=20)),
        ("v=DMARC1; p=reject; pct=200", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=x", DmarcRecord("reject")),
        (
            "v=DMARC1; p=reject; t=y; np=reject; psd=n",
            DmarcRecord("reject", None, "reject", testing=True, public_suffix="n"),
        ),
        (
            "v=DMARC1; p=none; rua=mailto:a@b.example; ruf=mailto:c@d.example; fo=1; rf=afrf; ri=1",
            DmarcRecord(),
        ),
        ("v=DMARC1; p=reject; future_tag=whatever", DmarcRecord("reject")),
        ("v=DMARC1; p=x; sp=y; adkim=rs; t=maybe; psd=", DmarcRecord()),
    ],
)
def test_records(text: str, record: DmarcRecord) -> None:
    assert parse_record(text) == record


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC2; p=reject",
        "p=reject; v=DMARC1",
        "v=dmarc1",
        "v=DMARC1; p",
        "v=DMARC1; p=none; p=reject",
        "v=DMARC1; 1x=y",
    ],
)
def test_bad_records(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


TAG = st.sampled_from(["v", "p", "sp", "np", "adkim", "aspf", "pct", "t", "psd", "rua", "x", "P", ""])
VALUE = st.one_of(
    st.sampled_from(["reject", "none", "quarantine", "r", "s", "y", "0", "100", "101"]), st.text(max_size=8)
)
TAG_LISTS = st.lists(st.tuples(TAG, st.sampled_from(["=", " = ", "", "=="]), VALUE), max_size=8).map(
    lambda tags: "v=DMARC1;" + ";".join(f"{name}{eq}{value}" for name, eq, value in tags)
)


@given(st.one_of(TAG_LISTS, st.text(max_size=60), st.text(max_size=40).map(lambda t: "v=DMARC1;" + t)))
@settings(max_examples=500, deadline=None)
def test_the_parser_gives_a_valid_record_or_a_record_error(text: str) -> None:
    try:
        record = parse_record(text)
    except DmarcRecordError:
        return
    assert record.policy in POLICIES
    assert {record.subdomain_policy, record.nonexistent_policy} <= {*POLICIES, None}
    assert record.dkim_alignment in "rs" and record.spf_alignment in "rs"
    assert 0 <= record.percent <= 100
    assert record.public_suffix in "ynu"


@pytest.mark.parametrize(
    ("header", "domain"),
    [
        (b"From: Someone <someone@Example.ORG>\r\nTo: x@y.test\r\n", "example.org"),
        (
            b'Subject: hi\nfrom:\n  "Folded, Name" <a@mail.example.org.>\n\nFrom: body@other.test\n',
            "mail.example.org",
        ),
        (b"From: a@example.org\r\nFrom: b@example.org\r\n", ""),  # two From: fields
        (b"From: a@example.org, b@example.org\r\n", ""),  # two addresses
        (b"Sender: a@example.org\r\n", ""),  # none
        (b"From: undisclosed\r\n", ""),  # no domain
        (b"From: a@localhost\r\n", ""),  # not a domain DMARC can look up
        (b"From: Group: a@example.org;\r\n", "example.org"),
        ("From: a@Bücher.example\r\n".encode(), "xn--bcher-kva.example"),
        ("From: a@\u3002x.example\r\n".encode(), ""),  # not a name IDNA can encode
        (b" continuation first\r\nFrom: a@example.org\r\nnot a field\r\n", "example.org"),
    ],
)
def test_author_domain(header: bytes, domain: str) -> None:
    assert author_domain(header) == domain


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_author_domain_is_total(header: bytes) -> None:
    assert isinstance(author_domain(header), str)
