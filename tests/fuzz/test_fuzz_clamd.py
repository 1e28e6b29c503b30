"""Run the clamd fuzz entry point under hypothesis: random bytes, random chunkings, random limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_clamd import TestOneInput

REPLIES = [
    b"stream: OK",
    b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND",
    b"INSTREAM size limit exceeded. ERROR",
    b"UNKNOWN COMMAND",
    b"PONG",
    b"ClamAV 1.4.3/27505/Mon Jan  6 09:30:00 2025",
    b"/var/tmp/x: y: Win.Test.EICAR_HDB-1 FOUND",
    b"stream: lstat() failed: No such file or directory. ERROR",
    b"HELLO",
]
reply = st.sampled_from(REPLIES)
numbered = st.tuples(st.integers(0, 99999), reply).map(lambda t: b"%d: %s" % t)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x07\xff" + b"\0".join(REPLIES) + b"\0",
        b"\x00\x01" + b"1: stream: OK\0",
        b"\x3f\x00" + b"x" * 300,
        b"\x01\x10" + b"stream: A FOUND\nstream: B FOUND\nstream: x ERROR\n",
        b"\x05\x07" + b"\xff\xfe: OK\0: OK\0 : OK\0",
    ],
)
def test_examples(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300)
@given(
    st.binary(min_size=2, max_size=2), st.lists(reply | numbered, max_size=8), st.sampled_from([b"\0", b"\n"])
)
def test_clamd_like_replies(knobs: bytes, replies: list[bytes], end: bytes) -> None:
    TestOneInput(knobs + b"".join(r + end for r in replies))


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.lists(reply, min_size=1, max_size=4), st.data())
def test_damaged_replies(knobs: bytes, replies: list[bytes], data: st.DataObject) -> None:
    stream = bytearray(b"\0".join(replies) + b"\0")
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    TestOneInput(knobs + bytes(stream))
