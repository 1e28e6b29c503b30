"""The benchmarks' message mix: real mail from /work/shared/corpus plus generated business mail with
attachments, the same bytes on every run.

Memory measured with small messages only said little about a filter that decodes attachments, opens
archives and spools large bodies (issue 14). So the generated mail carries one to three attachments of 2 to
500 kB each (sizes spread evenly on a log scale: most are small, as in real mail), of the kinds offices
send: PDF-like and JPEG-like binaries, zips of documents, Office-style zips and CSV text; and one message
in every `LARGE_EVERY` carries one more attachment of 1 to 10 MB. Everything comes from a seeded
`random.Random` and fixed dates, so a run can be repeated byte for byte.

The side-by-side with amavisd-new (bench/amavisd/compare.py) adds EICAR_MAILS messages carrying the EICAR
test string, as the issue's mix did (`message_pool(eicar=True)`), so that both filters must find a virus while
they are measured: in the body, base64 as a program, in a zip, and as a text attachment.

Every message sent gets a header of its own (`X-Bench-Id`), so no two are byte-identical: qsift answers an
identical retry from its outcome record without scanning it again, and the benchmark must not measure that.
"""

from __future__ import annotations

import io
import math
import random
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

CORPUS = Path("/work/shared/corpus")
#: rspamd's functional-test messages are taken up to this size (the same as the spam checks' size limit).
MAX_SIZE = 400 * 1024
#: Generated messages in the pool, beside the corpus's.
GENERATED = 100
KB = 1000
MB = 1000 * KB
#: Bounds of one ordinary attachment, and of the one more that every LARGE_EVERY-th message carries.
ATTACHMENT_SIZE = (2 * KB, 500 * KB)
LARGE_SIZE = (1 * MB, 10 * MB)
LARGE_EVERY = 25
WORDS = (
    b"invoice order shipment quarterly report meeting budget contract delivery account payment"
    b" schedule review supplier customer forecast"
).split()


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


