"""`qsift dkim genkey|showkey|testkey`: make a signing key, print its DNS record, check what DNS publishes.

amavisd-new's `genrsa`, `showkeys` and `testkeys`, with its habits: a new key file is mode 0600 and never
overwrites one; the record is printed as a zone file takes it, in strings of at most 255 octets (RFC 1035
3.3.14), so a 2048-bit key pastes into BIND, Knot or NSD as it is; testkey asks the `[dns]` resolvers the
daemon asks, and says per key `pass` or `fail (why)`, as `amavisd testkeys` does, with a note for a
domain that publishes no DMARC record. RSA keys are made by
`openssl genpkey` (qsift holds no RSA key generator of its own), Ed25519 keys by pynacl.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
from typing import TextIO

import dkim
import nacl.signing

from qsift.auth.dkim_keys import ED25519_PKCS8, KeyType, parse_private_key, record_matches, zone_entry
from qsift.auth.dns import DnsTemporaryError, Resolver
from qsift.auth.settings import DEFAULT_RSA_BITS
from qsift.auth.signing import DkimSigner, SigningKey, load_signing_keys
from qsift.config import Config, load
from qsift.errors import ConfigError


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.dkim_command == "genkey":
        return genkey(args.domain, args.selector, args.out, args.bits, args.ed25519, out, err)
    config = load(args.config)
    if args.dkim_command == "showkey":
        return showkey(config, out)
    return asyncio.run(testkey(config, out))


def genkey(
    domain: str, selector: str, path: str | None, bits: int, ed25519: bool, out: TextIO, err: TextIO
) -> int:
    """Write a new key to `path` (never over an existing file) and print its record."""
    path = path or f"{domain}.{selector}.pem"
    pem = _ed25519_pem() if ed25519 else _rsa_pem(bits)
    key = parse_private_key(pem)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        err.write(f"qsift: {path} exists; a key is never overwritten (remove it or name another --out)\n")
        return 1
    with os.fdopen(fd, "wb") as stream:
        stream.write(pem)
    err.write(
        f"qsift: wrote a {key.describe()} key to {path} (mode 0600); publish the record below, then add\n"
        f'[[dkim.keys]]\ndomain = "{domain}"\nselector = "{selector}"\n'
        f'key_file = "{os.path.abspath(path)}"\n'
    )
    if key.type is KeyType.RSA and key.bits < DEFAULT_RSA_BITS:
        err.write(f"qsift: note: RFC 8301 says signers SHOULD use {DEFAULT_RSA_BITS} bits or more\n")
    out.write(zone_entry(selector, domain, key) + "\n")
    return 0


def _rsa_pem(bits: int) -> bytes:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("openssl is not installed: it makes the RSA keys (or use --ed25519)")
    made = subprocess.run(
        [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        raise ConfigError(f"openssl genpkey failed: {made.stderr.decode(errors='replace').strip()}")
    return made.stdout


def _ed25519_pem() -> bytes:
    seed = bytes(nacl.signing.SigningKey.generate())
    text = base64.b64encode(ED25519_PKCS8 + seed)
    return b"-----BEGIN PRIVATE KEY-----\n" + text + b"\n-----END PRIVATE KEY-----\n"


def showkey(config: Config, out: TextIO) -> int:
    """Every configured key's record, as amavisd-new's showkeys prints them."""
    for number, key in enumerate(load_signing_keys(config.dkim), 1):
        out.write(
            f"; key#{number} {key.key.describe()}, s={key.selector}, d={key.domain}, {key.path}\n"
            f"{zone_entry(key.selector, key.domain, key.key)}\n\n"
        )
    if not config.dkim.keys:
        out.write("; no [[dkim.keys]] in the configuration\n")
    return 0


async def testkey(config: Config, out: TextIO) -> int:
    """Look each key's record up through `[dns]` and sign and verify a test message with it."""
    resolver = Resolver(config.dns)
    keys = load_signing_keys(config.dkim)
    passed = 0
    for number, key in enumerate(keys, 1):
        name = f"{key.selector}._domainkey.{key.domain}"
        verdict = await _test_one(resolver, name, key)
        passed += verdict == "pass"
        out.write(f"TESTING#{number} {key.domain}: {name} => {verdict}\n")
    if not keys:
        out.write("no [[dkim.keys]] in the configuration\n")
    for domain in dict.fromkeys(key.domain for key in keys):
        if not await _has_dmarc_record(resolver, domain):
            out.write(
                f"note: no DMARC record at _dmarc.{domain} or a parent: the large mailbox providers want "
                "one from bulk senders (p=none at least)\n"
            )
    return 0 if passed == len(keys) else 1


async def _has_dmarc_record(resolver: Resolver, domain: str) -> bool:
    """Whether `_dmarc.` the domain or a parent (short of the top-level domain) has a DMARC record; a DNS
    failure counts as yes, since this is only a note."""
    labels = domain.split(".")
    for at in range(max(1, len(labels) - 1)):
        try:
            found = await resolver.txt("_dmarc." + ".".join(labels[at:]))
        except DnsTemporaryError:
            return True
        if any(record.startswith("v=DMARC1") for record in found):
            return True
    return False


async def _test_one(resolver: Resolver, name: str, key: SigningKey) -> str:
    try:
        records = [r for r in await resolver.txt(name) if r.lstrip().startswith("v=DKIM1") or "p=" in r]
    except DnsTemporaryError as exc:
        return f"fail (temperror: {exc})"
    if not records:
        return "fail (no TXT record: not published yet?)"
    if len(records) > 1:
        return f"fail ({len(records)} key records at one name: verifiers may take either)"
    wrong = record_matches(key.key, records[0])
    if wrong is not None:
        return f"fail ({wrong})"
    return "pass" if _signs_and_verifies(key, records[0]) else "fail (a test signature does not verify)"


def _signs_and_verifies(key: SigningKey, record: str) -> bool:
    """A test message signed as the daemon signs, verified by dkimpy against the published record."""
    message = (
        f"From: test@{key.domain}\r\nTo: test@{key.domain}\r\nSubject: qsift dkim testkey\r\n"
        f"Message-ID: <testkey@{key.domain}>\r\n\r\ntest\r\n"
    ).encode()
    signed = DkimSigner((SigningKey(key.domain, key.selector, key.key, key.path),)).sign(message)
    published = record.encode()
    return bool(dkim.verify(signed.fields + message, dnsfunc=lambda name, timeout=5: published))
