"""Run the fuzz entry point under hypothesis: random bytes, valid replies, damaged replies."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_spamd import TestOneInput

rules = st.lists(st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True), max_size=8)


def reply(is_spam: bool, score: float, threshold: float, names: list[str]) -> bytes:
    body = ",".join(names).encode()
    return b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %.1f / %.1f\r\n\r\n%s" % (
        len(body),
        b"True" if is_spam else b"False",
        score,
        threshold,
        body,
    )


scores = st.floats(-1000, 10000, allow_nan=False)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.booleans(), scores, scores, rules)
def test_valid_replies_under_random_limits(
    knobs: bytes, is_spam: bool, score: float, threshold: float, names: list[str]
) -> None:
    TestOneInput(knobs + reply(is_spam, score, threshold, names))


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.booleans(), scores, rules, st.data())
def test_damaged_replies(
    knobs: bytes, is_spam: bool, score: float, names: list[str], data: st.DataObject
) -> None:
    damaged = bytearray(reply(is_spam, score, 5.0, names))
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    TestOneInput(knobs + bytes(damaged[:cut]))
