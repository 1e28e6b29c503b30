from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import io
import os
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qsift.decode import mime
from qsift.decode.mime import LINE_CHUNK, Entity

CORPUS = Path("/work/shared/corpus")


@dataclass(frozen=True)
class Leaf:
    path: str
    content_type: str
    defects: tuple[str, ...]
    body: bytes
    chunks: tuple[int, ...]  # the sizes of the pieces the body came in


@dataclass
class Recorder:
    """Records what `mime.walk` reports; every body is read to its end."""

    accept: bool = True
    events: list[tuple[str, str]] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    structures: list[Entity] = field(default_factory=list)
    messages: list[Entity] = field(default_factory=list)
    headers: dict[str, email.message.Message] = field(default_factory=dict)

    def leaf(self, entity: Entity, body: Iterator[bytes]) -> None:
        chunks = list(body)
        self.events.append(("leaf", entity.path))
        self.headers[entity.path] = entity.header
        self.leaves.append(
            Leaf(entity.path, entity.content_type, entity.defects, b"".join(chunks), tuple(map(len, chunks)))
        )

    def message_start(self, entity: Entity) -> bool:
        self.events.append(("message", entity.path))
        self.messages.append(entity)
        return self.accept

    def message_end(self) -> None:
        self.events.append(("end", ""))

    def structure(self, entity: Entity) -> None:
        self.events.append(("multipart", entity.path))
        self.structures.append(entity)

    @property
    def bodies(self) -> dict[str, bytes]:
        return {leaf.path: leaf.body for leaf in self.leaves}

    def one_leaf(self) -> Leaf:
        assert len(self.leaves) == 1, self.leaves
        return self.leaves[0]


def record(data: bytes, *, accept: bool = True, prefix: str = "") -> Recorder:
    recorder = Recorder(accept=accept)
    mime.walk(io.BytesIO(data), recorder, prefix=prefix)
    return recorder


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


def stdlib_leaves(data: bytes) -> list[bytes]:
    """The decoded bodies of the email package's leaves, in order."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    bodies: list[bytes] = []
    for part in message.walk():
        if not part.is_multipart() and part.get_content_type() not in ("message/rfc822", "message/global"):
            body = part.get_payload(decode=True)
            assert isinstance(body, bytes)
            bodies.append(body)
    return bodies


NESTED = b"""\
From: a@example.org
To: b@example.org
Subject: nested
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: text/plain

first
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html

<p>html</p>
--inner--
inner epilogue
--outer
Content-Type: application/octet-stream; name="a.bin"
Content-Transfer-Encoding: base64

AAECAw==
--outer--
This is the epilogue.
--outer
Content-Type: text/plain

not a part: after the close delimiter
"""


# -- paths and structure


def test_single_part_message_is_part_1_and_keeps_its_last_line_break() -> None:
    recorder = record(b"Subject: hi\n\nhello\nworld\n")
    assert recorder.events == [("leaf", "1")]
    leaf = recorder.one_leaf()
    assert (leaf.content_type, leaf.body, leaf.defects) == ("text/plain", b"hello\nworld\n", ())
    assert recorder.headers["1"]["subject"] == "hi"


def test_prefix_numbers_the_parts_below_it() -> None:
    assert record(b"Subject: hi\n\nhello\n", prefix="3/2").events == [("leaf", "3/2/1")]
    assert record(NESTED, prefix="7").events[:2] == [("multipart", "7"), ("leaf", "7/1")]


def test_empty_input_reports_nothing() -> None:
    assert record(b"").events == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_nested_multipart_paths_and_bodies(newline: bytes) -> None:
    recorder = record(NESTED.replace(b"\n", newline))
    assert recorder.events == [
        ("multipart", ""),
        ("leaf", "1"),
        ("multipart", "2"),
        ("leaf", "2/1"),
        ("leaf", "2/2"),
        ("leaf", "3"),
    ]
    assert recorder.bodies == {"1": b"first", "2/1": b"plain", "2/2": b"<p>html</p>", "3": b"\0\1\2\3"}
    assert [leaf.content_type for leaf in recorder.leaves] == [
        "text/plain",
        "text/plain",
        "text/html",
        "application/octet-stream",
    ]
    assert [s.content_type for s in recorder.structures] == ["multipart/mixed", "multipart/alternative"]
    assert all(s.defects == () for s in recorder.structures)
    assert recorder.headers["3"].get_filename() == "a.bin"


ATTACHED = b"""\
Content-Type: multipart/mixed; boundary=b

--b

cover
--b
Content-Type: message/rfc822

Subject: inner multipart
Content-Type: multipart/mixed; boundary=c

--c

inner one
--c
Content-Type: message/rfc822

Subject: twice inside

deepest
--c--
--b
Content-Type: message/rfc822
Content-Transfer-Encoding: 7bit

Subject: inner single

