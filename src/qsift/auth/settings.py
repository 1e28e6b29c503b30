"""`[auth]`: the checks of inbound mail's authentication (DKIM, SPF, DMARC, ARC) and what they are called.

Off by default, as amavisd-new's DKIM verification is: the checks ask DNS for every message, and a host
whose resolver is unreachable would wait out the timeout on each one. A site turns them on with
`[auth] check = true` (and `[dns]` when /etc/resolv.conf is not the resolver to ask); a policy bank can
turn them off or on for its mail. Mail whose policy is originating (our users' own) is never checked:
it is signed (`[dkim]`).
"""

from __future__ import annotations

from dataclasses import dataclass

from qsift.declare import STRINGS, section, setting


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
