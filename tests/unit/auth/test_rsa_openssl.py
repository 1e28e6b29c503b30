"""OpenSSL makes the same RSA signature dkimpy's own code makes, byte for byte, for DKIM and ARC keys."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dkim
import dkim.crypto
import pytest

from qsift.auth import rsa_openssl


@pytest.mark.parametrize("bits", [1024, 2048])
def test_the_signature_is_dkimpys_own(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(path), str(bits)], check=True, capture_output=True
    )
    key = dkim.crypto.parse_pem_private_key(path.read_bytes())
    for text in (b"", b"a message", bytes(range(256)) * 40):
        digest = hashlib.sha256(text)
        assert rsa_openssl.sign(digest, key) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, key)


def test_installed_dkimpy_signs_with_it_and_reads_a_key_once(tmp_path: Path) -> None:
    rsa_openssl.install()
    rsa_openssl.install()
    assert dkim.RSASSA_PKCS1_v1_5_sign is rsa_openssl.sign
    path = tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(path), "1024"], check=True, capture_output=True
    )
    pem = path.read_bytes()
    assert dkim.parse_pem_private_key(pem) is dkim.parse_pem_private_key(bytearray(pem))
    assert dkim.parse_pem_private_key(pem) == dkim.crypto.parse_pem_private_key(pem)
