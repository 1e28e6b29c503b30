"""The X-Qsift-Scanned mark's body digest on edge cases (the integration test covers the round trip)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qsift.wire import mark


def digest_of(*pieces: bytes) -> str:
    body = mark.BodyDigest()
    for piece in pieces:
        body.update(piece)
    return body.hexdigest()


def test_a_body_ending_in_a_lone_cr_keeps_it() -> None:
    assert digest_of(b"H: x\n\nend\r") != digest_of(b"H: x\n\nend")
    assert digest_of(b"H: x\n\nend\r") == digest_of(b"H: x\n\n", b"end\r")


def test_no_blank_line_means_an_empty_body() -> None:
    assert digest_of(b"H: x\n", b"G: y\n") == digest_of(b"H: x\n\n")


@given(st.binary(max_size=300), st.integers(1, 20))
def test_any_chunking_gives_the_same_digest(body: bytes, step: int) -> None:
    message = b"Subject: s\r\n\r\n" + body
    pieces = [message[i : i + step] for i in range(0, len(message), step)]
    assert digest_of(*pieces) == digest_of(message)
