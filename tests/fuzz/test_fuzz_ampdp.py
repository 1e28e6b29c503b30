"""Run the fuzz entry point under hypothesis: random bytes, valid requests, damaged requests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_ampdp import TestOneInput
from tests.fuzz.seeds import AMAVISD_RELEASE_REQUEST


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.data())
def test_damaged_requests(knobs: bytes, data: st.DataObject) -> None:
    damaged = bytearray(AMAVISD_RELEASE_REQUEST * 2)
    for _ in range(data.draw(st.integers(0, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    TestOneInput(knobs + bytes(damaged[:cut]))