single
--b--
"""


def test_attached_messages_number_their_parts_below_their_own_path() -> None:
    recorder = record(ATTACHED)
    assert recorder.events == [
        ("multipart", ""),
        ("leaf", "1"),
        ("message", "2"),
        ("multipart", "2"),
        ("leaf", "2/1"),
        ("message", "2/2"),
        ("leaf", "2/2/1"),
        ("end", ""),
        ("end", ""),
        ("message", "3"),
        ("leaf", "3/1"),
        ("end", ""),
    ]
    assert recorder.bodies == {"1": b"cover", "2/1": b"inner one", "2/2/1": b"deepest", "3/1": b"single"}
    assert recorder.headers["3/1"]["subject"] == "inner single"
    assert [m.content_type for m in recorder.messages] == ["message/rfc822"] * 3


def test_a_declined_attached_message_is_skipped_and_the_next_part_still_found() -> None:
    recorder = record(ATTACHED, accept=False)
    assert recorder.events == [
        ("multipart", ""),
        ("leaf", "1"),
        ("message", "2"),
        ("message", "3"),
    ]
    data = ATTACHED.replace(b"--b--\n", b"--b\n\nlast\n--b--\n")
    assert record(data, accept=False).bodies == {"1": b"cover", "4": b"last"}


def test_a_top_level_message_rfc822_and_message_global() -> None:
    recorder = record(b"Content-Type: message/rfc822\n\nSubject: in\n\nbody\n")
    assert recorder.events == [("message", "1"), ("leaf", "1/1"), ("end", "")]
    recorder = record(b"Content-Type: message/global; charset=utf-8\n\nSubject: in\n\nbody\n")
    assert recorder.events == [("message", "1"), ("leaf", "1/1"), ("end", "")]


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "x-uuencode"])
def test_an_encoded_attached_message_is_a_leaf(cte: str) -> None:
    inner = b"Subject: inner\n\nbody\n"
    encoded = {
        "base64": base64.encodebytes(inner),
        "quoted-printable": quopri.encodestring(inner),
        "x-uuencode": b"begin 644 m.eml\n" + binascii.b2a_uu(inner) + b"`\nend\n",
    }[cte]
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n"
        b"Content-Transfer-Encoding: " + cte.encode() + b"\n\n" + encoded + b"--b--\n"
    )
    recorder = record(data)
    assert recorder.events == [("multipart", ""), ("leaf", "1")]
    assert recorder.one_leaf().content_type == "message/rfc822"
    assert recorder.one_leaf().body.rstrip(b"\n") == inner.rstrip(b"\n")


def test_an_attached_message_cut_short_by_the_end_of_the_file() -> None:
    recorder = record(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n")
    assert recorder.events == [("multipart", ""), ("message", "1"), ("end", "")]


def test_digest_children_default_to_message_rfc822() -> None:
    data = b"""\
Content-Type: multipart/digest; boundary=d

--d

Subject: first

one
--d
Content-Type: text/plain

a plain text part
--d

Subject: third
Content-Type: multipart/mixed; boundary=e

--e

three
--e--
--d--
"""
    recorder = record(data)
    assert recorder.events == [
        ("multipart", ""),
        ("message", "1"),
        ("leaf", "1/1"),
        ("end", ""),
        ("leaf", "2"),
        ("message", "3"),
        ("multipart", "3"),
        ("leaf", "3/1"),
        ("end", ""),
    ]
    assert recorder.bodies == {"1/1": b"one", "2": b"a plain text part", "3/1": b"three"}
    # The default applies only to the digest's own children.
    assert [leaf.content_type for leaf in recorder.leaves] == ["text/plain"] * 3


# -- delimiters


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_the_line_break_before_a_delimiter_is_not_part_of_the_body(newline: bytes) -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nline\n--b\n\nline\n\n--b\n\n\n--b\n\n--b--\n"
    ).replace(b"\n", newline)
    recorder = record(data)
    assert [leaf.body for leaf in recorder.leaves] == [b"line", b"line" + newline, b"", b""]


def test_delimiters_with_trailing_white_space() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b \t \nContent-Type: text/html\n\nx\n"
        b"--b\t\n\ny\n--b--  \nepilogue\n"
    )
    recorder = record(data)
    assert recorder.bodies == {"1": b"x", "2": b"y"}
    assert recorder.leaves[0].content_type == "text/html"


@pytest.mark.parametrize(
    "line", [b"--bx", b"-- b", b"--b--x", b"--b---", b" --b", b"---b", b"--B", b"--b x", b"--b-- x"]
)
def test_lines_that_only_look_like_delimiters_are_body(line: bytes) -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nbefore\n" + line + b"\nafter\n--b--\n"
    assert record(data).bodies == {"1": b"before\n" + line + b"\nafter"}


def test_the_close_delimiter_ends_the_multipart_and_the_epilogue_is_ignored() -> None:
    recorder = record(NESTED)
    assert "not a part" not in repr(recorder.bodies)
    assert "epilogue" not in repr(recorder.bodies)
    assert "preamble" not in repr(recorder.bodies)


def test_a_missing_close_delimiter_ends_the_last_part_at_the_end_of_the_file() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\nlast line\n"
    recorder = record(data)
    assert recorder.bodies == {"1": b"one", "2": b"two\nlast line\n"}
    assert recorder.structures[0].defects == ()


def test_a_delimiter_at_the_end_of_the_file_without_a_line_break() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b--"
    assert record(data).bodies == {"1": b"one"}
    assert record(data[:-2]).events == [("multipart", ""), ("leaf", "1")]


def test_an_enclosing_boundary_ends_an_inner_part_missing_its_close_delimiter() -> None:
    data = b"""\
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner

