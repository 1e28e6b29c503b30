from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import NetstringError, QsiftError
from qsift.wire import netstring
from qsift.wire.netstring import Incomplete, LengthReader


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b"0:,"),
        (b"hello world!", b"12:hello world!,"),  # the example in netstrings.txt
        (b"a,b:c", b"5:a,b:c,"),
        (b"\0\r\n", b"3:\0\r\n,"),
    ],
)
def test_encode(data: bytes, wire: bytes) -> None:
    assert netstring.encode(data) == wire


@pytest.mark.parametrize(
    ("buf", "payload", "rest"),
    [
        (b"0:,", b"", b""),
        (b"12:hello world!,", b"hello world!", b""),
        (b"3:abc,3:def,", b"abc", b"3:def,"),
        (b"1:,,", b",", b""),
        (b"10:0123456789,", b"0123456789", b""),
    ],
)
def test_decode_valid(buf: bytes, payload: bytes, rest: bytes) -> None:
    assert netstring.decode(buf, max_length=100) == (payload, rest)


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b":,", "empty"),
        (b"05:hello,", "leading zero"),
        (b"00:,", "leading zero"),
        (b"-1:,", "not a number"),
        (b" 1:a,", "not a number"),
        (b"1 :a,", "not a number"),
        (b"+1:a,", "not a number"),
        (b"0x1:a,", "not a number"),
        (b"\xd9\xa1:a,", "not a number"),  # a non-ASCII digit
        (b"12345678901:", "more than 10 digits"),
        (b"99999999999999999999:", "more than 10 digits"),
        (b"3:abc;", "missing comma"),
        (b"3:abcd,", "missing comma"),
        (b"101:", "exceeds the limit"),
        (b"9999999999:", "exceeds the limit"),
    ],
)
def test_decode_malformed(buf: bytes, message: str) -> None:
    with pytest.raises(NetstringError, match=message) as caught:
        netstring.decode(buf, max_length=100)
    assert not isinstance(caught.value, Incomplete)


@pytest.mark.parametrize("buf", [b"", b"1", b"12", b"0", b"3:", b"3:ab", b"3:abc", b"0:"])
def test_decode_incomplete(buf: bytes) -> None:
    with pytest.raises(Incomplete):
        netstring.decode(buf, max_length=100)


def test_incomplete_is_a_netstring_error_for_callers_holding_the_whole_buffer() -> None:
    with pytest.raises(NetstringError):
        netstring.decode(b"5:abc", max_length=100)


def test_length_over_the_limit_is_refused_before_the_payload_arrives() -> None:
    with pytest.raises(NetstringError, match="exceeds") as caught:
        netstring.decode(b"1000000:", max_length=999_999)
    assert not isinstance(caught.value, Incomplete)


def test_ten_digits_are_allowed() -> None:
    assert LengthReader().feed(b"9999999999:") == (9_999_999_999, 11)


def test_length_reader_across_chunks() -> None:
    reader = LengthReader()
    assert not reader.started
    assert reader.feed(b"1") == (None, 1)
    assert reader.started
    assert reader.feed(b"23") == (None, 2)
    assert reader.feed(b"xx4:rest", start=2) == (1234, 4)


def test_length_reader_stops_at_the_window_end() -> None:
    assert LengthReader().feed(b"12:", 0, 2) == (None, 2)


def test_length_reader_sees_a_leading_zero_across_chunks() -> None:
    reader = LengthReader()
    assert reader.feed(b"0") == (None, 1)
    with pytest.raises(NetstringError, match="leading zero"):
        reader.feed(b"5")


@given(st.binary(max_size=300), st.binary(max_size=50))
def test_round_trip(payload: bytes, rest: bytes) -> None:
    assert netstring.decode(netstring.encode(payload) + rest, max_length=300) == (payload, rest)


@given(st.binary(max_size=300))
def test_every_proper_prefix_is_incomplete(payload: bytes) -> None:
    wire = netstring.encode(payload)
    for end in range(len(wire)):
        with pytest.raises(Incomplete):
            netstring.decode(wire[:end], max_length=300)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_raise_only_netstring_errors(buf: bytes) -> None:
    try:
        payload, rest = netstring.decode(buf, max_length=20)
    except NetstringError:
        return
    assert netstring.encode(payload) + rest == buf


@given(st.binary(max_size=40), st.integers(min_value=1, max_value=5))
def test_length_reader_in_chunks_agrees_with_one_piece(buf: bytes, step: int) -> None:
    def whole() -> tuple[int | None, int] | str:
        try:
            return LengthReader().feed(buf)
        except QsiftError as exc:
            return str(exc)

    reader = LengthReader()
    result: tuple[int | None, int] | str = (None, len(buf))
    try:
        for start in range(0, len(buf), step):
            length, end = reader.feed(buf, start, min(start + step, len(buf)))
            if length is not None:
                result = (length, end)
                break
    except QsiftError as exc:
        result = str(exc)
    assert result == whole()
