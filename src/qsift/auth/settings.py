"""`[auth]`, `[dns]`, `[dkim]` and `[arc]`: the checks of inbound mail's authentication (DKIM, SPF, DMARC,
ARC) and whom they ask, and the keys that sign and seal. Declared apart from the code that uses them so
that loading the configuration does not load dnspython, dkimpy or OpenSSL: a site that neither checks,
signs nor seals never does.

Off by default, as amavisd-new's DKIM verification is: the checks ask DNS for every message, and a host
whose resolver is unreachable would wait out the timeout on each one. A site turns them on with
`[auth] check = true` (and `[dns]` when /etc/resolv.conf is not the resolver to ask); a policy bank can
turn them off or on for its mail. Mail whose policy is originating (our users' own) is never checked:
it is signed (`[dkim]`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qsift.declare import COUNT, STRINGS, optional, section, setting, tables


def _domains(entries: list[str]) -> tuple[str, ...]:
    for entry in entries:
        if not entry or " " in entry or entry.startswith(".") or "@" in entry:
            raise ValueError(f"{entry!r} is not a domain")
    return tuple(entry.lower().rstrip(".") for entry in entries)


@dataclass(frozen=True)
class AuthPolicy:
    """What a policy bank may change."""

    check: bool = setting(
        False,
        "Check DKIM, SPF, DMARC and ARC on mail that is not originating and add an Authentication-Results "
        "field; the dmarc category comes of it.",
    )


@dataclass(frozen=True)
class AuthSettings:
    authserv_id: str = setting(
        "",
        "The authserv-id of the Authentication-Results field qsift adds, and of those it removes from "
        'arriving mail as forged; "" for myhostname.',
    )
    arc_trusted_sealers: tuple[str, ...] = setting(
        [],
        "Domains (the d= of an ARC-Seal) whose valid ARC chain vouches for mail that fails DMARC, as a "
        "mailing list or forwarder you trust breaks it: the domain's p=reject or p=quarantine is not "
        "applied (RFC 7489 section 6.7, RFC 8617 section 7.2).",
        kind=STRINGS,
        parse=_domains,
    )
    policy: AuthPolicy = section(AuthPolicy, "", flat=True)


def _nameservers(entries: list[str]) -> tuple[str, ...]:
    for entry in entries:
        split_nameserver(entry)
    return tuple(entries)


def split_nameserver(entry: str) -> tuple[str, int]:
    """`127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]:5353`; ValueError otherwise."""
    host, port = entry, 53
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = int(rest.removeprefix(":")) if rest.startswith(":") and rest[1:].isdigit() else -1
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = int(port_text) if port_text.isdigit() else -1
    ipaddress.ip_address(host)  # raises ValueError for a name: a resolver is given by address
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {entry!r}")
    return host, port


@dataclass(frozen=True)
class DnsSettings:
    """`[dns]`: where the checks' DNS questions go."""

    nameservers: tuple[str, ...] = setting(
        [],
        'Addresses of the resolvers to ask, each "ip" or "ip:port" ("[ipv6]:port"); empty: those of '
        "/etc/resolv.conf.",
        kind=STRINGS,
        parse=_nameservers,
    )
    timeout: float = setting(5.0, "Seconds one question may take, retries included, before temperror.")
    cache_size: int = setting(
        10_000, "Answers kept per worker (each for its TTL, at most an hour).", kind=COUNT
    )


#: RFC 8301: signers SHOULD use keys of at least 2048 bits.
DEFAULT_RSA_BITS = 2048
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def domain_name(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not name or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"not a domain name: {text!r}")
    return name


def selector_name(text: str) -> str:
    name = text.strip().lower()
    if not name or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"not a selector (DNS labels): {text!r}")
    return name


@dataclass(frozen=True)
class DkimKeyEntry:
    """One `[[dkim.keys]]` table: a private key and where its public half is published."""

    domain: str = setting(
        doc="The signing domain (d=): mail whose From: domain is this one or under it.", parse=domain_name
    )
    selector: str = setting(
        doc="The selector (s=): the record is at SELECTOR._domainkey.DOMAIN.", parse=selector_name
    )
    key_file: str = setting(
        doc="The PEM private key (RSA or Ed25519, the file says which), readable by qsift alone."
    )


@dataclass(frozen=True)
class SigningSwitches:
    """The policy's part in signing, which a policy bank may change (`dkim = { sign = false }`)."""

    sign: bool = setting(
        True,
        "Sign originating mail (the ORIGINATING bank's, or a bank with originating = true) whose From: "
        "domain or a parent of it has a key.",
    )


@dataclass(frozen=True)
class DkimSettings:
    """`[dkim]`: the signing keys and whether the base policy signs."""

    keys: tuple[DkimKeyEntry, ...] = tables(
        DkimKeyEntry,
        "The signing keys. Per domain, the first RSA and the first Ed25519 key listed sign; the others are "
        "only shown and tested (a key being rotated in or out).",
    )
    switches: SigningSwitches = section(SigningSwitches, "", flat=True)

    @staticmethod
    def config_rules(
        values: Mapping[str, Any], written: Collection[str]
    ) -> Iterator[tuple[tuple[str | int, ...], str]]:
        """A selector names one key per domain."""
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(values.get("keys", ())):
            where = (entry.domain, entry.selector)
            if where in seen:
                yield (
                    ("keys", index, "selector"),
                    f"{entry.selector} for {entry.domain} is [[dkim.keys]] #{seen[where] + 1}'s too",
                )
            seen.setdefault(where, index)


@dataclass(frozen=True)
class SealingSwitches:
    """The policy's part in sealing, which a policy bank may change (`arc = { seal = true }`)."""

    seal: bool = setting(
        False,
        "Add an ARC set (RFC 8617) to checked inbound mail as it is passed on, carrying qsift's "
        "Authentication-Results to the next receiver: for a bank of list or forwarding traffic.",
    )


@dataclass(frozen=True)
class ArcSettings:
    """`[arc]`: the sealing key and whether the base policy seals."""

    domain: str = setting(
        "",
        "The sealing domain (d=); the public key is at SELECTOR._domainkey.DOMAIN.",
        parse=optional(domain_name),
    )
    selector: str = setting("", "The selector (s=).", parse=optional(selector_name))
    key_file: str = setting(
        "", "The PEM RSA private key (dkimpy seals with rsa-sha256 only); empty: nothing is sealed."
    )
    switches: SealingSwitches = section(SealingSwitches, "", flat=True)
