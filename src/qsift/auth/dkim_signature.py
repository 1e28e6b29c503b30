"""The DKIM-Signature field of a message, made by hand: relaxed header and simple body canonicalization
(RFC 6376 3.4.2, 3.4.3), the tag list (3.5), the hashes (3.7), rsa-sha256 or ed25519-sha256 (RFC 8463).

Sans-IO: the message comes in as chunks (`MessageReader.feed`), the time as `timestamp`; the field comes
out as bytes. The body is hashed as it streams past, so only the header section is ever held; the key's
step is OpenSSL's (the `cryptography` package), on a key parsed once.

Why not dkimpy, which verifies (auth/dkim.py): its signer splits the whole message into lines, joins
them again and canonicalizes every header field, in Python. With OpenSSL doing its RSA step that was
still 0.5 of the 0.78 ms an RSA signature cost (docs/benchmarks.md), where issue 12 allows 0.37 in all
(10 % of qsift's own cost per message). The field made here is dkimpy's to the byte (same tags in the
same order, folded as its `fold` folds), so a verifier that took dkimpy's signatures takes these;
tests/unit/auth/test_dkim_signature.py checks it on random messages, and that dkimpy and libopendkim
verify every one (libopendkim: but for VT and FF in signed fields, which the two libraries read
differently; `relaxed_value`).

What dkimpy's parser does and this one does too: every line end (CRLF, bare LF, bare CR) counts as CRLF,
the transport form (RFC 6376 5.3); a line `From ...` with no colon (an mbox separator) in the header
section is skipped; the header section ends at the first empty line or with the message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from qsift.auth.dkim_keys import KeyType, PrivateKey

CRLF = b"\r\n"
FIELD_NAME = b"DKIM-Signature"
#: The first bytes of a message looked at to choose the line end of the field made for it.
NEWLINE_PROBE = 4096
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
_WSP = re.compile(rb"[\t ]+")
# dkimpy's RE_BTAG: the b= tag's value, folded or not, removed for the header hash (RFC 6376 3.7).
_FWS = rb"(?:(?:\s*\r?\n)?\s+)?"
_B_VALUE = re.compile(rb"([;\s]b" + _FWS + rb"=)(?:" + _FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")
#: dkimpy puts this in b= before folding, so that b= starts a line of its own and the real value,
#: put in after hashing, folds below it without moving any line above it.
_B_PLACEHOLDER = b"0" * 60


class HeaderSectionError(ValueError):
    """The header section has a line that is neither a field, a continuation nor an mbox From_ line."""


@dataclass(frozen=True)
class DkimKey:
    """A private key, parsed: `sign` makes the signature over the header hash's SHA-256 digest."""

    algorithm: bytes
    sign: Callable[[bytes], bytes]

    @classmethod
    def from_private(cls, private: PrivateKey) -> DkimKey:
        if private.type is KeyType.ED25519:
            # RFC 8463 3: Ed25519 (pure) over the SHA-256 digest, not over the data itself.
            seed = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(private.signing))
            return cls(b"ed25519-sha256", seed.sign)
        # dkim_keys labels a PKCS#1 body PRIVATE KEY too; the DER reader takes PKCS#1 and PKCS#8 alike.
        der = base64.b64decode(b"".join(private.signing.splitlines()[1:-1]))
        loaded = serialization.load_der_private_key(der, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise TypeError("not an RSA private key")

        pkcs1, sha256 = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

        def sign_rsa(digest: bytes) -> bytes:
            return loaded.sign(digest, pkcs1, sha256)

        return cls(b"rsa-sha256", sign_rsa)


class MessageReader:
    """Reads a message as chunks: keeps its header section, hashes its body (simple canonicalization)."""

    def __init__(self) -> None:
        self._pending_cr = False
        self._head = bytearray()
        self._in_body = False
        self._start = b""
        self._body = hashlib.sha256()
        self._trailing_crlfs = 0
        self.header_section = b""

    def feed(self, chunk: bytes) -> None:
        if len(self._start) < NEWLINE_PROBE:
            self._start += chunk[: NEWLINE_PROBE - len(self._start)]
        self._take(self._transport_form(chunk))

    def close(self) -> None:
        if self._pending_cr:
            self._pending_cr = False
            self._take(CRLF)
        if not self._in_body:  # no empty line: all of it is the header section, the body is empty
            self.header_section = bytes(self._head)
            if self.header_section and not self.header_section.endswith(CRLF):
                self.header_section += CRLF
            self._in_body = True

    @property
    def newline(self) -> bytes:
        """The message's own line end, for the field made for it (what DkimSigner has always used)."""
        return CRLF if CRLF in self._start else b"\n"

    def body_hash(self) -> bytes:
        """The body's SHA-256 (RFC 6376 3.4.3: trailing empty lines ignored, one CRLF at the end);
        after `close`."""
        final = self._body.copy()
        final.update(CRLF)
        return final.digest()

    def _transport_form(self, chunk: bytes) -> bytes:
        """`chunk` with every line end CRLF; a CR at its end waits for the next chunk's first byte."""
        if self._pending_cr:
            self._pending_cr = False
            chunk = CRLF + (chunk[1:] if chunk.startswith(b"\n") else chunk)
        if chunk.endswith(b"\r"):
            self._pending_cr = True
            chunk = chunk[:-1]
        if b"\r" not in chunk:
            return chunk.replace(b"\n", CRLF)
        # Every CR dropped and every LF made CRLF gives the chunk back only if all its line ends were
        # CRLF (measured: a third of the time of counting CRLF, CR and LF, which was as long as hashing).
        if chunk.replace(b"\r", b"").replace(b"\n", CRLF) == chunk:
            return chunk
        return _LINE_END.sub(CRLF, chunk)

    def _take(self, data: bytes) -> None:
        if self._in_body:
            self._hash_body(data)
            return
        # The header section is looked for in the chunk itself while it is the first (the usual case: no
        # copy); only a section longer than a chunk is gathered.
        searched = max(0, len(self._head) - 3)
        if self._head:
            self._head += data
        found = self._header_end(self._head or data, searched)
        if found < 0:
            if not self._head:
                self._head = bytearray(data)
            return
        whole = bytes(self._head) if self._head else data
        self.header_section = whole[:found]
        self._head = bytearray()
        self._in_body = True
        self._hash_body(whole, found + 2)

    @staticmethod
    def _header_end(data: bytes | bytearray, searched: int) -> int:
        """Where the header section ends (after its last CRLF), -1 if not yet in `data`."""
        if data.startswith(CRLF):
            return 0
        found = data.find(b"\r\n\r\n", searched)
        return found if found < 0 else found + 2

    def _hash_body(self, data: bytes, start: int = 0) -> None:
        # Empty lines at the end are held back (counted) until a line with text follows them.
        text_end = len(data.rstrip(b"\r\n"))
        if text_end <= start:
            self._trailing_crlfs += (len(data) - start) // 2
            return
        if self._trailing_crlfs:
            self._body.update(CRLF * self._trailing_crlfs)
        self._body.update(memoryview(data)[start:text_end])
        self._trailing_crlfs = (len(data) - text_end) // 2


def read_message(chunks: Iterable[bytes]) -> MessageReader:
    """A reader fed every chunk and closed."""
    reader = MessageReader()
    for chunk in chunks:
        reader.feed(chunk)
    reader.close()
    return reader


def parse_header_section(section: bytes) -> list[list[bytes]]:
    """The fields, as [name, value] with the value's line ends (CRLF) kept, in order (dkimpy's form)."""
    fields: list[list[bytes]] = []
    for number, line in enumerate(section.split(CRLF)[:-1] if section else (), start=1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise HeaderSectionError("the first line is a continuation line, of no field")
            fields[-1][1] += line + CRLF
            continue
        found = _FIELD_NAME.match(line)
        if found is not None:
            fields.append([found.group(1), line[found.end() :] + CRLF])
        elif not line.startswith(b"From "):
            raise HeaderSectionError(f"line {number} is not a header field: {line[:60]!r}")
    return fields


def relaxed_value(value: bytes) -> bytes:
    """RFC 6376 3.4.2: unfolded, runs of white space one space, none at either end (the regular
    expression only where there is a run to shorten: most values have none).

    As dkimpy, VT and FF at the ends are stripped too (Python's `strip`), though the RFC's WSP is SP and
    HTAB only; libopendkim has a third reading (tests/unit/auth/test_dkim_signature.py). They are
    control characters RFC 5322 allows only as obsolete syntax: qsift signs them as it always has."""
    unfolded = value.replace(CRLF, b"")
    if b"\t" in unfolded or b"  " in unfolded:
        unfolded = _WSP.sub(b" ", unfolded)
    return unfolded.strip()


def signed_fields(fields: list[list[bytes]], names: list[bytes]) -> bytes:
    """The header hash's input for `names` (lowercase; RFC 6376 5.4.2: a name listed again takes the
    next instance up, a name with none left takes nothing), relaxed, each line ending CRLF."""
    instances: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        instances.setdefault(name.lower(), []).append(value)
    taken = bytearray()
    for name in names:
        left = instances.get(name)
        if left:
            taken += name + b":" + relaxed_value(left.pop()) + CRLF
    return bytes(taken)


def signature_field(
    fields: list[list[bytes]],
    body_hash: bytes,
    names: list[bytes],
    domain: str,
    selector: str,
    key: DkimKey,
    timestamp: int,
    newline: bytes = CRLF,
) -> bytes:
    """The DKIM-Signature field, `newline`-ended, signing `names` of `fields` and the body."""
    # RFC 6376 3.5's tags, in dkimpy's order; b= last.
    tags = b"v=1; a=%s; c=relaxed/simple; d=%s; i=@%s; q=dns/txt; s=%s; t=%d; h=%s; bh=%s; b=" % (
        key.algorithm,
        domain.encode(),
        domain.encode(),
        selector.encode(),
        timestamp,
        b" : ".join(names),
        binascii.b2a_base64(body_hash, newline=False),
    )
    unsigned = _without_b_value(fold(tags + _B_PLACEHOLDER, len(FIELD_NAME)))
    hashed = signed_fields(fields, names) + b"dkim-signature:" + relaxed_value(b" " + unsigned)
    signature = binascii.b2a_base64(key.sign(hashlib.sha256(hashed).digest()), newline=False)
    return FIELD_NAME + b": " + fold(tags + signature + newline, len(FIELD_NAME), newline)


def _without_b_value(folded: bytes) -> bytes:
    """The field's value with b= empty (RFC 6376 3.7). b= is the last tag and its placeholder starts a
    line of its own, so it is cut where it begins; dkimpy's expression, for anything else."""
    at = folded.rfind(b" b=")
    if at >= 0 and folded[at + 3 :] == _B_PLACEHOLDER:
        return folded[: at + 3]
    return _B_VALUE.sub(rb"\1", folded)


def fold(value: bytes, name_length: int = 0, newline: bytes = CRLF) -> bytes:
    """dkimpy's `fold`, step for step: lines of at most 72 octets (the field name's on the first), broken
    after a space where there is one in reach, else hard at the limit."""
    limit = 72 - name_length
    if len(value) <= limit:
        return value
    if len(value) - value.rfind(CRLF) == 2 and len(value) <= limit + 2:
        return value
    last = value.rfind(CRLF + b" ")
    done = b""
    if last != -1:
        done, value = value[: last + 3], value[last + 3 :]
    while len(value) > limit:
        space = value[:limit].rfind(b" ")
        cut, resume = (limit, limit) if space == -1 else (space, space + 1)
        done += value[:cut] + newline + b" "
        value = value[resume:]
        limit = 71
    return done + value
