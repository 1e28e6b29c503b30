"""SPF (RFC 7208): may the client's IP address send mail for the MAIL FROM (or HELO) domain?

`check_host()` is RFC 7208 §4 on the daemon's asynchronous resolver: every mechanism and both modifiers,
macros (spf_record.py), and the limits of §4.6.4 (10 DNS-querying terms, 2 void lookups, 10 MX or PTR
names) that keep a hostile record from making us a DNS amplifier. `check_spf()` and `check_helo()` wrap it
as the `spf=` result of an Authentication-Results field.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from qsift.auth.dns import DnsTemporaryError
from qsift.auth.results import MethodResult
from qsift.auth.spf_record import (
    MacroString,
    Mechanism,
    Record,
    SpfSyntaxError,
    as_domain,
    expand,
    is_spf_record,
    parse_macro_string,
    parse_record,
    uses_letter,
)

MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES = 10
#: RFC 7208 §4.6.4: "at least 20 seconds" for a whole evaluation; past it the result is temperror.
TIME_LIMIT = 20.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResolver(Protocol):
    """The questions SPF asks (auth/dns.py's Resolver answers them)."""

    async def txt(self, name: str) -> tuple[str, ...]: ...
    async def addresses(self, name: str, family: int) -> tuple[str, ...]: ...
    async def mx(self, name: str) -> tuple[str, ...]: ...
    async def ptr(self, address: str) -> tuple[str, ...]: ...


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True)
class SpfOutcome:
    """check_host()'s answer: the RFC 7208 §2.6 result, why, and the domain's explanation for a fail."""

    result: str
    reason: str
    explanation: str | None = None


@dataclass
class _Evaluation:
    """One check_host() run; its counters span every include and redirect (RFC 7208 §4.6.4)."""

    resolver: SpfResolver
    ip: IPAddress
    sender: str
    helo: str
    receiver: str = "unknown"
    dns_terms: int = 0
    void_lookups: int = 0
    #: The macro letters' values (RFC 7208 §7.3) that do not change during the run.
    values: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        local, _, domain = self.sender.rpartition("@")
        v4 = self.ip.version == 4
        self.values = {
            "s": self.sender,
            "l": local or "postmaster",
            "o": domain,
            "i": str(self.ip) if v4 else ".".join(self.ip.exploded.replace(":", "")),
            "v": "in-addr" if v4 else "ip6",
            "h": self.helo,
            "c": str(self.ip),
            "r": self.receiver,
        }

    async def check_host(self, domain: str) -> tuple[str, str | None]:
        """The result for `domain` ("none" when it has no record) and the explanation of a fail."""
        record = await self._record(domain)
        if record is None:
            return "none", None
        for mechanism in record.mechanisms:
            if await self._matches(mechanism, domain):
                explanation = None
                if mechanism.qualifier == "fail" and record.explanation is not None:
                    explanation = await self._explain(record.explanation, domain)
                return mechanism.qualifier, explanation
        # RFC 7208 §6.1: redirect is ignored when the record has an "all" anywhere.
        if record.redirect is None or any(m.name == "all" for m in record.mechanisms):
            return "neutral", None
        self._count_dns_term()
        target = await self._domain(record.redirect, domain)
        result, explanation = await self.check_host(target)
        if result == "none":
            raise _PermError(f"redirect={target} has no SPF record")
        return result, explanation

    async def _record(self, domain: str) -> Record | None:
        if not valid_domain(domain):
            return None
        texts = [text for text in await self._ask(self.resolver.txt(domain)) if is_spf_record(text)]
        if not texts:
            return None
        if len(texts) > 1:
            raise _PermError(f"{domain} has {len(texts)} SPF records")
        try:
            return parse_record(texts[0])
        except SpfSyntaxError as exc:
            raise _PermError(f"{domain}: {exc}") from None

    async def _matches(self, mechanism: Mechanism, domain: str) -> bool:
        name = mechanism.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            return self._in_network(mechanism.network, mechanism.cidr4)
        self._count_dns_term()
        target = domain if mechanism.domain is None else await self._domain(mechanism.domain, domain)
        if name == "include":
            result, _ = await self.check_host(target)
            if result == "none":
                raise _PermError(f"include:{target} has no SPF record")
            return result == "pass"
        if not valid_domain(target):
            # A name no DNS question can carry (RFC 7208 §4.8 leaves it open): it does not exist.
            return False
        if name == "a":
            return self._in_any(await self._addresses(target, self.ip.version), mechanism)
        if name == "mx":
            return await self._mx_matches(target, mechanism)
        if name == "ptr":
            return any(_within(valid, target) for valid in await self._validated_names(void=True))
        return bool(await self._addresses(target, 4))  # exists: an A record, whatever the IP version

    async def _mx_matches(self, target: str, mechanism: Mechanism) -> bool:
        exchanges = self._void(await self._ask(self.resolver.mx(target)))
        if len(exchanges) > MAX_NAMES:
            raise _PermError(f"{target} has more than {MAX_NAMES} MX records")
        for exchange in exchanges:
            if exchange.strip(".@") and self._in_any(
                await self._ask(self.resolver.addresses(exchange, self.ip.version)), mechanism
            ):
                return True
        return False

    async def _validated_names(self, *, void: bool = False) -> list[str]:
        """The client's PTR names whose addresses include it (RFC 7208 §5.5); DNS errors skip a name."""
        try:
            names = await self.resolver.ptr(str(self.ip))
        except DnsTemporaryError:
            return []
        if void:
            self._void(names)
        valid = []
        for name in names[:MAX_NAMES]:
            try:
                addresses = await self.resolver.addresses(name, self.ip.version)
            except DnsTemporaryError:
                continue
            if any(ipaddress.ip_address(address) == self.ip for address in addresses):
                valid.append(name)
        return valid

    async def _explain(self, spec: MacroString, domain: str) -> str | None:
        """The exp= text (RFC 7208 §6.2); any trouble finding it means no explanation, not an error."""
        try:
            texts = await self.resolver.txt(await self._domain(spec, domain))
            if len(texts) != 1:
                return None
            text = parse_macro_string(texts[0], explanation=True)
            values = {**self.values, "d": domain, "t": str(int(time.time()))}
            if uses_letter(text, "p"):
                values["p"] = await self._ptr_name(domain)
            return expand(text, values)
        except (DnsTemporaryError, SpfSyntaxError, _PermError, _TempError):
            return None

    async def _domain(self, spec: MacroString, domain: str) -> str:
        values = {**self.values, "d": domain}
        if uses_letter(spec, "p"):
            values["p"] = await self._ptr_name(domain)
        return as_domain(expand(spec, values))

    async def _ptr_name(self, domain: str) -> str:
        """%{p}: a validated name of the client, the current domain's own first (RFC 7208 §7.3)."""
        names = await self._validated_names()
        for name in names:
            if _within(name, domain):
                return name
        return names[0] if names else "unknown"

    async def _addresses(self, name: str, family: int) -> tuple[str, ...]:
        return self._void(await self._ask(self.resolver.addresses(name, family)))

    async def _ask(self, question: Awaitable[tuple[str, ...]]) -> tuple[str, ...]:
        try:
            return await question
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None

    def _void(self, answer: tuple[str, ...]) -> tuple[str, ...]:
        if not answer:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")
        return answer

    def _count_dns_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def _in_any(self, addresses: tuple[str, ...], mechanism: Mechanism) -> bool:
        length = mechanism.cidr4 if self.ip.version == 4 else mechanism.cidr6
        return any(self._in_network(address, length) for address in addresses)

    def _in_network(self, address: str, length: int) -> bool:
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        return network.version == self.ip.version and self.ip in network


