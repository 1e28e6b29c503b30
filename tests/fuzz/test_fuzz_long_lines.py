"""Run the line fitter's fuzz entry point under hypothesis: random bytes, and messages built from the
pieces that steer it (fields, folds, boundaries, encodings, long lines, bare CRs)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_long_lines import TestOneInput

PIECES = [
    b"Subject: s",
    b"From alice@example.org Wed Nov 25 12:00:00 2026",
    b' folded: "x"',
    b'Content-Type: multipart/mixed; boundary="b"',
    b"Content-Type: multipart/digest; boundary=d",
    b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: 8bit",
    b"MIME-Version: 1.0",
    b"",
    b"--b",
    b"--b--",
    b"--d",
    b"-- ",
    b"=41=\r",
    b"X-Long: " + b"w " * 600,
    b"L" * 1200,
    b"=" * 1100,
    b"-" + b"Q" * 1100,
]
messages = st.lists(
    st.tuples(st.sampled_from(PIECES), st.sampled_from([b"\n", b"\r\n", b"\r", b""])), max_size=30
).map(lambda lines: b"".join(piece + end for piece, end in lines))


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=400)
@given(st.integers(0, 255), messages)
def test_messages_from_pieces(step: int, message: bytes) -> None:
    TestOneInput(bytes([step]) + message)
