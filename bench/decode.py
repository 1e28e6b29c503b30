"""Decode throughput beside the standard `email` parser, and peak memory on a 200 MB zip bomb.

    .venv/bin/python -m bench.decode [--corpus ../shared/corpus] [--typical 300]

Three figures:
1. Every file of the shared corpus through `decode_message` (MIME walk, libmagic types, archives), and
   the same files through `email.message_from_bytes` plus `get_payload(decode=True)` on every leaf.
2. The same on a generated corpus of typical business mail: a text body and one to three attachments
   (PDF-like binary, a zip of documents, an Office-style zip, an image), 20 kB to 2 MB.
3. The peak resident memory of a child process that decodes one message carrying a zip of 200 MB of
   zeros (about 200 kB compressed), beside the same child's baseline.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import io
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

from qsift.decode.walk import decode_message

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus(path: Path) -> list[bytes]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md"))
    return [p.read_bytes() for p in files]


def typical(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        mail = EmailMessage()
        mail["From"] = "sales@example.org"
        mail["To"] = "office@example.net"
        mail["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
        mail["Subject"] = f"Order {index}"
        mail.set_content("Dear customer,\n\nplease find the documents attached.\n" * 20)
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["pdf", "zip", "docx", "jpg"])
            size = rng.randint(20_000, 2_000_000)
            mail.add_attachment(
                _attachment(kind, size, rng),
                maintype="application",
                subtype="octet-stream",
                filename=f"file{index}.{kind}",
            )
        messages.append(mail.as_bytes())
    return messages


def _attachment(kind: str, size: int, rng: random.Random) -> bytes:
    noise = rng.randbytes(size // 2) + b"text " * (size // 10)
    if kind == "pdf":
        return b"%PDF-1.4\n" + noise
    if kind == "jpg":
        return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + noise
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if kind == "docx":
            archive.writestr("[Content_Types].xml", b"<?xml version='1.0'?><Types/>")
            archive.writestr(
                "word/document.xml", b"<w:document>" + b"word " * (size // 20) + b"</w:document>"
            )
        for number in range(3):
            archive.writestr(f"docs/part{number}.bin", noise[number::3])
    return buffer.getvalue()


def timed(messages: list[bytes], work: object) -> float:
    assert callable(work)
    started = time.perf_counter()
    for message in messages:
        work(message)
    return time.perf_counter() - started


def with_email(message: bytes) -> None:
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    for part in parsed.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def report(name: str, messages: list[bytes]) -> None:
    megabytes = sum(len(m) for m in messages) / 1e6
    ours = timed(messages, decode_message)
    reference = timed(messages, with_email)
    print(f"{name}: {len(messages)} messages, {megabytes:.1f} MB")
    print(
        f"  qsift decode        {ours:6.2f} s  {megabytes / ours:6.1f} MB/s  "
        f"{len(messages) / ours:7.1f} msg/s"
    )
    print(
        f"  email package alone {reference:6.2f} s  {megabytes / reference:6.1f} MB/s  "
        f"{len(messages) / reference:7.1f} msg/s"
    )
    print(f"  ratio qsift / email: {ours / reference:.2f}")


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child of a big parent
# would report the parent's peak.
_BOMB_CHILD = """
import re, sys
from qsift.decode.walk import decode_message
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = peak_kib()
decoded = decode_message(sys.argv[1])
after = peak_kib()
print(before, after, [f.detail for f in decoded.findings])
"""


def bomb() -> None:
    """Peak memory of a fresh process decoding the bomb from a file, beside that process at rest."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.bin", "w") as member,
    ):
        for _ in range(200):
            member.write(bytes(1 << 20))
    mail = EmailMessage()
    mail["From"] = "a@example.org"
    mail.set_content("bomb")
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="bomb.zip")
    with tempfile.NamedTemporaryFile(suffix=".eml") as message:
        message.write(mail.as_bytes())
        message.flush()
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-c", _BOMB_CHILD, message.name], capture_output=True, text=True, check=True
        )
        elapsed = time.perf_counter() - started
        size = os.path.getsize(message.name)
    before, after, findings = output.stdout.split(" ", 2)
    print(
        f"200 MB zip bomb ({size / 1e3:.0f} kB message): "
        f"child peak RSS {int(before) / 1024:.0f} MiB at rest, "
        f"{int(after) / 1024:.0f} MiB after decoding; {elapsed:.1f} s; {findings.strip()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--typical", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.corpus.is_dir():
        report(f"corpus {args.corpus}", corpus(args.corpus))
    report("typical business mail", typical(args.typical))
    bomb()


if __name__ == "__main__":
    main()
