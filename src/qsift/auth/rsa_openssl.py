"""dkimpy's RSA signing step done by OpenSSL (the `cryptography` package) instead of in pure Python, for
ARC sealing (auth/arc.py); DKIM signatures are made without dkimpy (auth/dkim_signature.py).

dkimpy canonicalizes, hashes and assembles ARC fields well, but makes the RSA signature
itself with Python integers: about 6.6 ms for a 2048-bit key, where OpenSSL takes 0.3 ms (measured here,
bench/dkim_sign.py). That alone was more than qsift's whole per-message cost. dkimpy has no hook for
another backend, so `install()` replaces the one function it calls, `dkim.RSASSA_PKCS1_v1_5_sign`, with one
that signs the same digest with the same key through OpenSSL; the bytes are the same (RSASSA-PKCS1-v1_5 is
deterministic), which the tests check against dkimpy's own. Verification stays dkimpy's (public-key
operations are cheap in Python: a small exponent).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


def sign(digest: Any, key: dict[str, int]) -> bytes:
    """dkimpy's `RSASSA_PKCS1_v1_5_sign(hash, private_key)`: `digest` is its hash object, `key` its
    parsed PKCS#1 key."""
    algorithm = _ALGORITHMS[digest.name.lower()]
    private = _private_key(
        key["modulus"],
        key["publicExponent"],
        key["privateExponent"],
        key["prime1"],
        key["prime2"],
        key["exponent1"],
        key["exponent2"],
        key["coefficient"],
    )
    return private.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


@lru_cache(maxsize=64)
def _private_key(
    n: int, e: int, d: int, p: int, q: int, dmp1: int, dmq1: int, iqmp: int
) -> rsa.RSAPrivateKey:
    """Loaded once per key: a site has a few, each used for every message."""
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()


def install() -> None:
    """Make dkimpy's signing (ARC's, here) use OpenSSL for the RSA step, and read each key's PEM once
    rather than for every message (its ASN.1 parser is pure Python too); idempotent."""
    dkim.RSASSA_PKCS1_v1_5_sign = sign
    if not isinstance(dkim.parse_pem_private_key, _CachedParse):
        dkim.parse_pem_private_key = _CachedParse(dkim.parse_pem_private_key)


class _CachedParse:
    """dkimpy's `parse_pem_private_key`, remembered per key (a site has a few keys, used for every
    message); dkimpy only reads the parsed key."""

    def __init__(self, parse: Any) -> None:
        self._parse = lru_cache(maxsize=64)(parse)

    def __call__(self, pem: bytes) -> Any:
        return self._parse(bytes(pem))