inner one
--inner

inner two
--outer
Content-Type: multipart/related; boundary=third

--third

third one
--outer

after
--outer--
"""
    recorder = record(data)
    assert recorder.events == [
        ("multipart", ""),
        ("multipart", "1"),
        ("leaf", "1/1"),
        ("leaf", "1/2"),
        ("multipart", "2"),
        ("leaf", "2/1"),
        ("leaf", "3"),
    ]
    assert recorder.bodies == {"1/1": b"inner one", "1/2": b"inner two", "2/1": b"third one", "3": b"after"}


def test_an_inner_epilogue_ends_at_the_enclosing_delimiter() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n"
        b"--i\n\nin\n--i--\nepilogue\n--o\n\nnext\n--o--\n"
    )
    assert record(data).bodies == {"1/1": b"in", "2": b"next"}


def test_boundaries_that_are_prefixes_of_each_other() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=ab\n\n--ab\nContent-Type: multipart/mixed; boundary=a\n\n"
        b"--a\n\ninner\n--ab\n\nouter\n--ab--\n"
    )
    assert record(data).bodies == {"1/1": b"inner", "2": b"outer"}


def test_preamble_and_epilogue_are_ignored() -> None:
    data = b"""\
Content-Type: multipart/mixed; boundary=b

preamble line one
--not-b
Content-Type: text/html

--b

part
--b--
epilogue
--b
Content-Type: text/html

