"""Run the fuzz entry point under hypothesis: random bytes, random chunkings, random limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.wire import qmqp
from tests.fuzz.fuzz_qmqp import TestOneInput

address = st.binary(max_size=40)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=2), st.binary(max_size=300), address, st.lists(address, max_size=10))
def test_valid_requests_under_random_limits(
    knobs: bytes, message: bytes, sender: bytes, recipients: list[bytes]
) -> None:
    TestOneInput(knobs + qmqp.encode_request(message, sender, recipients))


@settings(max_examples=300)
@given(
    st.binary(min_size=2, max_size=2),
    st.binary(max_size=100),
    address,
    st.lists(address, max_size=5),
    st.data(),
)
def test_damaged_requests(
    knobs: bytes, message: bytes, sender: bytes, recipients: list[bytes], data: st.DataObject
) -> None:
    request = bytearray(qmqp.encode_request(message, sender, recipients))
    for _ in range(data.draw(st.integers(1, 4))):
        request[data.draw(st.integers(0, len(request) - 1))] = data.draw(st.integers(0, 255))
    TestOneInput(knobs + bytes(request))