def _within(name: str, domain: str) -> bool:
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


def valid_domain(domain: str) -> bool:
    """RFC 7208 §4.3: a multi-label name of non-empty labels of at most 63 octets, not a literal, and
    nothing a DNS question cannot carry (such a name does not exist; asking would be a temperror)."""
    labels = domain.rstrip(".").split(".")
    return (
        len(labels) > 1
        and all(0 < len(label) <= 63 for label in labels)
        and not domain.startswith("[")
        and len(domain) <= 253
        and domain.isascii()  # the caller gives A-labels
        and "\\" not in domain  # a DNS name's text form reads it as an escape
    )


def client_ip(ip: str) -> IPAddress:
    """The client address, an IPv4-mapped IPv6 address as the IPv4 address it is (RFC 7208 §5)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def check_host(
    resolver: SpfResolver,
    ip: str,
    domain: str,
    sender: str,
    helo: str = "",
    *,
    time_limit: float = TIME_LIMIT,
) -> SpfOutcome:
    """RFC 7208 §4: the result for `domain`, `sender` and the client `ip` (the HELO name for %{h})."""
    evaluation = _Evaluation(resolver, client_ip(ip), sender, helo)
    try:
        async with asyncio.timeout(time_limit):
            result, explanation = await evaluation.check_host(domain)
    except _PermError as exc:
        return SpfOutcome("permerror", str(exc))
    except (_TempError, TimeoutError) as exc:
        return SpfOutcome("temperror", str(exc) or "SPF evaluation took too long")
    reason = _REASONS[result].format(ip=evaluation.ip, domain=domain)
    return SpfOutcome(result, reason, explanation)


_REASONS = {
    "pass": "{domain} designates {ip} as permitted sender",
    "fail": "{domain} does not designate {ip} as permitted sender",
    "softfail": "{domain} does not designate {ip} as permitted sender (softfail)",
    "neutral": "{domain} neither permits nor denies {ip}",
    "none": "no SPF record for {domain}",
}


def spf_domain(mail_from: str, helo: str) -> str:
    """The domain SPF checks for this envelope: MAIL FROM's, or HELO's for the null sender (RFC 7208 §2.4)."""
    if not mail_from:
        return helo.lower().rstrip(".")
    return mail_from.rpartition("@")[2].lower().rstrip(".")


async def check_spf(resolver: SpfResolver, ip: str, mail_from: str, helo: str) -> MethodResult:
    """`spf=` for the MAIL FROM identity; for the null sender (`mail_from` "") postmaster@HELO (§2.4)."""
    if not mail_from:
        return await check_helo(resolver, ip, helo)
    local, _, _ = mail_from.rpartition("@")
    domain = spf_domain(mail_from, helo)
    sender = f"{local or 'postmaster'}@{domain}"  # RFC 7208 §4.3: no local part is postmaster's
    outcome = await check_host(resolver, ip, domain, sender, helo)
    return MethodResult("spf", outcome.result, outcome.reason, (("smtp.mailfrom", domain),))


async def check_helo(resolver: SpfResolver, ip: str, helo: str) -> MethodResult:
    """`spf=` for the HELO identity (RFC 7208 §2.3): sender postmaster@HELO."""
    domain = helo.lower().rstrip(".")
    outcome = await check_host(resolver, ip, domain, "postmaster@" + domain, helo)
    return MethodResult("spf", outcome.result, outcome.reason, (("smtp.helo", domain),))