epilogue too
"""
    recorder = record(data)
    assert recorder.events == [("multipart", ""), ("leaf", "1")]
    assert recorder.bodies == {"1": b"part"}


def test_a_start_boundary_that_never_comes_gives_one_leaf_with_the_whole_body() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\nline one\n--c\nline three\n"
    recorder = record(data)
    assert recorder.events == [("multipart", ""), ("leaf", "1")]
    assert recorder.structures[0].defects == ("StartBoundaryNotFoundDefect",)
    leaf = recorder.one_leaf()
    assert (leaf.content_type, leaf.body) == ("multipart/mixed", b"line one\n--c\nline three\n")
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    assert "StartBoundaryNotFoundDefect" in [type(d).__name__ for d in message.defects]
    assert message.get_payload() == leaf.body.decode()


def test_an_inner_start_boundary_that_never_comes_ends_at_the_enclosing_delimiter() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n"
        b"no start\n--o\n\nnext\n--o--\n"
    )
    recorder = record(data)
    assert recorder.events == [("multipart", ""), ("multipart", "1"), ("leaf", "1/1"), ("leaf", "2")]
    assert recorder.structures[1].defects == ("StartBoundaryNotFoundDefect",)
    assert recorder.bodies == {"1/1": b"no start", "2": b"next"}


def test_a_close_delimiter_before_any_part() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\nalone\n--b--\nepilogue\n--b\n\nlate\n"
    recorder = record(data)
    assert recorder.events == [("multipart", ""), ("leaf", "1")]
    assert recorder.structures[0].defects == ("StartBoundaryNotFoundDefect",)
    assert recorder.bodies == {"1": b"alone"}


def test_a_huge_preamble_without_a_start_boundary_is_kept_only_up_to_a_bound() -> None:
    line = b"p" * 999 + b"\n"
    count = mime._PREAMBLE_KEEP // len(line) + 100
    recorder = record(b"Content-Type: multipart/mixed; boundary=b\n\n" + line * count)
    body = recorder.one_leaf().body
    assert mime._PREAMBLE_KEEP <= len(body) < len(line) * count
    assert body == (line * count)[: len(body)]


def test_a_multipart_without_a_boundary_is_a_leaf() -> None:
    recorder = record(b"Content-Type: multipart/mixed\n\nbody\n--b\n")
    assert recorder.events == [("leaf", "1")]
    leaf = recorder.one_leaf()
    assert (leaf.path, leaf.content_type, leaf.body) == ("1", "multipart/mixed", b"body\n--b\n")
    assert leaf.defects == ("NoBoundaryInMultipartDefect",)

    nested = (
        b"Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/alternative\n\nx\n--o--\n"
    )
    recorder = record(nested)
    assert recorder.events == [("multipart", ""), ("leaf", "1")]
    assert recorder.one_leaf().defects == ("NoBoundaryInMultipartDefect",)
    assert recorder.one_leaf().body == b"x"


def test_an_empty_boundary_parameter_is_no_boundary() -> None:
    recorder = record(b'Content-Type: multipart/mixed; boundary=""\n\n--\nx\n')
    assert recorder.one_leaf().defects == ("NoBoundaryInMultipartDefect",)


def test_rfc2231_boundary_parameter() -> None:
    data = b"Content-Type: multipart/mixed; boundary*=us-ascii'en'abc\n\n--abc\n\nA\n--abc--\n"
    assert record(data).bodies == {"1": b"A"}
    data = b"Content-Type: multipart/mixed; boundary*0=ab; boundary*1=c\n\n--abc\n\nA\n--abc--\n"
    assert record(data).bodies == {"1": b"A"}


def test_an_encoded_multipart_is_a_defect_but_still_split() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n\none\n--b--\n"
    )
    recorder = record(data)
    assert recorder.structures[0].defects == ("InvalidMultipartContentTransferEncodingDefect",)
    assert recorder.bodies == {"1": b"one"}


@pytest.mark.parametrize("cte", ["7bit", "8BIT", " binary "])
def test_identity_encodings_of_a_multipart_are_no_defect(cte: str) -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: %s\n\n--b\n\none\n--b--\n"
    assert record(data % cte.encode()).structures[0].defects == ()


# -- headers


def test_a_header_only_part() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n--b\n--b\n"
        b"Content-Type: image/png\nContent-Transfer-Encoding: base64\n--b--\n"
    )
    recorder = record(data)
    assert [(leaf.path, leaf.content_type, leaf.body) for leaf in recorder.leaves] == [
        ("1", "text/html", b""),
        ("2", "text/plain", b""),
        ("3", "image/png", b""),
    ]
    assert all(leaf.defects == () for leaf in recorder.leaves)


def test_a_header_only_message() -> None:
    recorder = record(b"Subject: only a header\nFrom: a@example.org\n")
    assert recorder.events == [("leaf", "1")]
    assert recorder.one_leaf().body == b""
    assert recorder.headers["1"]["from"] == "a@example.org"


def test_a_message_without_a_header() -> None:
    recorder = record(b"\nbody only\n")
    assert recorder.one_leaf().body == b"body only\n"
    assert recorder.one_leaf().defects == ()


def test_a_first_header_line_that_is_a_continuation_is_dropped() -> None:
    recorder = record(b" stray continuation\n\tanother\nSubject: real\n folded\n\nbody\n")
    leaf = recorder.one_leaf()
    assert (leaf.body, leaf.defects) == (b"body\n", ())
    header = recorder.headers["1"]
    assert header.keys() == ["Subject"]
    assert header["subject"] == "real\n folded"


def test_a_non_header_line_in_the_header_starts_the_body() -> None:
    recorder = record(b"Subject: x\nthis is not a header\nmore\n\nbody\n")
    leaf = recorder.one_leaf()
    assert leaf.defects == ("MissingHeaderBodySeparatorDefect",)
    assert leaf.body == b"this is not a header\nmore\n\nbody\n"
    message = email.message_from_bytes(b"Subject: x\nthis is not a header\nmore\n\nbody\n")
    assert [type(d).__name__ for d in message.defects] == ["MissingHeaderBodySeparatorDefect"]
    assert message.get_payload(decode=True) == leaf.body


def test_a_missing_separator_in_a_part_header() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n<p>x</p>\n--b--\n"
    leaf = record(data).one_leaf()
    assert (leaf.content_type, leaf.body, leaf.defects) == (
        "text/html",
        b"<p>x</p>",
        ("MissingHeaderBodySeparatorDefect",),
    )


def test_a_missing_separator_in_a_multipart_header_is_on_the_multipart() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\npreamble text\n--b\n\nx\n--b--\n"
    recorder = record(data)
    assert recorder.structures[0].defects == ("MissingHeaderBodySeparatorDefect",)
    assert recorder.bodies == {"1": b"x"}


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_leading_mbox_from_line(newline: bytes) -> None:
    data = b"From sender@example.org Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n".replace(b"\n", newline)
    recorder = record(data)
    leaf = recorder.one_leaf()
    assert (leaf.body, leaf.defects) == (b"body" + newline, ())
    assert recorder.headers["1"]["subject"] == "x"
    assert recorder.headers["1"].get_unixfrom() == "From sender@example.org Mon Jan  1 00:00:00 2024"


def test_a_from_line_later_in_the_header_is_not_a_field() -> None:
    leaf = record(b"Subject: x\nFrom someone else\n\nbody\n").one_leaf()
    assert leaf.defects == ("MissingHeaderBodySeparatorDefect",)
    assert leaf.body == b"From someone else\n\nbody\n"


def test_header_field_names_with_white_space_before_the_colon() -> None:
    recorder = record(b"Subject : spaced\nContent-Type : text/html\n\nbody\n")
    assert recorder.one_leaf().defects == ()


def test_a_very_long_header_line_arrives_in_pieces_and_stays_one_field() -> None:
    subject = b"s" * (LINE_CHUNK * 2 + 10)
    recorder = record(b"Subject: " + subject + b"\nX-After: yes\n\nbody\n")
    assert recorder.one_leaf().body == b"body\n"
    assert recorder.headers["1"]["subject"] == subject.decode()
    assert recorder.headers["1"]["x-after"] == "yes"


def test_a_header_beyond_the_limit_is_cut_but_the_body_still_found() -> None:
    fields = b"".join(b"X-Filler-%d: %s\n" % (i, b"f" * 1000) for i in range(mime._HEADER_LIMIT // 1000 + 50))
    recorder = record(b"Subject: first\n" + fields + b"X-Last: gone\n\nbody\n")
    leaf = recorder.one_leaf()
    assert leaf.body == b"body\n"
    header = recorder.headers["1"]
    assert header["subject"] == "first"
    assert header["x-last"] is None


# -- transfer encodings


def _leaf_body(cte: str, body: bytes, *, newline: bytes = b"\n", in_multipart: bool = True) -> bytes:
    head = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: " + cte.encode() + b"\n\n"
    if in_multipart:
        data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n" + head + body + b"\n--b--\n"
    else:
        data = head + body
    return record(data.replace(b"\n", newline) if newline != b"\n" else data).one_leaf().body


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_base64_with_line_breaks_and_white_space(newline: bytes) -> None:
    payload = bytes(range(256)) * 3
    encoded = base64.b64encode(payload)
    spaced = b"\n".join(b" \t" + encoded[i : i + 60] + b" " for i in range(0, len(encoded), 60))
    assert _leaf_body("base64", spaced, newline=newline) == payload
    assert _leaf_body("BASE64 ", spaced, newline=newline) == payload


def test_base64_with_junk_characters() -> None:
    payload = b"hello, world: junk is skipped"
    encoded = base64.b64encode(payload)
    junky = b"!" + encoded[:8] + b"*\x00" + encoded[8:20] + b"." + encoded[20:] + b"!!"
    assert _leaf_body("base64", junky) == payload
    assert stdlib_leaves(b"Content-Transfer-Encoding: base64\n\n" + junky) == [payload]


@pytest.mark.parametrize("payload", [b"A", b"AB", b"ABC", b"ABCD", b"ABCDE"])
def test_base64_with_missing_padding(payload: bytes) -> None:
    assert _leaf_body("base64", base64.b64encode(payload).rstrip(b"=")) == payload


def test_base64_with_misplaced_padding_keeps_what_decodes() -> None:
    # binascii (and so the email package) stops at the first padding; a filter reads on.
    assert _leaf_body("base64", b"QQ==QkM=") == b"ABC"
    assert _leaf_body("base64", b"Q") == b""
    assert _leaf_body("base64", b"") == b""


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("width", [4, 57, 76, 1000, 5000])
def test_base64_over_many_lines_larger_than_the_decoding_chunk(newline: bytes, width: int) -> None:
    payload = os.urandom(50_000)
    encoded = base64.b64encode(payload)
    lines = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    assert _leaf_body("base64", lines, newline=newline) == payload
    assert _leaf_body("base64", lines, newline=newline, in_multipart=False) == payload


def test_base64_on_one_line_longer_than_line_chunk() -> None:
    payload = os.urandom(LINE_CHUNK * 2)
    assert _leaf_body("base64", base64.b64encode(payload)) == payload


def test_base64_junk_in_a_large_body_does_not_shift_the_rest() -> None:
    payload = os.urandom(6000)
    encoded = base64.encodebytes(payload)
    junky = encoded[:100] + b"!" + encoded[100:]
    assert stdlib_leaves(b"Content-Transfer-Encoding: base64\n\n" + junky) == [payload]
    assert _leaf_body("base64", junky) == payload


def test_base64_junk_and_missing_padding() -> None:
    assert stdlib_leaves(b"Content-Transfer-Encoding: base64\n\nQUI!") == [b"AB"]
    assert _leaf_body("base64", b"QUI!") == b"AB"


def test_base64_with_padding_in_the_middle_decodes_both_sides() -> None:
    # Two encoded pieces glued together, each with its own padding, as some broken encoders send.
    assert _leaf_body("base64", b"QUI=\nQ0Q=\n") == b"ABCD"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_quoted_printable_soft_line_breaks_and_escapes(newline: bytes) -> None:
    body = b"caf=C3=A9 soft=\nbreak, =3D equals=20\nlast line=\n"
    expected = b"caf\xc3\xa9 softbreak, = equals \nlast line".replace(b"\n", newline)
    assert _leaf_body("quoted-printable", body, newline=newline) == expected
    encoded = b"Content-Transfer-Encoding: quoted-printable\n\n" + body
    assert stdlib_leaves(encoded.replace(b"\n", newline)) == [
        _leaf_body("quoted-printable", body, newline=newline, in_multipart=False)
    ]


def test_quoted_printable_line_longer_than_line_chunk() -> None:
    line = b"q" * (LINE_CHUNK + 500) + b"=41\n"
    assert _leaf_body("quoted-printable", line, in_multipart=False) == b"q" * (LINE_CHUNK + 500) + b"A\n"


def test_quoted_printable_escape_across_a_line_chunk_boundary() -> None:
    line = b"y" * (LINE_CHUNK - 2) + b"=41z\n"
    expected = b"y" * (LINE_CHUNK - 2) + b"Az\n"
    assert stdlib_leaves(b"Content-Transfer-Encoding: quoted-printable\n\n" + line) == [expected]
    assert _leaf_body("quoted-printable", line, in_multipart=False) == expected


def _uuencode(payload: bytes, name: bytes = b"f.bin") -> bytes:
    lines = [binascii.b2a_uu(payload[i : i + 45]) for i in range(0, len(payload), 45)]
    return b"begin 644 " + name + b"\n" + b"".join(lines) + b"`\nend\n"


@pytest.mark.parametrize("cte", ["x-uuencode", "uuencode", "x-uue", "X-UUENCODE"])
def test_uuencoded_bodies(cte: str) -> None:
    payload = os.urandom(1000)
    body = b"text before the begin line\n\n" + _uuencode(payload) + b"text after end\n"
    assert _leaf_body(cte, body) == payload
    assert _leaf_body(cte, body, newline=b"\r\n") == payload
    assert stdlib_leaves(b"Content-Transfer-Encoding: " + cte.encode() + b"\n\n" + body) == [payload]


def test_uuencoded_lines_with_trailing_garbage_or_illegal_characters() -> None:
    good = binascii.b2a_uu(b"abc").rstrip(b"\n")
    body = b"begin 644 f\n" + good + b"GARBAGE!\n" + b"#\x01\x01\x01\x01\n\n`\nend\n"
    assert _leaf_body("x-uuencode", body) == b"abc"


def test_uuencoded_body_without_begin_is_empty() -> None:
    assert _leaf_body("x-uuencode", b"no begin here\n" + binascii.b2a_uu(b"x") + b"end\n") == b""


def test_uuencoded_body_with_a_line_longer_than_line_chunk() -> None:
    body = b"x" * (LINE_CHUNK + 10) + b"\n" + _uuencode(b"payload")
    assert _leaf_body("x-uuencode", body) == b"payload"


def test_parts_after_a_uuencoded_part_are_still_found() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding: x-uuencode\n\n"
        + _uuencode(b"hello")
        + b"\n--b\nContent-Type: application/x-msdownload; name=evil.exe\n\nMZ evil\n--b--\n"
    )
    recorder = record(data)
    assert recorder.bodies == {"1": b"hello", "2": b"MZ evil"}


def test_uue_transfer_encoding_is_uuencode() -> None:
    body = _uuencode(b"hello")
    assert stdlib_leaves(b"Content-Transfer-Encoding: uue\n\n" + body) == [b"hello"]
    assert _leaf_body("uue", body) == b"hello"


def test_uuencoded_body_without_end_line_keeps_its_last_line() -> None:
    body = b"begin 644 f\n" + binascii.b2a_uu(b"hello").rstrip(b"\n")
    assert stdlib_leaves(b"Content-Transfer-Encoding: x-uuencode\n\n" + body) == [b"hello"]
    assert _leaf_body("x-uuencode", body) == b"hello"


@pytest.mark.parametrize("cte", ["7bit", "8bit", "binary", "gzip64", ""])
def test_identity_and_unknown_encodings_pass_the_body_through(cte: str) -> None:
    body = b"\x00\xff raw =41 bytes\nQUJD\n"
    assert _leaf_body(cte, body) == body


# -- long lines


def test_long_lines_arrive_in_pieces_and_are_never_a_boundary() -> None:
    long_line = b"x" * LINE_CHUNK + b"--b--\n" + b"--b" + b"y" * (LINE_CHUNK - 3) + b"--b\n"
    # Every LINE_CHUNK-th byte starts a piece: two of them start with a delimiter of b.
    assert long_line[LINE_CHUNK:].startswith(b"--b--")
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n"
        + long_line
        + b"z" * (3 * LINE_CHUNK)
        + b"\n--b\n\nnext\n--b--\n"
    )
    recorder = record(data)
    first = recorder.leaves[0]
    assert first.body == long_line + b"z" * (3 * LINE_CHUNK)
    assert max(first.chunks) <= LINE_CHUNK
    assert len(first.chunks) > 4
    assert recorder.bodies["2"] == b"next"


def test_a_delimiter_right_after_a_long_line() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n" + b"x" * (LINE_CHUNK + 1) + b"\n--b--\n"
    assert record(data).bodies == {"1": b"x" * (LINE_CHUNK + 1)}


@pytest.mark.parametrize("length", [LINE_CHUNK - 2, LINE_CHUNK, LINE_CHUNK + 1])
def test_long_crlf_lines_before_a_delimiter(length: int) -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + b"x" * length + b"\r\n--b--\r\n"
    assert record(data).bodies == {"1": b"x" * length}


def test_a_crlf_cut_by_line_chunk_before_a_delimiter() -> None:
    length = LINE_CHUNK - 1  # the line's CR is byte LINE_CHUNK, its LF comes in the next piece
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + b"x" * length + b"\r\n--b--\r\n"
    assert stdlib_leaves(data) == [b"x" * length]
    assert record(data).bodies == {"1": b"x" * length}


# -- against the email package


def _email_package_message() -> email.message.EmailMessage:
    inner = email.message.EmailMessage()
    inner["Subject"] = "inner"
    inner["From"] = "inner@example.org"
    inner.set_content("inner text\nwith two lines\n")
    inner.add_attachment(b"\x00inner binary\xff" * 50, maintype="application", subtype="octet-stream")

    message = email.message.EmailMessage()
    message["Subject"] = "outer"
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message.set_content("plain body, caf\u00e9\n" + "long line " * 30 + "\n")
    message.add_alternative("<html><body><p>caf\u00e9</p></body></html>\n", subtype="html")
    message.add_attachment(os.urandom(10_000), maintype="application", subtype="pdf", filename="a.pdf")
    message.add_attachment(
        "text attachment =\n\u00fcber\n" * 20, subtype="plain", filename="t.txt", cte="quoted-printable"
    )
    message.add_attachment(b"", maintype="image", subtype="png", filename="empty.png")
    message.add_attachment(inner)
    message.add_attachment(os.urandom(3000), maintype="application", subtype="zip", filename="z.zip")
    return message


@pytest.mark.parametrize("policy", [email.policy.default, email.policy.SMTP])
def test_decoded_leaves_equal_the_email_package(policy: email.policy.Policy) -> None:
    message = _email_package_message()
    data = message.as_bytes(policy=policy)
    recorder = record(data)
    expected = stdlib_leaves(data)
    assert [leaf.body for leaf in recorder.leaves] == expected
    assert len(expected) == 8
    attached = [path for kind, path in recorder.events if kind == "message"]
    assert len(attached) == 1
    assert [leaf.path for leaf in recorder.leaves] == ["1/1", "1/2", "2", "3", "4", "5/1", "5/2", "6"]
    assert recorder.events[-1] == ("leaf", "6")
    assert [s.path for s in recorder.structures] == ["", "1", "5"]


_PART_TYPES = [
    ("application", "octet-stream", "base64"),
    ("image", "png", "base64"),
    ("application", "pdf", "base64"),
    ("application", "octet-stream", "quoted-printable"),
    ("text", "plain", None),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(st.integers(0, len(_PART_TYPES) - 1), st.binary(max_size=3000)), max_size=6),
    smtp=st.booleans(),
)
def test_property_decoded_leaves_equal_the_payloads(parts: list[tuple[int, bytes]], smtp: bool) -> None:
    message = email.message.EmailMessage()
    message["Subject"] = "property"
    message.set_content("the text part\n")
    expected: list[bytes | None] = [None]
    for choice, payload in parts:
        maintype, subtype, cte = _PART_TYPES[choice]
        if maintype == "text":
            message.add_attachment(payload.decode("latin-1"), subtype=subtype, charset="utf-8")
            expected.append(None)  # line breaks are the message's own: compared with the email package only
        else:
            message.add_attachment(payload, maintype=maintype, subtype=subtype, cte=cte)
            expected.append(payload if cte == "base64" else None)
    data = message.as_bytes(policy=email.policy.SMTP if smtp else email.policy.default)
    got = [leaf.body for leaf in record(data).leaves]
    stdlib = stdlib_leaves(data)
    assert got == stdlib
    assert all(want is None or want == body for want, body in zip(expected, got, strict=True))
    if not smtp:
        # the line breaks of text parts are the message's own; with LF they are the payload's
        for (choice, payload), body in zip(parts, got[1:], strict=True):
            if _PART_TYPES[choice][0] == "text" and b"\r" not in payload:
                text = payload.decode("latin-1")
                assert body.decode("utf-8") == (text if text.endswith("\n") else text + "\n")


_BODY_FRAGMENTS = [b"\n", b"\r\n", b"\r", b" ", b"\t", b"-", b"--b", b"--b--", b"--bx", b"QUJD", b"text"]
_LINE_END = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _body_line_by_line(text: bytes) -> bytes:
    """The part body RFC 2046 gives `text` (a part's content, then more), taking each line on its own."""
    lines: list[bytes] = _LINE_END.findall(text)
    ended = next(i for i, line in enumerate(lines) if line.rstrip(b" \t\r\n") in (b"--b", b"--b--"))
    body = b"".join(lines[:ended])
    return body[:-2] if body.endswith(b"\r\n") else body[:-1]


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(st.sampled_from(_BODY_FRAGMENTS), max_size=80).map(b"".join),
    cte=st.sampled_from([b"7bit", b"binary", b"8bit"]),
)
def test_property_a_body_read_in_runs_of_lines_is_the_body_line_by_line(body: bytes, cte: bytes) -> None:
    # The reader takes lines that cannot be delimiters several at a time; what a part holds must not
    # depend on it: dashes, bare CRs and CR LF anywhere, a delimiter after any of them.
    text = body + b"\n--b--\n"
    message = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding: %s\n\n" % cte
    assert record(message + text).leaves[0].body == _body_line_by_line(text)


