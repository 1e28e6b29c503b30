"""The TNEF reader: names and bytes of attachments, the corpus's winmail.dat files, and its bounds: work
linear in the input's size whatever the counts and lengths inside claim."""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.decode import tnef
from qsift.decode.tnef import TnefAttachment, TnefError, read_attachments

#: The shared corpus beside the checkout (/work/main), or where QSIFT_CORPUS says (a worktree elsewhere).
CORPUS = Path(os.environ.get("QSIFT_CORPUS") or Path(__file__).parents[4] / "shared" / "corpus")
HEAD = struct.pack("<IH", tnef.SIGNATURE, 0)
IMESSAGE_IID = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
# Attribute ids (MS-OXTNEF 2.1.3.3) and MAPI property tags (type in the low 16 bits, id in the high).
ATT_OEM_CODEPAGE = 0x00069007
ATT_MAPI_PROPS = 0x00069003
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F
ATT_ATTACHMENT = 0x00069005
PT_LONG = 0x0003
PT_STRING8 = 0x001E
PT_UNICODE = 0x001F
PT_OBJECT = 0x000D
PT_BINARY = 0x0102
PT_MV_SHORT = 0x1002
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_FILENAME = 0x3704
PR_DISPLAY_NAME = 0x3001
PR_ATTACH_DATA_OBJ = 0x3701


