"""ARC (RFC 8617): validating the chain of inbound mail, and sealing mail qsift passes on for others.

dkimpy validates and seals; it has no asynchronous ARC API. So the keys every ARC-Seal and
ARC-Message-Signature names are fetched first with the shared `Resolver` (awaited, cached, at most
`MAX_INSTANCES` sets), and `dkim.arc_verify` runs in a worker thread with a `dnsfunc` that answers from
them: the event loop neither blocks on DNS nor on the hashing.

ARC has no temperror (RFC 8617 §4.4 lists none, pass, fail): a key that could not be fetched for now
makes the chain fail, and `ArcValidation.temporary` says so, so that a caller can decline to seal a
cv=fail it may owe to its own DNS.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from qsift.auth import rsa_openssl
from qsift.auth.dns import DnsTemporaryError, Resolver
from qsift.auth.results import MethodResult

rsa_openssl.install()  # ARC seals are RSA signatures too

#: RFC 8617 §4.2.1: instance numbers run from 1 to 50; a longer chain fails.
MAX_INSTANCES = 50
_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_SIGNATURES = (b"arc-seal", b"arc-message-signature")
_HAS_ARC = re.compile(rb"(?im)^arc-(seal|message-signature|authentication-results)[ \t]*:")


@dataclass(frozen=True)
class ArcValidation:
    """The chain as found: the `arc=` result, and what a seal qsift adds would say of it."""

    result: MethodResult
    #: The cv= of the next seal (RFC 8617 §4.1.3): "none" without a chain, "pass" or "fail".
    cv: str
    #: d= of the newest ARC-Seal, for a list of trusted sealers (RFC 8617 §7.2); "" without a chain.
    sealer: str = ""
    #: The chain failed only because a key lookup timed out or failed for now.
    temporary: bool = False


async def validate_arc(resolver: Resolver, message: bytes, remote_ip: str = "") -> ArcValidation:
    """`arc=pass|fail|none` of `message` (CRLF or LF), with header.oldest-pass and smtp.remote-ip."""
    try:
        headers, _ = await asyncio.to_thread(dkim.rfc822_parse, message)
    except dkim.DKIMException as exc:
        if _HAS_ARC.search(message.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]):
            return _failed(f"header block does not parse: {exc}", "")
        return _none()
    sets = [(name.lower(), _tags(value)) for name, value in headers if name.lower() in _ARC_FIELDS]
    if not sets:
        return _none()
    newest_seal = max((tags for name, tags in sets if name == b"arc-seal"), key=_instance, default={})
    sealer = newest_seal.get(b"d", b"").decode("ascii", "replace")
    # Each set is three fields: past 3 x 50 some instance is duplicated, which fails the chain anyway
    # (RFC 8617 §5.2); it is said here, before a hostile header block has us look up a key per field.
    if max(_instance(tags) for _, tags in sets) > MAX_INSTANCES or len(sets) > 3 * MAX_INSTANCES:
        return _failed(f"more than {MAX_INSTANCES} ARC sets", sealer)
    names = {_key_name(tags) for name, tags in sets if name in _SIGNATURES} - {""}
    try:
        answers = dict(zip(names, await asyncio.gather(*(resolver.txt(n) for n in names)), strict=True))
    except DnsTemporaryError as exc:
        return ArcValidation(
            MethodResult("arc", "fail", f"key lookup: {exc}"), "fail", sealer, temporary=True
        )
    cv, found, reason = await asyncio.to_thread(_arc_verify, message, answers)
    if cv == dkim.CV_Pass:
        properties = [("header.oldest-pass", str(_oldest_pass(found)))]
        properties += [("smtp.remote-ip", remote_ip)] if remote_ip else []
        return ArcValidation(MethodResult("arc", "pass", "", tuple(properties)), "pass", sealer)
    if cv == dkim.CV_None:  # ARC-named fields, but none with an instance: no set to judge
        return _none()
    return _failed(str(reason), sealer)


@dataclass(frozen=True)
class ArcKey:
    """The key an ARC set is sealed with: published at `selector._domainkey.domain` like a DKIM key."""

    domain: str
    selector: str
    #: PEM (PKCS#1 or PKCS#8) RSA private key: dkimpy seals with rsa-sha256 only.
    private_key: bytes


def sign_arc(
    message: bytes, authserv_id: str, auth_results_field: bytes, key: ArcKey, linesep: bytes = b"\r\n"
) -> list[bytes]:
    """The ARC set to prepend, topmost first (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results),
    each field ending in `linesep`; [] when no set can be added (RFC 8617 §5.1: a chain that ended).

    `auth_results_field` is qsift's own `Authentication-Results: authserv-id; ...` for `message`, with its
    `arc=` result (the seal's cv=); it becomes the AAR and is not added to `message` here. CPU work for a
    worker thread (`asyncio.to_thread`)."""
    field = auth_results_field.rstrip(b"\r\n") + linesep
    lines: list[bytes] = dkim.arc_sign(
        field + message,
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private_key,
        # authres lowercases the authserv-id it parses; dkimpy compares it with this as given.
        authserv_id.lower().encode("ascii"),
        linesep=linesep,
    )
    return lines


def _arc_verify(
    message: bytes, answers: dict[str, tuple[str, ...]]
) -> tuple[bytes | None, list[dict[str, object]], str]:
    """dkimpy's chain validation with keys from `answers`; runs in a worker thread."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = answers.get(name.decode("ascii", "replace").lower().rstrip("."), ())
        return records[0].encode("utf-8", "replace") if records else None

    cv, found, reason = dkim.arc_verify(message, dnsfunc=lookup)
    return cv, found, reason


def _oldest_pass(found: list[dict[str, object]]) -> int:
    """RFC 8617 §5.2 step 6: 0 when every AMS validates, else the instance above the newest that failed."""
    for validated in found:  # newest instance first
        if not validated["ams-valid"]:
            return int(str(validated["instance"])) + 1
    return 0


def _none() -> ArcValidation:
    return ArcValidation(MethodResult("arc", "none"), "none")


def _failed(reason: str, sealer: str) -> ArcValidation:
    # dkimpy formats bytes into its messages: "t= value is in the future (b'123')".
    text = "".join(char if " " <= char <= "~" else "?" for char in re.sub(r"b'([^']*)'", r"\1", reason))
    return ArcValidation(MethodResult("arc", "fail", text), "fail", sealer)


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except InvalidTagValueList:
        return {}
    return tags


def _instance(tags: dict[bytes, bytes]) -> int:
    value = tags.get(b"i", b"")
    return int(value) if value.isdigit() else 0


def _key_name(tags: dict[bytes, bytes]) -> str:
    selector, domain = tags.get(b"s", b""), tags.get(b"d", b"")
    if not selector or not domain:
        return ""
    return f"{selector.decode('ascii', 'replace')}._domainkey.{domain.decode('ascii', 'replace')}".lower()