_FRAGMENTS = [
    b"\n",
    b"\r\n",
    b"\r",
    b"--b\n",
    b"--b--\n",
    b"--c\r\n",
    b"Content-Type: multipart/mixed; boundary=b\n",
    b"Content-Type: multipart/digest; boundary=c\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"Content-Transfer-Encoding: x-uuencode\n",
    b"begin 644 x\n",
    b"end\n",
    b"#86)C\n",
    b"=41=\n",
    b"QUJD!=\n",
    b" continued\n",
    b"From x\n",
    b"Subject: s\n",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=2000)
    | st.lists(st.sampled_from(_FRAGMENTS) | st.binary(max_size=20)).map(b"".join)
)
# Short uuencoded lines, zero-padded to the length they claim (found by a fresh run).
@example(data=b"Content-Transfer-Encoding:x-uuencode\nbegin 6\n=\nQ")
def test_property_arbitrary_bytes_never_raise(data: bytes) -> None:
    recorder = record(data)
    opened = sum(1 for kind, _ in recorder.events if kind == "message")
    closed = sum(1 for kind, _ in recorder.events if kind == "end")
    assert opened == closed

    def uuencoded(leaf: Leaf) -> bool:
        encoding = str(recorder.headers[leaf.path].get("content-transfer-encoding", ""))
        return encoding.strip().lower() in ("x-uuencode", "uuencode", "x-uue")

    decoded = sum(len(leaf.body) for leaf in recorder.leaves if not uuencoded(leaf))
    assert decoded <= len(data)
    # A uuencoded line says how many bytes it holds, and the decoder pads with zeros what is missing (the
    # spaces that encode zeros are often stripped in transit, as the uu module and uudeview assume): at
    # most 45 bytes from a 2-byte line ("M" and its line end). The decoder's quotas bound the rest.
    assert sum(len(leaf.body) for leaf in recorder.leaves if uuencoded(leaf)) <= 45 * len(data) // 2


