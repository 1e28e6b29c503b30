"""The benchmark's messages: real mail from /work/shared/corpus plus generated mail with zip attachments.

Every message sent gets a header of its own (`X-Bench-Id`), so no two are byte-identical: qsift answers an
identical retry from its outcome record without scanning it again, and the benchmark must not measure that.
"""

from __future__ import annotations

import io
import random
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

CORPUS = Path("/work/shared/corpus")
#: rspamd's functional-test messages are taken up to this size (the same as the spam checks' size limit).
MAX_SIZE = 400 * 1024
GENERATED = 40


def _strip_mbox_line(data: bytes) -> bytes:
    """An MTA never hands a filter the mbox `From ` line that 100 of the public corpus files start with."""
    if data.startswith(b"From "):
        return data.split(b"\n", 1)[1]
    return data


def corpus_messages() -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for folder in ("spamassassin-public-corpus", "rspamd"):
        for path in sorted((CORPUS / folder).rglob("*")):
            if path.is_file() and path.stat().st_size < MAX_SIZE:
                found.append(
                    (f"{folder}/{path.relative_to(CORPUS / folder)}", _strip_mbox_line(path.read_bytes()))
                )
    return found


def zip_messages(count: int = GENERATED) -> list[tuple[str, bytes]]:
    """Business-like mail with a zip of two to four text and binary documents (5-120 kB), from the stdlib."""
    rng = random.Random(1)
    words = b"invoice order shipment quarterly report meeting budget contract delivery account".split()
    made: list[tuple[str, bytes]] = []
    for i in range(count):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for j in range(rng.randint(2, 4)):
                if j % 2:
                    archive.writestr(f"scan-{i}-{j}.bin", rng.randbytes(rng.randint(2_000, 40_000)))
                else:
                    text = b" ".join(rng.choice(words) for _ in range(rng.randint(1_000, 12_000)))
                    archive.writestr(f"report-{i}-{j}.txt", text)
        message = EmailMessage()
        message["From"] = "Accounts <accounts@example.org>"
        message["To"] = "b@example.net"
        message["Subject"] = f"Documents for order {1000 + i}"
        message["Date"] = format_datetime(datetime(2024, 5, 1, 9, i % 60, tzinfo=UTC))
        message["Message-ID"] = f"<zip-{i}@example.org>"
        message.set_content("Hello,\n\nplease find the documents attached.\n\nRegards,\nAccounts\n")
        message.add_attachment(
            buffer.getvalue(), maintype="application", subtype="zip", filename=f"documents-{i}.zip"
        )
        made.append((f"generated/zip-{i}.eml", message.as_bytes()))
    return made


def message_pool() -> list[tuple[str, bytes]]:
    """Every candidate message, shuffled once with a fixed seed so any prefix mixes the sources."""
    pool = corpus_messages() + zip_messages()
    random.Random(0).shuffle(pool)
    return pool


def stamped(pool: list[tuple[str, bytes]], count: int, tag: str) -> list[bytes]:
    """`count` messages cycling through the pool, each with a unique first header line."""
    return [
        b"X-Bench-Id: %s-%d (%s)\n" % (tag.encode(), i, pool[i % len(pool)][0].encode())
        + pool[i % len(pool)][1]
        for i in range(count)
    ]
