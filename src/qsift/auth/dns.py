"""The daemon's one DNS client: asynchronous, bounded in time, with a cache shared by a worker's messages.

DKIM keys, SPF, DMARC and ARC records are all TXT lookups, SPF adds A, AAAA and MX. Every answer is kept
for its TTL (capped), NXDOMAIN and "no data" too (RFC 2308's negative caching, for the SOA minimum the
answer carries, else a minute), so a burst of mail from one domain asks once. A timeout, SERVFAIL or a
refused query raises `DnsTemporaryError`: the checks turn it into `temperror`, never into a refusal.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset

from qsift.auth.settings import DnsSettings, split_nameserver

#: Longest an answer is kept, whatever its TTL says: a key rotated or a record fixed is seen within it.
MAX_TTL = 3600.0
NEGATIVE_TTL = 60.0


class DnsTemporaryError(Exception):
    """No answer now (timeout, SERVFAIL, refused, network): the caller's result is temperror."""


Clock = Callable[[], float]


class Resolver:
    """Questions to the configured resolvers, answered from the cache while an answer is fresh."""

    def __init__(self, settings: DnsSettings, clock: Clock = time.monotonic) -> None:
        if settings.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            # dnspython takes one port for all; a per-server port goes through its nameserver objects.
            resolver.nameservers = [_nameserver(entry) for entry in settings.nameservers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = settings.timeout
        resolver.timeout = min(settings.timeout, 2.0)
        resolver.use_edns(0, 0, 1232)
        self._resolver = resolver
        self._clock = clock
        self._size = settings.cache_size
        self._cache: OrderedDict[tuple[str, str], tuple[float, tuple[str, ...]]] = OrderedDict()

    async def txt(self, name: str) -> tuple[str, ...]:
        """Each TXT record's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2); () for none."""
        return await self._ask(name, "TXT")

    async def addresses(self, name: str, family: int) -> tuple[str, ...]:
        """The A (family 4) or AAAA (family 6) records of `name`."""
        return await self._ask(name, "A" if family == 4 else "AAAA")

    async def mx(self, name: str) -> tuple[str, ...]:
        """The exchanges of `name`'s MX records, lowest preference first."""
        return await self._ask(name, "MX")

    async def ptr(self, address: str) -> tuple[str, ...]:
        return await self._ask(dns.reversename.from_address(address).to_text(), "PTR")

    async def _ask(self, name: str, kind: str) -> tuple[str, ...]:
        key = (name.lower().rstrip("."), kind)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        answer, ttl = await self._resolve(key[0] + ".", kind)
        self._cache[key] = (now + min(ttl, MAX_TTL), answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return answer

    async def _resolve(self, name: str, kind: str) -> tuple[tuple[str, ...], float]:
        try:
            answer = await self._resolver.resolve(name, kind, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return (), NEGATIVE_TTL
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTemporaryError(f"{kind} {name}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{kind} {name}: {exc}") from None
        if answer.rrset is None:
            return (), _negative_ttl(answer.response)
        return _texts(answer.rrset, kind), float(answer.rrset.ttl)


def _nameserver(entry: str) -> dns.nameserver.Nameserver:
    host, port = split_nameserver(entry)
    return dns.nameserver.Do53Nameserver(host, port)


def _negative_ttl(response: object) -> float:
    for rrset in getattr(response, "authority", ()):
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL


def _texts(rrset: dns.rrset.RRset, kind: str) -> tuple[str, ...]:
    if kind == "TXT":
        return tuple(b"".join(r.strings).decode("utf-8", "replace") for r in rrset)
    if kind == "MX":
        ordered = sorted(rrset, key=lambda r: r.preference)
        return tuple(r.exchange.to_text(omit_final_dot=True).lower() for r in ordered)
    if kind == "PTR":
        return tuple(r.target.to_text(omit_final_dot=True).lower() for r in rrset)
    return tuple(r.to_text() for r in rrset)
