"""DMARC (RFC 7489, with RFC 9989's changes where they are cheap): does the From: domain's policy hold
for this message, and what does the domain ask the receiver to do when it does not?

The message passes when SPF passed for a MAIL FROM (or, for the null sender, HELO) domain aligned with
the From: domain, or any DKIM signature passed with an aligned d= (RFC 7489 §3.1, §4.2). Alignment and
the policy fallback use the Organizational Domain from the Public Suffix List (RFC 7489 §3.2), as most
receivers still do; RFC 9989's DNS tree walk gives the same answer for ordinary domains.

Choices, for the reader of a verdict:
- `pct=` is gone in RFC 9989. qsift reads `pct=0` as RFC 9989's `t=y` (apply one level lower:
  reject -> quarantine -> none) and any other `pct=` as 100, so the same message always gets the same
  verdict (a retried message is not rejected on its second try) and a forger cannot draw the lenient share.
- `np=` (non-existent subdomains) is parsed but not applied: the resolver does not tell NXDOMAIN from
  "no data", which RFC 9091 needs, so such subdomains get `sp=` (else `p=`).
- No single From: domain (no From:, several, or several addresses in one) cannot be evaluated: the result
  is `dmarc=none` with the reason saying so; rejecting such mail (RFC 7489 §6.6.1) is a policy decision.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from qsift.auth.dmarc_record import DmarcRecord, DmarcRecordError, is_dmarc_record, parse_record
from qsift.auth.dns import DnsTemporaryError
from qsift.auth.results import DmarcVerdict, MethodResult
from qsift.auth.spf import SpfResolver, valid_domain

#: One level lower, for `t=y` and `pct=0` (RFC 9989 §5.3.2; RFC 7489 §6.6.4).
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package; loading takes a few milliseconds


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label; a public suffix is its own."""
    domain = domain.lower().rstrip(".")
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(domain: str, author_domain: str, mode: str) -> bool:
    """RFC 7489 §3.1: the same name ("s"trict) or the same Organizational Domain ("r"elaxed)."""
    domain, author_domain = domain.lower().rstrip("."), author_domain.lower().rstrip(".")
    if mode == "s":
        return domain == author_domain
    return organizational_domain(domain) == organizational_domain(author_domain)


@dataclass(frozen=True)
class _Policy:
    """The record that governs the From: domain and which of its policies applies."""

    record: DmarcRecord
    applied: str  # p= for the domain itself, sp= (else p=) for a subdomain found via its parent

    def describe(self) -> str:
        record = self.record
        sp = record.subdomain_policy or record.policy
        return f"p={record.policy} sp={sp}" + (" t=y" if _testing(record) else "")


async def check_dmarc(
    resolver: SpfResolver,
    from_domain: str,
    spf: MethodResult | None,
    spf_domain: str,
    dkim: Sequence[MethodResult],
) -> tuple[MethodResult, DmarcVerdict]:
    """`dmarc=` for the From: domain, and what its policy asks for this message ("none" when it passed).

    `spf` is the MAIL FROM (or null-sender HELO) result and `spf_domain` the domain it was for; `dkim`
    one result per signature, with its `header.d` property. `from_domain` "" means there was no single
    From: domain (see `author_domain`).
    """
    from_domain = from_domain.lower().rstrip(".")
    if not valid_domain(from_domain):
        return MethodResult("dmarc", "none", "no single From: domain to evaluate"), DmarcVerdict()
    header_from = (("header.from", from_domain),)
    try:
        policy = await _discover(resolver, from_domain)
    except DnsTemporaryError as exc:
        return MethodResult("dmarc", "temperror", str(exc), header_from), DmarcVerdict(domain=from_domain)
    except DmarcRecordError as exc:
        return MethodResult("dmarc", "permerror", str(exc), header_from), DmarcVerdict(domain=from_domain)
    if policy is None:
        reason = f"{from_domain} publishes no DMARC policy"
        return MethodResult("dmarc", "none", reason, header_from), DmarcVerdict(domain=from_domain)
    properties = (*header_from, ("policy.dmarc", policy.applied))
    why = _aligned_pass(policy.record, from_domain, spf, spf_domain, dkim)
    if why:
        result = MethodResult("dmarc", "pass", f"{why} ({policy.describe()})", properties)
        return result, DmarcVerdict("none", from_domain)
    disposition = _LOWER[policy.applied] if _testing(policy.record) else policy.applied
    reason = f"no aligned SPF or DKIM pass ({policy.describe()} dis={disposition})"
    return MethodResult("dmarc", "fail", reason, properties), DmarcVerdict(disposition, from_domain)


def _testing(record: DmarcRecord) -> bool:
    return record.testing or record.percent == 0


async def _discover(resolver: SpfResolver, from_domain: str) -> _Policy | None:
    """RFC 7489 §6.6.3: the From: domain's record, else its Organizational Domain's (with sp=); none
    when either has several records."""
    records = await _records(resolver, from_domain)
    subdomain = False
    if not records:
        organization = organizational_domain(from_domain)
        if organization == from_domain:
            return None
        records = await _records(resolver, organization)
        subdomain = True
    if len(records) != 1:
        return None
    record = parse_record(records[0])
    return _Policy(record, record.subdomain_policy or record.policy if subdomain else record.policy)


async def _records(resolver: SpfResolver, domain: str) -> list[str]:
    if len(domain) > 246:  # "_dmarc." and the name would not fit in a DNS name: it has no record
        return []
    return [text for text in await resolver.txt("_dmarc." + domain) if is_dmarc_record(text)]


def _aligned_pass(
    record: DmarcRecord,
    from_domain: str,
    spf: MethodResult | None,
    spf_domain: str,
    dkim: Sequence[MethodResult],
) -> str:
    """What passed aligned ("" for nothing): the DKIM d= first, as it survives forwarding."""
    for result in dkim:
        signer = dict(result.properties).get("header.d", "")
        if result.result == "pass" and signer and aligned(signer, from_domain, record.dkim_alignment):
            return f"DKIM d={signer.lower()} aligned"
    spf_passed = spf is not None and spf.result == "pass" and bool(spf_domain)
    if spf_passed and aligned(spf_domain, from_domain, record.spf_alignment):
        return f"SPF {spf_domain.lower()} aligned"
    return ""


def author_domain(header: bytes) -> str:
    """The RFC5322.From domain DMARC evaluates (RFC 7489 §6.6.1): "" unless the header has exactly one
    From: field holding exactly one address with a domain."""
    fields = [value for name, value in _fields(header) if name.lower() == "from"]
    if len(fields) != 1:
        return ""
    addresses = [address for _, address in email.utils.getaddresses(fields) if address]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return ""
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")  # DNS asks for an internationalized name's A-labels
    except UnicodeError:
        return ""
    return domain if valid_domain(domain) else ""


def _fields(header: bytes) -> list[tuple[str, str]]:
    """The header's fields, unfolded, up to the blank line that ends it."""
    fields: list[tuple[str, str]] = []
    for line in header.decode("utf-8", "replace").splitlines():
        if not line:
            break
        if line[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields
