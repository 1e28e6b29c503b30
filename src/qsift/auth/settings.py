"""`[auth]` and `[dns]`: the checks of inbound mail's authentication (DKIM, SPF, DMARC, ARC), what they
are called, and whom they ask. Declared apart from the checks so that loading the configuration does not
load dnspython, dkimpy or OpenSSL: a site without the checks never does.

Off by default, as amavisd-new's DKIM verification is: the checks ask DNS for every message, and a host
whose resolver is unreachable would wait out the timeout on each one. A site turns them on with
`[auth] check = true` (and `[dns]` when /etc/resolv.conf is not the resolver to ask); a policy bank can
turn them off or on for its mail. Mail whose policy is originating (our users' own) is never checked:
it is signed (`[dkim]`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from qsift.declare import COUNT, STRINGS, section, setting


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
