"""Run the decoder's fuzz entry under hypothesis, on random bytes and on mutated real messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_decode import TestOneInput
from tests.fuzz.seeds import zip_message

SEED = zip_message()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.binary(max_size=8)), max_size=6))
def test_mutated_real_message(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(SEED)
    for position, replacement in edits:
        data[position : position + len(replacement)] = replacement
    TestOneInput(bytes(data))
