"""ARC sealing of mail qsift passes on for others: the `[arc]` key, the policy switch, and the seal.

A mailing list or forwarding host changes or re-sends mail so that its DKIM or SPF no longer passes at
the next receiver. An ARC set (RFC 8617) carries qsift's Authentication-Results to that receiver, signed,
so that a receiver who trusts qsift's domain as a sealer can judge the mail by what qsift found. The set
is made over the copy as it leaves (every header edit, long-line fit and DKIM signature made) and goes on
top of it. Only inbound mail whose checks ran has results to carry: the seal's cv= is the `arc=` qsift
found, as RFC 8617 §5.1 asks.

One key, RSA: dkimpy seals with rsa-sha256 alone (RFC 8617 §5.1.1.2 names no other algorithm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dkim

from qsift.auth.arc import ArcKey, sign_arc
from qsift.auth.dkim_keys import KeyType, load_configured_key
from qsift.auth.headers import remove_authentication_results, render_authentication_results
from qsift.auth.results import AuthResults
from qsift.auth.settings import ArcSettings
from qsift.errors import ConfigError


def load_arc_key(settings: ArcSettings) -> ArcKey | None:
    """The configured sealing key, read, or None without one; ConfigError names the file and what is
    wrong with it (missing, unreadable, not a key, not RSA), or the setting missing beside the others.

    Checked here, at start, rather than as a rule of the section: each key of a configuration is valid
    alone (tests/unit/test_config_check.py), and the three are one thing."""
    given = {"domain": settings.domain, "selector": settings.selector, "key_file": settings.key_file}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(
            f"[arc] {' and '.join(missing)} unset: a sealing key needs domain, selector and key_file"
        )
    where = f"the ARC key {settings.key_file} ({settings.selector}._domainkey.{settings.domain})"
    key = load_configured_key(settings.key_file, where)
    if key.type is not KeyType.RSA:
        raise ConfigError(f"{where} is an {key.describe()} key: ARC seals are rsa-sha256, give an RSA key")
    return ArcKey(settings.domain, settings.selector, key.signing)


@dataclass(frozen=True)
class Sealed:
    """What sealing a copy came to: the ARC set to prepend (b"" for none), and if none, why."""

    fields: bytes
    reason: str = ""


def unsealable(auth: AuthResults) -> str:
    """Why a copy with these results gets no seal, "" when it may get one."""
    if not auth.all:
        return "the inbound checks did not run"
    if auth.arc is None:
        return "its ARC chain was not validated (too large to verify)"
    if not auth.arc_cv:
        # cv=fail would end the chain for good (RFC 8617 §5.1.2); the failure may be our DNS's.
        return f"its ARC chain failed for now ({auth.arc.reason}); not sealed with cv=fail"
    return ""


def seal(key: ArcKey, message: bytes, auth: AuthResults) -> Sealed:
    """The ARC set for `message` (the copy as it leaves, carrying qsift's Authentication-Results field)
    with the results `auth`, its lines ending as the message's do. CPU work (RSA, hashing the body)."""
    why = unsealable(auth)
    if why:
        return Sealed(b"", why)
    newline = b"\r\n" if b"\r\n" in message[:4096] else b"\n"
    # Over the transport form (the forward sends CRLF), as DKIM signing is. Our own field is taken out
    # and given to sign_arc, which puts it back on top: dkimpy reads every field of our authserv-id, and
    # two would be two arc= results, a failed chain. Authentication-Results is in neither signature.
    crlf = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    end = crlf.find(b"\r\n\r\n")
    cut = end + 2 if end >= 0 else len(crlf)  # the header section alone is read for the field
    without = remove_authentication_results(crlf[:cut], auth.authserv_id) + crlf[cut:]
    field = render_authentication_results(auth.authserv_id, auth.all)
    try:
        lines = sign_arc(without, auth.authserv_id, field, key)
    except dkim.DKIMException as exc:
        return Sealed(b"", f"dkimpy cannot seal it: {exc}")
    if not lines:
        return Sealed(b"", "the chain it carries has ended (RFC 8617 §5.1)")
    # Relaxed canonicalization (the only one ARC-Seal has) reads the folds as white space: the set may
    # end its lines as the rest of the copy does.
    return Sealed(b"".join(lines).replace(b"\r\n", newline))