def _text(rng: random.Random, size: int) -> bytes:
    """About `size` bytes of office prose."""
    return b" ".join(rng.choice(WORDS) for _ in range(max(1, size // 8)))


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            # A fixed date: writestr with a bare name stamps the current time, and the bytes would vary.
            archive.writestr(zipfile.ZipInfo(name, (2024, 5, 1, 9, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def attachment(kind: str, size: int, rng: random.Random) -> tuple[bytes, str, str]:
    """An attachment of about `size` bytes: its content, MIME type and file name extension."""
    if kind == "pdf":
        # Random bytes do not compress, as the images and fonts inside real PDFs do not.
        return (
            b"%PDF-1.4\n" + _text(rng, size // 10) + rng.randbytes(size - size // 10),
            "application/pdf",
            "pdf",
        )
    if kind == "jpg":
        return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(size), "image/jpeg", "jpg"
    if kind == "zip":
        members = [
            (f"scan-{number}.bin", rng.randbytes(size // 3))
            if number % 2
            else (f"report-{number}.txt", _text(rng, size))
            for number in range(rng.randint(2, 4))
        ]
        return _zip(members), "application/zip", "zip"
    if kind == "docx":
        members = [
            ("[Content_Types].xml", b"<?xml version='1.0'?><Types/>"),
            ("word/document.xml", b"<w:document>" + _text(rng, size) + b"</w:document>"),
            ("word/media/image1.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(size // 2)),
        ]
        return (
            _zip(members),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "docx",
        )
    rows = [
        b"%d;%s;%d.%02d" % (row, rng.choice(WORDS), rng.randint(1, 9999), rng.randint(0, 99))
        for row in range(size // 24)
    ]
    return b"\r\n".join([b"line;item;amount", *rows]) + b"\r\n", "text/csv", "csv"


def business_mail(index: int, rng: random.Random) -> bytes:
    """One generated message: a short text body and its attachments."""
    message = EmailMessage()
    message["From"] = "Accounts <accounts@example.org>"
    message["To"] = "b@example.net"
    message["Subject"] = f"Documents for order {1000 + index}"
    message["Date"] = format_datetime(datetime(2024, 5, 1, 9, index % 60, tzinfo=UTC))
    message["Message-ID"] = f"<mix-{index}@example.org>"
    message.set_content("Hello,\n\nplease find the documents attached.\n\nRegards,\nAccounts\n")
    low, high = ATTACHMENT_SIZE
    sizes = [round(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(rng.randint(1, 3))]
    if index % LARGE_EVERY == LARGE_EVERY - 1:
        sizes.append(rng.randint(*LARGE_SIZE))
    for number, size in enumerate(sizes):
        data, content_type, extension = attachment(
            rng.choice(("pdf", "jpg", "zip", "docx", "csv")), size, rng
        )
        maintype, subtype = content_type.split("/")
        message.add_attachment(
            data, maintype=maintype, subtype=subtype, filename=f"order-{1000 + index}-{number}.{extension}"
        )
    # The email package draws a random MIME boundary; a fixed one keeps the bytes the same on every run.
    message.set_boundary(f"=_mix-{index}")
    return message.as_bytes()


def business_mails(count: int = GENERATED) -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    return [(f"generated/mix-{index}.eml", business_mail(index, rng)) for index in range(count)]


#: The standard anti-virus test string (https://www.eicar.org), which every scanner reports.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_MAILS = 4
#: Where `stamped` names a message (its X-Bench-Id line) that carries EICAR.
EICAR_PREFIX = "eicar/"


def eicar_mail(index: int) -> bytes:
    """The EICAR string in one of four places, by `index` modulo 4."""
    message = EmailMessage()
    message["From"] = "Someone <someone@example.org>"
    message["To"] = "b@example.net"
    message["Subject"] = f"Test file {index}"
    message["Date"] = format_datetime(datetime(2024, 5, 2, 9, index % 60, tzinfo=UTC))
    message["Message-ID"] = f"<eicar-{index}@example.org>"
    place = index % 4
    if place == 0:
        message.set_content("Here it is:\n\n" + EICAR.decode() + "\n")
        return message.as_bytes()
    message.set_content("Please run the attached file.\n")
    if place == 1:
        message.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="eicar.com")
    elif place == 2:
        zipped = _zip([("eicar.com", EICAR)])
        message.add_attachment(zipped, maintype="application", subtype="zip", filename="eicar.zip")
    else:
        message.add_attachment(EICAR.decode(), subtype="plain", filename="eicar.txt", cte="base64")
    message.set_boundary(f"=_eicar-{index}")
    return message.as_bytes()


def eicar_mails(count: int = EICAR_MAILS) -> list[tuple[str, bytes]]:
    return [(f"{EICAR_PREFIX}eicar-{index}.eml", eicar_mail(index)) for index in range(count)]


def carries_eicar(message: bytes) -> bool:
    """Whether a message from `stamped` is one of `eicar_mails`."""
    return b"(" + EICAR_PREFIX.encode() in message.split(b"\n", 1)[0]


def message_pool(*, eicar: bool = False) -> list[tuple[str, bytes]]:
    """Every candidate message, shuffled once with a fixed seed so any prefix mixes the sources."""
    pool = corpus_messages() + business_mails() + (eicar_mails() if eicar else [])
    random.Random(0).shuffle(pool)
    return pool


def stamped(pool: list[tuple[str, bytes]], count: int, tag: str, start: int = 0) -> list[bytes]:
    """Messages `start` to `start + count` of an endless cycle through the pool, each with a unique first
    header line."""
    return [
        b"X-Bench-Id: %s-%d (%s)\n" % (tag.encode(), i, pool[i % len(pool)][0].encode())
        + pool[i % len(pool)][1]
        for i in range(start, start + count)
    ]
