"""amavisd-new's forms of a quarantined message's rows (reference: amavisd-sql.md §1.3-1.5, §5): the
fields before the text, its chunks, the maddr keys, and the header values msgs keeps.

Pure functions but for `address_ids`, which finds or adds maddr rows on the connection it is given.
"""

from __future__ import annotations

import email.header
import email.parser
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from qsift.model import address_bytes

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

#: amavisd-new's $sql_quarantine_chunksize_max (§1.5): every chunk this long but the last.
CHUNK_SIZE = 16384

#: msgs.content and msgrcpt.content (§1.4); a category amavisd-new lacks is its catch-all "?".
CONTENT_CODES = {
    "virus": "V",
    "banned": "B",
    "unchecked": "U",
    "spam": "S",
    "spammy": "Y",
    "bad-header": "H",
    "oversized": "O",
    "clean": "C",
}

#: The length of amavisd-new's varchar columns.
VARCHAR = 255
_HEADER_LIMIT = 256 * 1024


def envelope_fields(mail_id: str, sender: str, recipients: Sequence[str]) -> bytes:
    """The fields amavisd-new puts before a quarantined message (§1.5), without its Received field: every
    kept recipient was blocked, so X-Envelope-To and X-Envelope-To-Blocked name the same ones."""
    listed = b",\n ".join(b"<" + address_bytes(r) + b">" for r in recipients)
    return (
        b"X-Envelope-From: <" + address_bytes(sender) + b">\n"
        b"X-Envelope-To: " + listed + b"\n"
        b"X-Envelope-To-Blocked: " + listed + b"\n"
        b"X-Quarantine-ID: <" + mail_id.encode("ascii") + b">\n"
    )


def split_chunks(text: bytes) -> Iterator[bytes]:
    """`text` as amavisd-new stores it: CHUNK_SIZE bytes a chunk, the last shorter (at least one chunk)."""
    yield text[:CHUNK_SIZE]
    for start in range(CHUNK_SIZE, len(text), CHUNK_SIZE):
        yield text[start : start + CHUNK_SIZE]


def maddr_email(address: str) -> bytes:
    """maddr.email as amavisd-new writes it by default: lowercased, at most 255 bytes; "" for <>."""
    return address_bytes(address).lower()[:VARCHAR]


def maddr_domain(email: bytes) -> str:
    """maddr.domain: the domain's labels reversed, "com.example" for user@example.com."""
    _, at, domain = email.rpartition(b"@")
    labels = domain.rstrip(b".").decode("utf-8", "replace").split(".") if at else []
    return ".".join(reversed(labels))[:VARCHAR]


def address_ids(db: psycopg.Connection[TupleRow], addresses: Sequence[str]) -> dict[bytes, int]:
    """maddr.id of each address, rows added for new ones: a SELECT, and for the new ones an INSERT
    that leaves a row another node added meanwhile alone, and a SELECT again for those (§5). Sorted, so
    two nodes adding the same addresses take their locks in the same order."""
    emails = sorted({maddr_email(a) for a in addresses})
    find = "SELECT email, id FROM maddr WHERE partition_tag = 0 AND email = ANY(%s)"
    ids = {bytes(e): int(i) for e, i in db.execute(find, (emails,)).fetchall()}
    new = [e for e in emails if e not in ids]
    if new:
        added = db.execute(
            "INSERT INTO maddr (partition_tag, email, domain) "
            "SELECT 0, email, domain FROM unnest(%s::bytea[], %s::text[]) AS t(email, domain) ORDER BY email "
            "ON CONFLICT (partition_tag, email) DO NOTHING RETURNING email, id",
            (new, [maddr_domain(e) for e in new]),
        ).fetchall()
        ids.update((bytes(e), int(i)) for e, i in added)
        raced = [e for e in new if e not in ids]
        if raced:
            ids.update((bytes(e), int(i)) for e, i in db.execute(find, (raced,)).fetchall())
    return ids


def header_fields(message: bytes) -> tuple[str, str, str]:
    """(from_addr, subject, message_id) for msgs: From and Subject unfolded and MIME-decoded, the
    Message-ID 7-bit, each at most 255 characters."""
    head = re.split(rb"\r?\n\r?\n", message[:_HEADER_LIMIT], maxsplit=1)[0]
    fields = email.parser.BytesHeaderParser().parsebytes(head + b"\n\n")
    message_id = "".join(c for c in str(fields.get("Message-ID", "")) if " " < c < "\x7f")
    return _decoded(fields.get("From")), _decoded(fields.get("Subject")), message_id[:VARCHAR]


def _decoded(value: object) -> str:
    if value is None:
        return ""
    raw = str(value)
    try:
        text = str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):
        text = raw
    return column_text(" ".join(text.split()), VARCHAR)


def column_text(value: str, limit: int) -> str:
    """Valid UTF-8 without NUL (PostgreSQL text takes nothing else), at most `limit` characters."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\0", "")[:limit]
