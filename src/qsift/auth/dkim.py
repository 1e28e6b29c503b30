"""DKIM verification of inbound mail (RFC 6376 §6): every DKIM-Signature, each an RFC 8601 result.

dkimpy does the canonicalization and the cryptography; this module decides what it is asked and what its
answers mean. Its async API (`dkim.asyncsupport`) imports aiodns, which qsift does not use, so the key is
fetched here with the shared `Resolver` (awaited, cached) and dkimpy's synchronous verifier is handed a
`dnsfunc` that answers from what was fetched, in a worker thread: the event loop never waits on DNS or on
hashing a large body.

Checked before dkimpy is asked, because dkimpy would accept them (RFC 8301 §3.1, RFC 6376 §8.2):
- `a=rsa-sha1` is an algorithm qsift does not support: `permerror`, the result RFC 6376 §6.1.1 gives one.
- `l=` shorter than the canonical body: a valid signature over part of the message, `policy`, which DMARC
  does not count (only `pass` aligns); an `l=` that covers the whole body is a normal signature.
- RSA keys under 1024 bits (RFC 8301 §3.2): `policy`.
Several TXT records at one selector (RFC 6376 §3.6.2.2 lets the verifier pick one or try each): each is
tried, up to `MAX_KEY_RECORDS`, and the signature passes if one key verifies it; else the first record's
outcome is reported.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from collections.abc import Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import InvalidTagValueList, parse_tag_value

from qsift.auth.dns import DnsTemporaryError, Resolver
from qsift.auth.results import MethodResult
from qsift.spool import MessageBody

#: Signatures verified per message, topmost first (rspamd's DEFAULT_MAX_SIGS): each costs a DNS lookup
#: and a pass over the body, and a sender gains nothing from more than a few.
MAX_SIGNATURES = 5
#: Key records tried at one selector.
MAX_KEY_RECORDS = 3
#: RFC 8301 §3.2: verifiers MUST NOT accept RSA keys shorter than this.
MIN_RSA_BITS = 1024
#: RFC 6008 §2: header.b carries at least 8 characters of b=, more when needed to tell signatures apart.
B_PREFIX = 8

#: Largest message verified. dkimpy holds a message about four times over (the bytes, the parsed body, the
#: canonical body, the hashing copy), and a spooled body is read whole; past this the signatures get
#: `dkim=policy` instead of costing a worker 100 MiB. Webmail attachment limits (25 MB, ~34 MB encoded)
#: stay under it, so real large mail still verifies.
MAX_VERIFY_SIZE = 40 * 1024 * 1024
#: Where the header block of a message too large to verify is looked for.
HEADER_LIMIT = 256 * 1024

_KEY_TYPES = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}


async def verify_dkim(resolver: Resolver, message: bytes) -> tuple[MethodResult, ...]:
    """One `dkim=` result per DKIM-Signature of `message` (CRLF or LF), `dkim=none` when it has none.

    Signatures past MAX_SIGNATURES are not verified: one `dkim=policy` result counts them."""
    try:
        verifier = await asyncio.to_thread(dkim.DKIM, message)
    except dkim.DKIMException as exc:
        return (MethodResult("dkim", "neutral", f"header block does not parse: {_text(exc)}"),)
    fields = _signature_fields(verifier)
    if not fields:
        return (MethodResult("dkim", "none"),)
    prefixes = _b_prefixes([_tags(value).get(b"b", b"") for value in fields])
    # The keys are looked up at once (a dead DNS costs one timeout, not one per signature); dkimpy's
    # verifier keeps per-signature state, so its checks take turns.
    turns = asyncio.Lock()
    checks = (
        _verify_signature(resolver, verifier, turns, index, fields[index], prefixes[index])
        for index in range(min(len(fields), MAX_SIGNATURES))
    )
    results = list(await asyncio.gather(*checks))
    if len(fields) > MAX_SIGNATURES:
        skipped = len(fields) - MAX_SIGNATURES
        reason = f"{skipped} more signature{'s' * (skipped > 1)} not verified (limit {MAX_SIGNATURES})"
        results.append(MethodResult("dkim", "policy", reason))
    return tuple(results)


async def verify_dkim_body(
    resolver: Resolver, body: MessageBody, max_size: int = MAX_VERIFY_SIZE
) -> tuple[MethodResult, ...]:
    """`verify_dkim` of a message held by the spool (read in a worker thread), within `max_size`.

    A larger message is not verified: each signature gets `dkim=policy` with its header.d and header.s."""
    if body.size <= max_size:
        return await verify_dkim(resolver, await asyncio.to_thread(body.head, body.size))
    head = await asyncio.to_thread(body.head, HEADER_LIMIT)
    header_block = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0] + b"\r\n\r\n"
    try:
        fields = _signature_fields(dkim.DKIM(header_block))
    except dkim.DKIMException as exc:
        return (MethodResult("dkim", "neutral", f"header block does not parse: {_text(exc)}"),)
    if not fields:
        return (MethodResult("dkim", "none"),)
    reason = f"message of {body.size} bytes is over the verification limit of {max_size}"
    prefixes = _b_prefixes([_tags(value).get(b"b", b"") for value in fields])
    return tuple(
        MethodResult("dkim", "policy", reason, _properties(_tags(field), prefix))
        for field, prefix in zip(fields, prefixes, strict=True)
    )


def _signature_fields(verifier: dkim.DKIM) -> list[bytes]:
    return [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]


async def _verify_signature(
    resolver: Resolver, verifier: dkim.DKIM, turns: asyncio.Lock, index: int, field: bytes, b_prefix: str
) -> MethodResult:
    try:
        tags = parse_tag_value(field)
    except InvalidTagValueList as exc:
        return MethodResult("dkim", "permerror", f"signature tags do not parse: {_text(exc)}")
    properties = _properties(tags, b_prefix)

    def result(value: str, reason: str = "") -> MethodResult:
        return MethodResult("dkim", value, reason, properties)

    if tags.get(b"a") == b"rsa-sha1":
        return result("permerror", "rsa-sha1 is not accepted (RFC 8301)")
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException as exc:
        return result("permerror", _text(exc))
    if not tags.get(b"l", b"0").isdigit():
        return result("permerror", "l= is not a number")
    if b"from" not in (name.strip().lower() for name in tags[b"h"].split(b":")):
        return result("permerror", "From is not signed")  # RFC 6376 §6.1.1
    name = f"{_text(tags[b's'])}._domainkey.{_text(tags[b'd'])}"
    try:
        records = await resolver.txt(name)
    except DnsTemporaryError as exc:
        return result("temperror", f"key lookup: {exc}")
    if not records:
        return result("permerror", f"no key at {name}")
    async with turns:
        outcomes = [
            await asyncio.to_thread(_check, verifier, index, tags, name, record)
            for record in records[:MAX_KEY_RECORDS]
        ]
    passed = [outcome for outcome in outcomes if outcome[0] == "pass"]
    return result(*(passed or outcomes)[0])


def _check(
    verifier: dkim.DKIM, index: int, tags: dict[bytes, bytes], name: str, record: str
) -> tuple[str, str]:
    """(result, reason) of signature `index` against one key record; runs in a worker thread."""
    key = record.encode("utf-8", "replace")
    try:
        _, bits, key_type, _ = dkim.evaluate_pk(name.encode(), key)
    except (dkim.DKIMException, binascii.Error, ValueError) as exc:
        return "permerror", f"bad key: {_text(exc)}"
    if _KEY_TYPES[tags[b"a"]] != key_type:
        return "permerror", f"key type {_text(key_type)} does not match a={_text(tags[b'a'])}"
    refusal = _key_refusal(parse_tag_value(key), tags)
    if refusal:
        return "permerror", refusal
    if key_type == b"rsa" and bits < MIN_RSA_BITS:
        return "policy", f"{bits}-bit key is too short (RFC 8301)"
    try:
        valid = verifier.verify(index, dnsfunc=lambda _name, timeout=5: key)
    except dkim.DKIMException as exc:
        # dkimpy tells a changed body from its other refusals (a bad c=, a key for another service)
        # only in its message.
        if "body hash mismatch" in str(exc):
            return "fail", "body hash mismatch"
        return "permerror", _text(exc)
    if not valid:
        return "fail", "signature does not verify"
    if b"l" in tags and int(tags[b"l"]) < _canonical_body_length(verifier, tags):
        return "policy", f"body length limit l={int(tags[b'l'])} leaves part of the body unsigned"
    return "pass", ""


def _key_refusal(key: dict[bytes, bytes], tags: dict[bytes, bytes]) -> str:
    """Why a key record's own limits (RFC 6376 §3.6.1 h= and t=s) exclude this signature, or ""."""
    hashes = [name.strip() for name in key.get(b"h", b"sha256").split(b":")]
    if b"sha256" not in hashes:
        return f"key allows only h={_text(key[b'h'])}"
    flags = [flag.strip() for flag in key.get(b"t", b"").split(b":")]
    domain = tags[b"d"].lower()
    identity_domain = tags.get(b"i", b"@" + domain).rpartition(b"@")[2].lower()
    if b"s" in flags and identity_domain != domain:
        return "key with t=s does not cover a subdomain in i="
    return ""


