"""What the fuzzers found, each input kept as a test (docs/reliability.md, section Fuzzing).

All were found by fuzz_decode, from the message corpus. The first three raised out of decode_message:
the decoder's containment (merged since) keeps two in their part; the third still ended the whole walk
until decode/walk.py's _filename caught it. The fourth was a hang in tnefparse, gone with it: qsift reads
TNEF itself now (decode/tnef.py), in work linear in the input's size.
"""

from __future__ import annotations

import base64
import gzip
import struct
import time

from qsift.decode.walk import Decoded, DecodeLimits, decode_message
from qsift.model import Category
from tests.fuzz import fuzz_decode


def decoded(message: bytes) -> Decoded:
    fuzz_decode.TestOneInput(message)
    result = decode_message(message, DecodeLimits())
    assert not any(f.detail.startswith("decoder failure") for f in result.findings), result.findings
    return result


def _unchecked_parts(result: Decoded) -> list[str]:
    return [f.part for f in result.findings if f.category is Category.UNCHECKED]


# A gzip member whose deflate data is damaged (a stored block with a bad length): gzip.GzipFile raises
# zlib.error, which is neither OSError nor EOFError.
_DAMAGED_GZIP = gzip.compress(b"hello hello hello hello hello\n" * 4, mtime=0)
_DAMAGED_GZIP = _DAMAGED_GZIP[:10] + b"\0" + _DAMAGED_GZIP[11:]
DAMAGED_GZIP_MESSAGE = (
    b"Subject: gz\nMIME-Version: 1.0\nContent-Type: application/gzip; name=a.txt.gz\n"
    b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(_DAMAGED_GZIP)
)


def test_a_damaged_gzip_member_is_unchecked_in_its_part() -> None:
    assert _unchecked_parts(decoded(DAMAGED_GZIP_MESSAGE)) == ["1"]


def _tnef_attribute(kind_id: int, data: bytes) -> bytes:
    """One attachment-level TNEF attribute: level 2, id, length, data, checksum (MS-OXTNEF 2.1.3)."""
    return struct.pack("<BII", 2, kind_id, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


# A winmail.dat whose attachment title (attAttachTitle) is not UTF-8 and which has no MAPI long file
# name: tnefparse's attachment.name decoded it as UTF-8 and raised UnicodeDecodeError (found from
# mimekit's one-file.tnef), which left the part unchecked. The title is in the stream's 8-bit code page
# (MS-OXTNEF 2.1.3.3.8, cp1252 when attOemCodepage does not say): read so, the name reaches the checks.
WINMAIL_DAT = (
    struct.pack("<IH", 0x223E9F78, 0)
    + _tnef_attribute(0x00069002, b"\0" * 14)  # attAttachRenddata: an attachment starts
    + _tnef_attribute(0x00018010, b"\xf9.exe\0")  # attAttachTitle
    + _tnef_attribute(0x0006800F, b"MZ")  # attAttachData
)
TNEF_MESSAGE = (
    b"Subject: t\nMIME-Version: 1.0\nContent-Type: application/ms-tnef; name=winmail.dat\n"
    b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(WINMAIL_DAT)
)


def test_a_tnef_attachment_title_not_in_utf8_is_read_in_its_code_page() -> None:
    result = decoded(TNEF_MESSAGE)
    assert _unchecked_parts(result) == []
    assert [(p.path, p.filename) for p in result.parts][-1] == ("1/\xf9.exe", "\xf9.exe")


# An RFC 2047 encoded word whose charset name is not ASCII, in a part's file name: email.header raises
# CharsetError, an email.errors.MessageError but not a HeaderParseError, which _filename let through,
# and the walk ended there: the parts after it went unlisted, a banned name among them unseen.
BAD_CHARSET_NAME_MESSAGE = (
    b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
    b'--b\nContent-Type: text/plain; name="=?utf-\xc3\xa98?q?a.txt?="\n\nhello\n'
    b"--b\nContent-Type: application/octet-stream; name=second.exe\n\nMZ\n--b--\n"
)


def test_an_encoded_file_name_with_a_bad_charset_is_kept_as_it_came_and_the_walk_goes_on() -> None:
    result = decoded(BAD_CHARSET_NAME_MESSAGE)
    assert [(p.path, p.filename) for p in result.parts] == [
        ("1", "=?utf-\ufffd\ufffd8?q?a.txt?="),
        ("2", "second.exe"),
    ]


# A winmail.dat whose message-level MAPI properties (attMAPIProps) claim 40 million properties in 4 bytes:
# tnefparse's decode_mapi looped over the count, logging "Skipping property" for each one past the data,
# in the decoder's thread where its time limit is never looked at (up to 2**32 - 1 of them: minutes of
# CPU, and as many log lines on standard error). Found as a 14 s timeout from mimekit's two-files.tnef.
# qsift's own reader skips the message's properties by the attribute's length and never loops over a
# count on its own.
_LYING_COUNT = 40_000_000
LYING_MAPI_COUNT_TNEF = struct.pack("<IH", 0x223E9F78, 0) + struct.pack(
    "<BII4sH", 1, 0x00069003, 4, struct.pack("<I", _LYING_COUNT), sum(struct.pack("<I", _LYING_COUNT))
)
LYING_MAPI_COUNT_MESSAGE = (
    b"Subject: t\nMIME-Version: 1.0\nContent-Type: application/ms-tnef; name=winmail.dat\n"
    b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(LYING_MAPI_COUNT_TNEF)
)


def test_a_tnef_mapi_count_larger_than_its_data_is_held_to_the_time_limit() -> None:
    started = time.monotonic()
    decode_message(LYING_MAPI_COUNT_MESSAGE, DecodeLimits(time_limit=0.5))
    assert time.monotonic() - started < 2.5