def test_declined_messages_in_arbitrary_bytes() -> None:
    data = b"".join(_FRAGMENTS) * 3
    record(data, accept=False)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is not there")
def test_every_corpus_file_walks_without_an_exception() -> None:
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file())
    assert files
    failures: list[str] = []
    for path in files:
        with path.open("rb") as stream:
            try:
                mime.walk(stream, Recorder())
            except Exception as exc:  # collected, to report every failing file at once
                failures.append(f"{path}: {exc!r}")
    assert failures == []


# -- a bare CR is a line end: the SMTP forward sends it as CR LF


HIDDEN_BY_A_BARE_CR = (
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r--B\r\n"
    b'Content-Type: application/octet-stream; name="invoice.pdf.exe"\r\n\r\nMZ\r\n--B--\r\n'
)


def test_a_delimiter_after_a_bare_cr_starts_a_part() -> None:
    recorder = record(HIDDEN_BY_A_BARE_CR)
    assert recorder.bodies == {"1": b"hello", "2": b"MZ"}
    assert recorder.headers["2"].get_filename() == "invoice.pdf.exe"


def test_a_header_field_after_a_bare_cr_is_a_field() -> None:
    data = b"Subject: hi\rContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
    assert record(data).one_leaf().content_type == "text/html"


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
def test_a_bare_cr_at_the_line_piece_bound(offset: int) -> None:
    # The CR lands on or around the last octet of a LINE_CHUNK piece; the delimiter after it still counts,
    # and a CR LF cut there stays one line end.
    filler = b"x" * (LINE_CHUNK - 1 + offset)
    bare = (
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n\r\n'
        + filler
        + b"\r--B\r\n\r\nMZ\r\n--B--\r\n"
    )
    assert record(bare).bodies == {"1": filler, "2": b"MZ"}
    crlf_cut = bare.replace(b"\r--B\r\n\r\nMZ", b"\r\n--B\r\n\r\nMZ")
    assert record(crlf_cut).bodies == {"1": filler, "2": b"MZ"}


def test_a_body_keeps_its_bare_crs() -> None:
    assert record(b"\r\na\rb\r\rc\r").one_leaf().body == b"a\rb\r\rc\r"


def test_a_run_of_bare_crs_is_read_in_linear_time() -> None:
    # Each bare CR is a line; the piece they came in is cut once, not copied again for every line.
    lines = mime._Lines(io.BytesIO(b"\r" * (3 * LINE_CHUNK) + b"--B\r\n"))
    pieces = []
    while (item := lines.next()) is not None:
        pieces.append(item)
    assert pieces[-1] == (b"--B\r\n", True)
    assert len(pieces) == 3 * LINE_CHUNK + 1 and all(piece == (b"\r", True) for piece in pieces[:-1])
