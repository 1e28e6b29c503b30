"""CPU per DKIM signature (RSA-2048, Ed25519, both) on messages of typical sizes.

    .venv/bin/python -m bench.dkim_sign [--rounds 50]

Makes the keys with `qsift dkim genkey` in a temporary directory and signs each message with the signer
the pipeline uses (auth/signing.py), in this process; prints the CPU time per message. This is what
signing adds to a signed message's cost: the key's operation (OpenSSL's, auth/dkim_signature.py), the
body hash of the canonical body (once for all signatures) and the header hash.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
from pathlib import Path

from qsift.auth.dkim_keys import read_private_key
from qsift.auth.signing import DkimSigner, SigningKey
from qsift.dkim_tools import genkey

HEAD = (
    b"From: Alice <alice@example.test>\nTo: bob@example.net\nSubject: the report\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <1@example.test>\nMIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n\n"
)
LINE = b"The quarterly numbers are attached, as promised; call me about them.\n"
SIZES = {"4 KiB": 4 * 1024, "100 KiB": 100 * 1024, "1 MiB": 1024 * 1024}


def cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def keys(directory: Path) -> dict[str, SigningKey]:
    made = {}
    for selector, ed25519 in (("rsa", False), ("ed", True)):
        path = directory / f"{selector}.pem"
        genkey("example.test", selector, str(path), 2048, ed25519, io.StringIO(), io.StringIO())
        made[selector] = SigningKey("example.test", selector, read_private_key(str(path)), str(path))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        made = keys(Path(directory))
    signers = {
        "rsa-2048": DkimSigner((made["rsa"],)),
        "ed25519": DkimSigner((made["ed"],)),
        "both": DkimSigner((made["rsa"], made["ed"])),
    }
    print(f"{'message':>8} {'signer':>9} {'ms CPU/message':>15}")
    for label, size in SIZES.items():
        message = HEAD + LINE * (size // len(LINE))
        rounds = max(5, args.rounds * 4096 // size) if size > 4096 else args.rounds
        for name, signer in signers.items():
            signer.sign(message)
            started = cpu()
            for _ in range(rounds):
                signer.sign(message)
            print(f"{label:>8} {name:>9} {(cpu() - started) / rounds * 1000:15.2f}")


if __name__ == "__main__":
    main()
