"""Run the SMTP client fuzz entry point under hypothesis: random bytes, random chunkings, random limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_smtp_client import TestOneInput

POSTFIX_EHLO = (
    b"250-mail.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x07\xff" + POSTFIX_EHLO,
        b"\x00\x40" + b"250-example.net\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        b"\x3f\x00" + b"250 ok\r\n" * 20,
        b"\x01\x3f" + b"250-a\n251 b\n",
        b"\x05\x07" + b"a@example.net BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x NOTIFY=NEVER ORCPT=rfc822;a",
        b"\x05\x07" + b"j\xc3\xb6rg@example.net SIZE=1\r\nRSET",
        b"\x05\x07" + b"a>b XFOO=<x>",
    ],
)
def test_hand_made_inputs(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


line_text = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def reply_bytes(draw: st.DrawFn) -> bytes:
    code = draw(st.integers(200, 599))
    texts = draw(st.lists(line_text, min_size=1, max_size=4))
    ending = draw(st.sampled_from([b"\r\n", b"\n"]))
    return b"".join(
        b"%d%s%s%s" % (code, b" " if i == len(texts) - 1 else b"-", text, ending)
        for i, text in enumerate(texts)
    )


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.lists(reply_bytes(), max_size=5))
def test_valid_replies_under_random_limits(knobs: bytes, replies: list[bytes]) -> None:
    TestOneInput(knobs + b"".join(replies))


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.lists(reply_bytes(), min_size=1, max_size=3), st.data())
def test_damaged_replies(knobs: bytes, replies: list[bytes], data: st.DataObject) -> None:
    wire = bytearray(b"".join(replies))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    TestOneInput(knobs + bytes(wire))