def attribute(level: int, attribute_id: int, data: bytes) -> bytes:
    return struct.pack("<BII", level, attribute_id, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def variable(property_type: int, property_id: int, *values: bytes) -> bytes:
    """A property of a variable type: tag, count, then each value's length and padded bytes."""
    body = b"".join(struct.pack("<I", len(v)) + padded(v) for v in values)
    return struct.pack("<HHI", property_type, property_id, len(values)) + body


def mapi(*properties: bytes, count: int | None = None) -> bytes:
    return struct.pack("<I", len(properties) if count is None else count) + b"".join(properties)


def attachment(*attributes: bytes) -> bytes:
    return attribute(2, ATT_ATTACH_REND_DATA, b"\0" * 14) + b"".join(attributes)


def test_the_title_names_an_attachment_and_attach_data_holds_its_bytes() -> None:
    stream = HEAD + attachment(
        attribute(2, ATT_ATTACH_TITLE, b"report.exe\0"), attribute(2, ATT_ATTACH_DATA, b"MZ\0\0")
    )
    contents = read_attachments(stream)
    assert contents.attachments == (TnefAttachment("report.exe", b"MZ\0\0"),)
    assert contents.damage == ""


def test_the_long_file_name_wins_over_the_file_name_the_title_and_the_display_name() -> None:
    properties = mapi(
        variable(PT_STRING8, PR_DISPLAY_NAME, b"shown\0"),
        variable(PT_STRING8, PR_ATTACH_FILENAME, b"INVOIC~1.EXE\0"),
        variable(PT_UNICODE, PR_ATTACH_LONG_FILENAME, "invoice 2026.pdf.exe\0".encode("utf-16-le")),
    )
    stream = HEAD + attachment(
        attribute(2, ATT_ATTACH_TITLE, b"title.txt\0"), attribute(2, ATT_ATTACHMENT, properties)
    )
    assert [a.name for a in read_attachments(stream).attachments] == ["invoice 2026.pdf.exe"]


def test_an_8_bit_name_is_read_in_the_streams_code_page() -> None:
    stream = (
        HEAD
        + attribute(1, ATT_OEM_CODEPAGE, struct.pack("<II", 1251, 0))
        + attachment(attribute(2, ATT_ATTACH_TITLE, b"\xf4\xe0\xe9\xeb.exe\0"))
    )
    assert read_attachments(stream).attachments[0].name == "файл.exe"


def test_an_attached_message_is_its_tnef_stream_without_the_interface_id() -> None:
    inner = HEAD + attachment(attribute(2, ATT_ATTACH_TITLE, b"inner.exe\0"))
    properties = mapi(variable(PT_OBJECT, PR_ATTACH_DATA_OBJ, IMESSAGE_IID + inner))
    stream = HEAD + attachment(attribute(2, ATT_ATTACHMENT, properties))
    assert read_attachments(stream).attachments == (TnefAttachment("", inner),)


def test_binary_attachment_data_keeps_its_trailing_zero_bytes() -> None:
    properties = mapi(variable(PT_BINARY, PR_ATTACH_DATA_OBJ, b"PK\x03\x04\0\0"))
    stream = HEAD + attachment(attribute(2, ATT_ATTACHMENT, properties))
    assert read_attachments(stream).attachments[0].data == b"PK\x03\x04\0\0"


def test_named_properties_multi_values_and_fixed_sizes_are_stepped_over() -> None:
    named_by_string = struct.pack("<HH", PT_LONG, 0x8001) + b"G" * 16 + struct.pack("<II", 1, 6)
    named_by_string += padded("ab\0".encode("utf-16-le")) + struct.pack("<i", 7)
    named_by_number = struct.pack("<HH", PT_LONG, 0x8002) + b"G" * 16 + struct.pack("<IIi", 0, 0x8510, 1)
    shorts = struct.pack("<HHI", PT_MV_SHORT, 0x6666, 3) + struct.pack("<hxxhxxhxx", 1, 2, 3)
    properties = mapi(
        named_by_string,
        named_by_number,
        shorts,
        variable(PT_STRING8, PR_ATTACH_LONG_FILENAME, b"a.scr\0", b"b.txt\0"),
    )
    contents = read_attachments(HEAD + attachment(attribute(2, ATT_ATTACHMENT, properties)))
    assert contents.attachments == (TnefAttachment("a.scr", b""),)
    assert contents.damage == ""


def test_attachments_before_a_lying_length_are_kept_and_the_rest_is_damage() -> None:
    first = attachment(attribute(2, ATT_ATTACH_TITLE, b"first.exe\0"))
    lying = struct.pack("<BII", 2, ATT_ATTACH_DATA, 2**32 - 1) + b"MZ"
    contents = read_attachments(HEAD + first + lying)
    assert [a.name for a in contents.attachments] == ["first.exe"]
    assert "claims 4294967295 bytes" in contents.damage


@pytest.mark.parametrize(
    "properties",
    [
        mapi(count=2**32 - 1),
        mapi(variable(PT_STRING8, PR_ATTACH_FILENAME, b"x\0"), count=2**32 - 1),
        mapi(struct.pack("<HHI", PT_MV_SHORT, 0x6666, 2**32 - 1)),
        mapi(struct.pack("<HHI", PT_BINARY, PR_ATTACH_DATA_OBJ, 2**32 - 1)),
        mapi(struct.pack("<HHII", PT_BINARY, PR_ATTACH_DATA_OBJ, 1, 2**32 - 1)),
    ],
    ids=["no property", "one property", "values", "binary values", "value length"],
)
def test_a_count_or_length_larger_than_its_data_ends_the_reading_at_once(properties: bytes) -> None:
    stream = HEAD + attachment(
        attribute(2, ATT_ATTACH_TITLE, b"a.exe\0"), attribute(2, ATT_ATTACHMENT, properties)
    )
    started = time.monotonic()
    contents = read_attachments(stream)
    assert time.monotonic() - started < 0.5
    assert [a.name for a in contents.attachments] in (["a.exe"], ["x"])


def test_the_message_properties_are_skipped_whatever_they_claim() -> None:
    stream = HEAD + attribute(1, ATT_MAPI_PROPS, mapi(count=2**32 - 1)) + attachment()
    assert read_attachments(stream) == tnef.TnefContents((TnefAttachment("", b""),), "")


def test_what_is_not_tnef_is_an_error() -> None:
    with pytest.raises(TnefError):
        read_attachments(b"PK\x03\x04" + b"\0" * 30)


# --- the corpus -------------------------------------------------------------------------------------------

#: The attachments tnefparse 1.4.0 found in each, by name and size, and what qsift's reader differs in, why:
#: winmail.tnef's two are OLE objects, whose 16-byte interface id tnefparse kept in front of the bytes
#: (and trailing zero bytes it stripped), so libmagic could not see the Word documents they are;
#: panic.tnef's fourth attribute after its attachments claims 1.6 GB in 17 kB: tnefparse ignored the
#: 17 kB silently, the reader reports them as damage (the container is UNCHECKED, its three attachments
#: still checked).
CORPUS_TNEF = {
    "attachments.tnef": [("zappa_av1.jpg", 2937), ("bookmark.htm", 85805)],
    "body.tnef": [],
    "data-before-name.tnef": [("AUTOEXEC.BAT", 0), ("CONFIG.SYS", 0), ("boot.ini", 289)],
    "garbage-at-end.tnef": [],
    "long-filename.tnef": [("allproductsmar2000.dat", 279)],
    "multi-name-property.tnef": [],
    "multi-value-attribute.tnef": [("208225__5_seconds__Voice_Mail.mp3", 10656)],
    "one-file.tnef": [("AUTHORS", 244)],
    "panic.tnef": [("image001.jpg", 11250), ("image002.jpg", 9583), ("image003.png", 7147)],
    "rtf.tnef": [],
    "triples.tnef": [],
    "two-files.tnef": [("AUTHORS", 244), ("README", 893)],
    "unicode-mapi-attr-name.tnef": [
        ("spaconsole2.cfg", 8387),
        ("image001.png", 3815),
        ("image002.png", 3573),
        ("image003.png", 3792),
    ],
    "unicode-mapi-attr.tnef": [("example.dat", 1024)],
    "winmail.tnef": [("Untitled Attachment", 29184), ("Untitled Attachment", 68608)],
}


@pytest.mark.skipif(not (CORPUS / "mimekit" / "tnef").is_dir(), reason="the shared corpus is not here")
@pytest.mark.parametrize("name", sorted(CORPUS_TNEF))
def test_the_corpus_tnef_files_list_the_attachments_tnefparse_listed(name: str) -> None:
    contents = read_attachments((CORPUS / "mimekit" / "tnef" / name).read_bytes())
    assert [(a.name, len(a.data)) for a in contents.attachments] == CORPUS_TNEF[name]
    assert bool(contents.damage) == (name == "panic.tnef")


# --- bounds -----------------------------------------------------------------------------------------------


def lines_run(function: Callable[[], object]) -> int:
    """How many lines of decode/tnef.py `function` runs: a measure of work that no CPU load can skew."""
    count = 0
    source = tnef.__file__

    def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal count
        if frame.f_code.co_filename != source:
            return None
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        function()
    except TnefError:
        pass
    finally:
        sys.settrace(previous)
    return count


#: Lines run per byte of input, at most, and for the few steps any input takes. Every loop of the reader
#: consumes at least 4 bytes per turn, of about 30 lines at most: 8 per byte, with room.
LINES_PER_BYTE = 10
LINES_AT_LEAST = 200

_properties = st.lists(
    st.one_of(
        st.builds(
            variable,
            st.sampled_from([PT_STRING8, PT_UNICODE, PT_OBJECT, PT_BINARY]),
            st.sampled_from(
                [PR_DISPLAY_NAME, PR_ATTACH_FILENAME, PR_ATTACH_LONG_FILENAME, PR_ATTACH_DATA_OBJ]
            ),
            st.binary(max_size=40),
        ),
        st.builds(lambda v: struct.pack("<HHi", PT_LONG, 0x0E20, v), st.integers(-(2**31), 2**31 - 1)),
    ),
    max_size=5,
)
#: The count a MAPI block claims: the true one, or one that lies (as a worm's winmail.dat would).
_counts = st.none() | st.sampled_from([2**16, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
_mapi_blocks = st.builds(lambda properties, count: mapi(*properties, count=count), _properties, _counts)
_attributes = st.lists(
    st.one_of(
        st.just(attribute(2, ATT_ATTACH_REND_DATA, b"\0" * 14)),
        st.builds(
            attribute,
            st.sampled_from([1, 2]),
            st.sampled_from([ATT_ATTACH_TITLE, ATT_ATTACH_DATA]),
            st.binary(max_size=40),
        ),
        st.builds(
            attribute,
            st.sampled_from([1, 2]),
            st.sampled_from([ATT_ATTACHMENT, ATT_MAPI_PROPS]),
            _mapi_blocks,
        ),
    ),
    max_size=8,
).map(lambda attributes: HEAD + b"".join(attributes))


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A well-formed stream with some of its bytes overwritten by a large count or length, or cut short."""
    stream = bytearray(draw(_attributes))
    for _ in range(draw(st.integers(0, 4))):
        offset = draw(st.integers(0, max(0, len(stream) - 4)))
        value = draw(st.sampled_from([0, 1, 2**16, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
        stream[offset : offset + 4] = value.to_bytes(4, "little")
    return bytes(stream[: draw(st.integers(0, len(stream)))])


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutated_streams(), _attributes, st.binary().map(lambda tail: HEAD + tail)))
def test_any_stream_is_read_in_work_linear_in_its_size(stream: bytes) -> None:
    lines = lines_run(lambda: read_attachments(stream))
    assert lines <= LINES_AT_LEAST + LINES_PER_BYTE * len(stream)
    try:
        contents = read_attachments(stream)
    except TnefError:
        return
    assert sum(len(a.data) for a in contents.attachments) <= len(stream)


def test_a_large_stream_of_lying_counts_takes_time_linear_in_its_size() -> None:
    # 100,000 attachments, each a MAPI block claiming 2**32 - 1 properties in 4 bytes: tnefparse would
    # have looped 4 * 10**14 times; the reader does a few steps per attribute.
    lying = attribute(2, ATT_ATTACHMENT, mapi(count=2**32 - 1))
    stream = HEAD + attachment(lying) * 100_000
    started = time.monotonic()
    contents = read_attachments(stream)
    assert len(contents.attachments) == 100_000
    assert time.monotonic() - started < 10  # about 0.3 s unloaded