def _canonical_body_length(verifier: dkim.DKIM, tags: dict[bytes, bytes]) -> int:
    policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    return len(policy.canonicalize_body(verifier.body))


def _tags(field: bytes) -> dict[bytes, bytes]:
    try:
        tags: dict[bytes, bytes] = parse_tag_value(field)
    except InvalidTagValueList:
        return {}
    return tags


def _properties(tags: dict[bytes, bytes], b_prefix: str) -> tuple[tuple[str, str], ...]:
    named = (("header.d", _text(tags.get(b"d", b""))), ("header.s", _text(tags.get(b"s", b""))))
    return (
        *((key, value) for key, value in named if value),
        *((("header.b", b_prefix),) if b_prefix else ()),
    )


def _b_prefixes(values: Sequence[bytes]) -> list[str]:
    """The shortest prefix of each b= (at least B_PREFIX characters) that no other signature shares."""
    signatures = [_text(b"".join(value.split())) for value in values]
    prefixes = []
    for index, signature in enumerate(signatures):
        others = signatures[:index] + signatures[index + 1 :]
        length = B_PREFIX
        while length < len(signature) and any(other.startswith(signature[:length]) for other in others):
            length += 1
        prefixes.append(signature[:length])
    return prefixes


def _text(value: object) -> str:
    """dkimpy's bytes and exceptions as printable ASCII for a reason or property."""
    # dkimpy formats its bytes into its messages: "missing b'b'=" reads "missing b=".
    text = (
        value.decode("ascii", "replace")
        if isinstance(value, bytes)
        else re.sub(r"b'([^']*)'", r"\1", str(value))
    )
    return "".join(char if " " <= char <= "~" else "?" for char in text)
