"""DKIM signing of our own users' mail: the `[dkim]` keys, the policy switch, and the signer.

The pipeline asks `DkimSigner.sign` for the DKIM-Signature fields of each forwarded copy, over the bytes
that copy leaves with (every qsift header edit and long-line fit made), and prepends them: nothing touches
the copy afterwards. The key is chosen by the From: domain, or failing that its nearest parent with a key,
so that `d=` aligns with the author domain for DMARC (RFC 7489 3.1.1, relaxed alignment). One signature
per key type the domain has: RSA for every verifier, Ed25519 (RFC 8463) beside it when configured, since
not every deployed verifier knows Ed25519 yet.

auth/dkim_signature.py makes the signatures (canonicalization, hashes; RSA and Ed25519 by OpenSSL, each
key parsed once, when the signer is made). It reads the copy as chunks and hashes the body as it
streams past, so only the header section is held in memory, however large the copy.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from qsift.auth.dkim_keys import KeyType, PrivateKey, load_configured_key
from qsift.auth.dkim_signature import (
    DkimKey,
    HeaderSectionError,
    parse_header_section,
    read_message,
    signature_field,
)
from qsift.auth.settings import DkimSettings

#: relaxed/simple (auth/dkim_signature.py makes no other), amavisd-new's default and the reference's
#: recommendation. Relaxed header canonicalization survives what relays do to header fields (refolding,
#: white space around the colon, case of the name). For the body, relaxed (rspamd's choice) would also
#: survive trailing white space stripped on the way, but costs more CPU: in dkimpy five to six times as
#: much as simple (66 against 12 ms for 1 MiB, measured with bench/dkim_sign.py). The body qsift signs is
#: the body it forwards, after every edit of its own, to an MTA that queues it as it is; what relaxed body
#: would forgive (white space inside lines changed by a later relay) is rare, and a list that edits the
#: body breaks either.
CANONICALIZATION = (b"relaxed", b"simple")
#: Signed once per instance present (RFC 6376 5.4.1's SHOULD list and amavisd-new's %signed_header_fields
#: value 1, plus List-Unsubscribe-Post for RFC 8058). Not Received, Return-Path, Authentication-Results or
#: qsift's own X- fields: relays add or rewrite them. Not Sender (mailing lists replace it; amavisd-new).
SIGNED = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
    "content-disposition", "content-language", "resent-date", "resent-from", "resent-sender",
    "resent-message-id", "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post",
    "list-subscribe", "list-post", "list-owner", "list-archive", "precedence", "auto-submitted",
    "original-message-id", "archived-at", "organization", "user-agent", "x-mailer",
)  # fmt: skip
#: Signed once more than they occur, present or not (RFC 6376 8.15): a second From (which would change
#: who the reader thinks wrote it), Subject, Date, Reply-To, To or Cc added on the way breaks the
#: signature. amavisd-new oversigns From, Date, Subject, Content-Type; rspamd always From, Reply-To,
#: Subject, To, Cc.
OVERSIGNED_ALWAYS = ("from", "subject", "date", "reply-to", "to", "cc", "content-type")
#: Signed once more than they occur when present (rspamd's "oversign existing"): not when absent, since
#: a mailing list adding its own List-Unsubscribe to our user's post must not break the signature.
OVERSIGNED_IF_PRESENT = ("list-unsubscribe", "list-unsubscribe-post", "mime-version", "message-id")


_SIGNED = frozenset(name.encode() for name in SIGNED)
_OVERSIGNED_ALWAYS = [name.encode() for name in OVERSIGNED_ALWAYS]
_OVERSIGNED_IF_PRESENT = [name.encode() for name in OVERSIGNED_IF_PRESENT]
#: A From: value that is one plain address, bare or after a plain display name, as most are: its domain
#: read without RFC 5322's full parser (email.utils.getaddresses, which takes longer than all the rest of
#: signing but the key's step), to the same result (tests/unit/auth/test_signing.py).
PLAIN_FROM = re.compile(
    rb"[ \t]*(?:[A-Za-z0-9 _-]*<(?P<named>[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9.-]+)>"
    rb"|(?P<bare>[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9.-]+))[ \t]*(?:\r\n)?"
)
_PLAIN_DOMAIN = re.compile(rb"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?")


@dataclass(frozen=True)
class SigningKey:
    """A configured key, read."""

    domain: str
    selector: str
    key: PrivateKey
    path: str


def load_signing_keys(settings: DkimSettings) -> tuple[SigningKey, ...]:
    """Every configured key, read; ConfigError names the file and what is wrong with it."""
    loaded = []
    for entry in settings.keys:
        where = f"the DKIM key {entry.key_file} ({entry.selector}._domainkey.{entry.domain})"
        key = load_configured_key(entry.key_file, where)
        loaded.append(SigningKey(entry.domain, entry.selector, key, entry.key_file))
    return tuple(loaded)


@dataclass(frozen=True)
class Signed:
    """What signing a copy came to: the fields to prepend (b"" for none), and if none, why."""

    fields: bytes
    reason: str = ""
    #: The signatures made, as "d=... s=... a=..." for the log.
    made: tuple[str, ...] = ()


class _Loaded(NamedTuple):
    key: SigningKey
    parsed: DkimKey
    #: "d=... s=... a=..." for the log.
    made: str


class DkimSigner:
    """Signs a message with the keys of its From: domain."""

    def __init__(self, keys: tuple[SigningKey, ...] = ()) -> None:
        self._by_domain: dict[str, list[SigningKey]] = {}
        for key in keys:
            chosen = self._by_domain.setdefault(key.domain, [])
            if all(k.key.type is not key.key.type for k in chosen):
                chosen.append(key)
        for chosen in self._by_domain.values():
            chosen.sort(key=lambda k: k.key.type is not KeyType.RSA)  # RSA on top: some verifiers read one
        # Each key parsed and described once: it is used for every message of its domain.
        self._loaded = {
            domain: [
                _Loaded(
                    k, DkimKey.from_private(k.key), f"d={k.domain} s={k.selector} a={k.key.type.algorithm}"
                )
                for k in chosen
            ]
            for domain, chosen in self._by_domain.items()
        }

    @property
    def has_keys(self) -> bool:
        return bool(self._by_domain)

    def keys_for(self, domain: str) -> list[SigningKey]:
        """The keys of `domain`, else of its nearest parent that has any."""
        return [loaded.key for loaded in self._loaded_for(domain)]

    def _loaded_for(self, domain: str) -> list[_Loaded]:
        labels = domain.lower().rstrip(".").split(".")
        for at in range(len(labels)):
            found = self._loaded.get(".".join(labels[at:]))
            if found:
                return found
        return []

    def sign(self, message: bytes) -> Signed:
        """The DKIM-Signature fields for `message` (as it will leave), or why there are none."""
        return self.sign_chunks((message,))

    def sign_chunks(self, chunks: Iterable[bytes]) -> Signed:
        """`sign` for a message read as chunks: only its header section is held."""
        # One pass over the message serves the From: lookup and every signature.
        message = read_message(chunks)
        try:
            headers = parse_header_section(message.header_section)
        except HeaderSectionError as exc:
            return Signed(b"", f"the header section cannot be read: {exc}")
        domain, why = author_domain(headers)
        if domain is None:
            return Signed(b"", why)
        keys = self._loaded_for(domain)
        if not keys:
            return Signed(b"", f"no DKIM key for {domain} or a parent domain")
        names, body_hash, now = header_names(headers), message.body_hash(), int(time.time())
        fields = [
            signature_field(headers, body_hash, names, k.domain, k.selector, dkim_key, now, message.newline)
            for k, dkim_key, _ in keys
        ]
        return Signed(b"".join(fields), made=tuple(loaded.made for loaded in keys))


def header_names(headers: list[list[bytes]]) -> list[bytes]:
    """The `h=` list for a message with these fields: each signed field once per instance, the
    oversigned ones once more."""
    present = [name.lower() for name, _ in headers]
    names = [name for name in present if name in _SIGNED]
    names += _OVERSIGNED_ALWAYS
    names += [name for name in _OVERSIGNED_IF_PRESENT if name in present]
    return names


def author_domain(headers: list[list[bytes]]) -> tuple[str | None, str]:
    """The From: domain (RFC 5322 3.6.2), or None and why there is none to sign for."""
    values = [value for name, value in headers if name.lower() == b"from"]
    if not values:
        return None, "no From: field"
    if len(values) > 1:
        return None, f"{len(values)} From: fields"
    plain = PLAIN_FROM.fullmatch(values[0])
    if plain:
        domain = (plain.group("named") or plain.group("bare")).partition(b"@")[2]
        if _PLAIN_DOMAIN.fullmatch(domain):
            return domain.rstrip(b".").lower().decode(), ""
    text = values[0].decode("utf-8", "replace")
    addresses = [address for _, address in email.utils.getaddresses([text]) if "@" in address]
    domains = {address.rpartition("@")[2].strip().rstrip(".").lower() for address in addresses}
    domains.discard("")
    if len(domains) != 1:
        return None, "From: has no address" if not domains else "From: has addresses in several domains"
    return domains.pop(), ""
