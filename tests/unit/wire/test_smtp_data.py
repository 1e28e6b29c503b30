from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.wire.smtp_data import DataEncoder, LfEncoder, encode_data, to_lf


def _decode_data(wire: bytes) -> bytes:
    """Reference decoder: what a receiving SMTP server stores (RFC 5321 §4.5.2)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\n", b"..\r\n.\r\n"),
        (b"a\n.b\n..c\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b"lone\rcr\n", b"lone\r\ncr\r\n.\r\n"),
        (b"ends in cr\r", b"ends in cr\r\n.\r\n"),
        (b"two\r\r\n", b"two\r\n\r\n.\r\n"),
        # A bare CR next to a dot: one line end for receivers that take a bare CR as one, so the dot is
        # stuffed and nothing after it reads as the next command.
        (
            b"first part\r.\r\nMAIL FROM:<evil@example>\r\n",
            b"first part\r\n..\r\nMAIL FROM:<evil@example>\r\n.\r\n",
        ),
        (b"a\r\n.\rb\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\r", b"a\r\n..\r\n.\r\n"),
        (b"a\r\n\n.\r\n", b"a\r\n\r\n..\r\n.\r\n"),
    ],
)
def test_encode_data_cases(message: bytes, wire: bytes) -> None:
    assert b"".join(encode_data([message])) == wire


def test_cr_and_lf_are_never_split_across_writes() -> None:
    chunks = list(encode_data([b"line one\r", b"\nline two\r", b"\n.dot\r", b"\n"]))
    assert all(not chunk.endswith(b"\r") for chunk in chunks)
    assert b"".join(chunks) == b"line one\r\nline two\r\n..dot\r\n.\r\n"


def test_encoder_refuses_use_after_finish() -> None:
    encoder = DataEncoder()
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(b"x")
    with pytest.raises(RuntimeError):
        encoder.finish()


lines = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20)


@given(lines=lines, ending=st.sampled_from([b"\n", b"\r\n"]), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_chunking_gives_crlf_lines_that_decode_to_the_message(
    lines: list[bytes], ending: bytes, cuts: list[int]
) -> None:
    message = b"".join(line + ending for line in lines)
    points = sorted({min(c, len(message)) for c in cuts})
    chunks = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    wire = b"".join(encode_data(chunks))
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert _decode_data(wire) == message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_lf_form_is_chunking_independent(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    # A bare CR is a line end too, as on the SMTP forward and for the decoder.
    assert b"".join(to_lf(chunks)) == re.sub(rb"\r\n|\r", b"\n", data)


def _lines_as_a_lenient_receiver_reads_them(wire: bytes) -> list[bytes]:
    """Lines as a receiver sees them that takes a bare CR or a bare LF for a line end, too."""
    return re.split(rb"\r\n|\r|\n", wire)


@given(
    data=st.binary(max_size=300).map(lambda b: b.translate(bytes.maketrans(b"xyz", b"\r\n."))),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_no_receiver_finds_the_end_of_data_early(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    wire = b"".join(encode_data(chunks))
    assert b"\r" not in wire.replace(b"\r\n", b""), "a bare CR went out"
    assert b"\n" not in wire.replace(b"\r\n", b""), "a bare LF went out"
    lines = _lines_as_a_lenient_receiver_reads_them(wire)
    assert lines[-2:] == [b".", b""]
    assert b"." not in lines[:-2]
    # What a receiver stores is the message with every line end (CRLF, LF, bare CR) made CRLF.
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    assert _decode_data(wire) == expected + (b"\r\n" if expected and not expected.endswith(b"\r\n") else b"")


def test_lf_encoder_makes_a_final_lone_cr_a_line_end() -> None:
    encoder = LfEncoder()
    assert encoder.encode(b"a\r") == b"a"
    assert encoder.finish() == b"\n"
    assert b"".join(to_lf([b"x\r", b"\ny"])) == b"x\ny"


def test_to_lf_makes_a_bare_cr_a_line_end() -> None:
    # qmail keeps a bare CR; a reader that does not take it for a line end would not see the part the
    # checks saw after it ("x<CR>--B"), and would see a part whose delimiter the checks read as "--B<CR>".
    assert b"".join(to_lf([b"a\r\n", b"x\r--B\r", b"\r\n", b"b\r"])) == b"a\nx\n--B\n\nb\n"
