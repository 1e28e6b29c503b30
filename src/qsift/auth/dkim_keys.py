"""DKIM private keys as PEM files hold them, and their public halves as a DNS TXT record publishes them.

The key's type is read from the file: `BEGIN RSA PRIVATE KEY` (PKCS#1, what amavisd-new's genrsa and
`openssl genrsa` write) or `BEGIN PRIVATE KEY` (PKCS#8, what `openssl genpkey` writes) holding an RSA or an
Ed25519 key (RFC 8410). dkimpy signs with them: the PEM for RSA, the 32-byte seed in base64 for Ed25519
(its format, RFC 8463 Appendix A.1). The record's `p=` is the DER SubjectPublicKeyInfo in base64 for RSA
(what every tool publishes; RFC 6376 3.6.1) and the raw 32-byte key in base64 for Ed25519 (RFC 8463 4).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

import dkim.crypto
import dkim.util
import nacl.signing

from qsift.errors import ConfigError

#: RSA keys below this are refused: RFC 8301 3.2 says signers MUST use at least 1024 bits.
MIN_RSA_BITS = 1024
#: A TXT character-string holds at most 255 octets (RFC 1035 3.3.14).
TXT_STRING = 255
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
#: PKCS#8 PrivateKeyInfo of an Ed25519 key (RFC 8410 7) up to the 32-byte seed: version 0, OID 1.3.101.112.
ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")
#: AlgorithmIdentifier of rsaEncryption (RFC 8017 A.1) with its NULL parameters, DER.
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")


class KeyType(enum.Enum):
    """The `k=` of the record; `algorithm` is the signature's `a=`."""

    RSA = "rsa"
    ED25519 = "ed25519"

    @property
    def algorithm(self) -> str:
        return "rsa-sha256" if self is KeyType.RSA else "ed25519-sha256"


@dataclass(frozen=True)
class PrivateKey:
    type: KeyType
    #: What dkimpy's sign takes as `privkey`.
    signing: bytes = b""
    #: The record's `p=`.
    public: str = ""
    bits: int = 0

    @property
    def record(self) -> str:
        """The TXT record's text, before it is split into strings."""
        return f"v=DKIM1; k={self.type.value}; p={self.public}"

    def describe(self) -> str:
        return f"{self.bits}-bit RSA" if self.type is KeyType.RSA else "Ed25519"


def parse_private_key(text: bytes) -> PrivateKey:
    """The key a PEM file holds; ValueError says why it is not one qsift can sign with."""
    found = _PEM.search(text)
    if found is None:
        raise ValueError("no PEM block (-----BEGIN ... PRIVATE KEY-----) in it")
    label = found.group(1).decode()
    if label not in ("RSA PRIVATE KEY", "PRIVATE KEY"):
        raise ValueError(f"holds a {label}, not an unencrypted private key")
    try:
        der = base64.b64decode(b"".join(found.group(2).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64 in the PEM block: {exc}") from None
    if der.startswith(ED25519_PKCS8) and len(der) == len(ED25519_PKCS8) + 32:
        return _ed25519(der[len(ED25519_PKCS8) :])
    return _rsa(der)


def read_private_key(path: str) -> PrivateKey:
    """The key in the file at `path`; OSError if it cannot be read, ValueError if it is not a key."""
    with open(path, "rb") as stream:
        return parse_private_key(stream.read())


def load_configured_key(path: str, where: str) -> PrivateKey:
    """A key the configuration names, for the start: a file missing, unreadable or not a key is a
    ConfigError saying `where` (which key, which record)."""
    try:
        return read_private_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _ed25519(seed: bytes) -> PrivateKey:
    public = nacl.signing.SigningKey(seed).verify_key.encode()
    return PrivateKey(KeyType.ED25519, base64.b64encode(seed), base64.b64encode(public).decode(), 256)


def _rsa(der: bytes) -> PrivateKey:
    try:
        parts = dkim.crypto.parse_private_key(der)
    except dkim.crypto.UnparsableKeyError:
        raise ValueError("not an RSA or Ed25519 private key") from None
    modulus, exponent = int(parts["modulus"]), int(parts["publicExponent"])
    bits = modulus.bit_length()
    if bits < MIN_RSA_BITS:
        raise ValueError(f"a {bits}-bit RSA key: DKIM signers must use {MIN_RSA_BITS} bits or more")
    # dkimpy reads a PEM whose base64 is on lines of its own; rebuilt so any line ends serve.
    pem = b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(der) + b"\n-----END PRIVATE KEY-----\n"
    spki = rsa_public_key_info(modulus, exponent)
    return PrivateKey(KeyType.RSA, pem, base64.b64encode(spki).decode(), bits)


def rsa_public_key_info(modulus: int, exponent: int) -> bytes:
    """The DER SubjectPublicKeyInfo of an RSA public key (RFC 5280 4.1, RFC 8017 A.1.1)."""
    key = _der(0x30, _der_integer(modulus) + _der_integer(exponent))
    return _der(0x30, _RSA_ALGORITHM + _der(0x03, b"\x00" + key))


def _der_integer(value: int) -> bytes:
    # One more octet than the bits need keeps the sign bit clear (DER integers are signed).
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def txt_strings(record: str) -> list[str]:
    """The record split into the 255-octet strings one TXT record carries (DKIM joins them again)."""
    return [record[at : at + TXT_STRING] for at in range(0, len(record), TXT_STRING)] or [""]


def zone_entry(selector: str, domain: str, key: PrivateKey, ttl: int = 3600) -> str:
    """The key's record as a zone file line, its strings in parentheses, as BIND, Knot and NSD read it."""
    strings = "\n".join(f'  "{part}"' for part in txt_strings(key.record))
    return f"{selector}._domainkey.{domain}.\t{ttl}\tIN\tTXT\t(\n{strings} )"


def record_matches(key: PrivateKey, published: str) -> str | None:
    """None when the published record (its strings joined) is this key's; else what differs."""
    try:
        tags = dkim.util.parse_tag_value(published.encode())
    except dkim.util.InvalidTagValueList as exc:
        return f"the record is not a tag list: {exc}"
    version = tags.get(b"v", b"DKIM1")
    if version != b"DKIM1":
        return f"v={version.decode(errors='replace')}, not DKIM1"
    kind = tags.get(b"k", b"rsa").decode(errors="replace")
    if kind != key.type.value:
        return f"k={kind}, but the key is {key.describe()}"
    public = b"".join(tags.get(b"p", b"").split()).decode(errors="replace")
    if not public:
        return "p= is empty: the key is revoked"
    if key.type is KeyType.ED25519:
        return None if public == key.public else "p= is another Ed25519 key"
    return None if _same_rsa_key(public, key.public) else "p= is another RSA key"


def _same_rsa_key(published: str, ours: str) -> bool:
    """Compared by modulus and exponent: a record may carry a bare RSAPublicKey instead of the SPKI."""
    try:
        theirs = dkim.crypto.parse_public_key(base64.b64decode(published))
    except (binascii.Error, dkim.crypto.UnparsableKeyError):
        return False
    mine = dkim.crypto.parse_public_key(base64.b64decode(ours))
    return bool(theirs["modulus"] == mine["modulus"] and theirs["publicExponent"] == mine["publicExponent"])
