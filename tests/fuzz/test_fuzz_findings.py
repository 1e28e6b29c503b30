"""What the fuzzers found, each input kept as a test of the entry that found it (docs/reliability.md)."""

from __future__ import annotations

import base64
import email.errors
import gzip
import struct
import zlib

import pytest

from tests.fuzz import fuzz_decode

# A gzip member whose deflate data is damaged (a stored block with a bad length): gzip.GzipFile raises
# zlib.error, which is neither OSError nor EOFError, so it escaped decode.archive._stream_blocks and
# decode_message (found by fuzz_decode in 60 s from the message corpus). It is the decoder's containment,
# another item of the hardening issue: fixed there, this test passes and its mark goes.
_DAMAGED_GZIP = gzip.compress(b"hello hello hello hello hello\n" * 4, mtime=0)
_DAMAGED_GZIP = _DAMAGED_GZIP[:10] + b"\0" + _DAMAGED_GZIP[11:]
DAMAGED_GZIP_MESSAGE = (
    b"Subject: gz\nMIME-Version: 1.0\nContent-Type: application/gzip; name=a.txt.gz\n"
    b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(_DAMAGED_GZIP)
)


@pytest.mark.xfail(
    raises=zlib.error,
    strict=True,
    reason="zlib.error escapes the decoder: decoder containment (item 1 of the hardening issue)",
)
def test_a_damaged_gzip_member_does_not_escape_the_decoder() -> None:
    fuzz_decode.TestOneInput(DAMAGED_GZIP_MESSAGE)


# An RFC 2047 encoded word whose charset name is not ASCII, in a part's file name: email.header raises
# CharsetError (an email.errors.MessageError, not a HeaderParseError), which escaped decode.walk._filename
# and ended the walk, so parts after it went unlisted (found by fuzz_decode, from the message corpus).
# Decoder containment again (item 1): the pipeline only sees "decoder failure" and calls it UNCHECKED.
BAD_CHARSET_NAME_MESSAGE = (
    b'Subject: x\nContent-Type: text/plain; name="=?utf-\xc3\xa98?q?a.exe?="\n\nhello\n'
)


@pytest.mark.xfail(
    raises=email.errors.CharsetError,
    strict=True,
    reason="CharsetError escapes the decoder: decoder containment (item 1 of the hardening issue)",
)
def test_an_encoded_file_name_with_a_bad_charset_does_not_escape_the_decoder() -> None:
    fuzz_decode.TestOneInput(BAD_CHARSET_NAME_MESSAGE)


def _tnef_attribute(kind_id: int, data: bytes) -> bytes:
    """One attachment-level TNEF attribute: level 2, id, length, data, checksum (MS-OXTNEF 2.1.3)."""
    return struct.pack("<BII", 2, kind_id, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


# A winmail.dat whose attachment title (attAttachTitle) is not UTF-8 and which has no MAPI long file
# name: tnefparse's attachment.name decodes it as UTF-8 and raises UnicodeDecodeError while
# decode.archive._tnef lists the members, outside its try (found by fuzz_decode from mimekit's
# one-file.tnef). Decoder containment (item 1).
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


@pytest.mark.xfail(
    raises=UnicodeDecodeError,
    strict=True,
    reason="UnicodeDecodeError escapes the decoder: decoder containment (item 1 of the hardening issue)",
)
def test_a_tnef_attachment_title_not_in_utf8_does_not_escape_the_decoder() -> None:
    fuzz_decode.TestOneInput(TNEF_MESSAGE)
