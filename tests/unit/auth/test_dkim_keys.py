"""DKIM key files: each PEM form openssl writes is read, its public half is what openssl derives, and what
is not a private key qsift can sign with is refused with the reason."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from qsift.auth.dkim_keys import (
    KeyType,
    parse_private_key,
    read_private_key,
    record_matches,
    txt_strings,
    zone_entry,
)
from tests.unit.auth.rfc8463 import (
    RFC8463_ED25519_PUBLIC,
    RFC8463_ED25519_SEED,
    RFC8463_RSA,
    RFC8463_RSA_RECORD,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")


def ed25519_pem(seed: bytes) -> bytes:
    body = base64.b64encode(ED25519_PKCS8 + seed)
    return b"-----BEGIN PRIVATE KEY-----\n" + body + b"\n-----END PRIVATE KEY-----\n"


def openssl(*args: str, data: bytes = b"") -> bytes:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=True).stdout


def test_rfc8463_ed25519_secret_gives_its_published_key() -> None:
    key = parse_private_key(ed25519_pem(base64.b64decode(RFC8463_ED25519_SEED)))
    assert key.type is KeyType.ED25519
    assert key.public == RFC8463_ED25519_PUBLIC
    assert key.signing == RFC8463_ED25519_SEED.encode()
    assert record_matches(key, f"v=DKIM1; k=ed25519; p={RFC8463_ED25519_PUBLIC}") is None


def test_rfc8463_rsa_key_matches_its_record() -> None:
    key = parse_private_key(RFC8463_RSA)
    assert (key.type, key.bits) == (KeyType.RSA, 1024)
    assert record_matches(key, RFC8463_RSA_RECORD) is None
    assert key.record == RFC8463_RSA_RECORD


@needs_openssl
@pytest.mark.parametrize(
    "command",
    [
        ("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
        ("genrsa", "-traditional", "2048"),
        ("genpkey", "-algorithm", "ed25519"),
    ],
    ids=["pkcs8-rsa", "pkcs1-rsa", "pkcs8-ed25519"],
)
def test_public_half_is_what_openssl_derives(command: tuple[str, ...], tmp_path: Path) -> None:
    pem = openssl(*command)
    der = openssl("pkey", "-pubout", "-outform", "DER", data=pem)
    key = parse_private_key(pem.replace(b"\n", b"\r\n"))  # any line ends
    expected = der if key.type is KeyType.RSA else der[-32:]  # Ed25519's p= is the raw key (RFC 8463 4)
    assert key.public == base64.b64encode(expected).decode()
    (tmp_path / "key.pem").write_bytes(pem)
    assert read_private_key(str(tmp_path / "key.pem")) == key


@needs_openssl
def test_what_is_not_a_private_key_is_refused_with_why() -> None:
    pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
    public = openssl("pkey", "-pubout", data=pem)
    small = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512")
    cases = {
        b"": "no PEM block",
        b"hello\n": "no PEM block",
        public: "holds a PUBLIC KEY",
        b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n": "bad base64",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n": "not an RSA or Ed25519",
        small: "512-bit RSA key",
    }
    for text, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            parse_private_key(text)


def test_records_are_split_at_255_octets_for_zone_files() -> None:
    key = parse_private_key(RFC8463_RSA)
    record = "v=DKIM1; k=rsa; p=" + "A" * 392
    parts = txt_strings(record)
    assert [len(p) for p in parts] == [255, 155]
    assert "".join(parts) == record
    entry = zone_entry("test", "football.example.com", key)
    assert entry.startswith("test._domainkey.football.example.com.\t3600\tIN\tTXT\t(\n")
    quoted = [line.strip().strip(")").strip().strip('"') for line in entry.splitlines()[1:]]
    assert "".join(quoted) == key.record


def test_a_record_for_another_key_says_what_differs() -> None:
    rsa = parse_private_key(RFC8463_RSA)
    ed = parse_private_key(ed25519_pem(bytes(32)))
    other_ed = f"v=DKIM1; k=ed25519; p={RFC8463_ED25519_PUBLIC}"
    assert record_matches(ed, other_ed) == "p= is another Ed25519 key"
    assert record_matches(rsa, other_ed) == "k=ed25519, but the key is 1024-bit RSA"
    assert record_matches(rsa, "v=DKIM1; k=rsa; p=") == "p= is empty: the key is revoked"
    assert record_matches(rsa, "v=DKIM2; p=x") == "v=DKIM2, not DKIM1"
    assert record_matches(rsa, "v=DKIM1; p=" + ed.public) == "p= is another RSA key"
    assert record_matches(rsa, "garbage") is not None
    # k= defaults to rsa; the p= may come in several strings with white space between
    assert record_matches(rsa, RFC8463_RSA_RECORD.replace("k=rsa; ", "").replace("QDkH", "QDkH ")) is None
