"""Run the fuzz entry point under hypothesis: random bytes, real fields in headers, damaged fields."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.wire import client_context
from qsift.wire.client_context import ClientContext
from tests.fuzz.fuzz_client_context import KEY, NOW, TestOneInput

contexts = st.builds(
    ClientContext,
    ip=st.text(max_size=80),
    host=st.text(max_size=300),
    relay_client=st.booleans(),
    auth_user=st.text(max_size=300),
)
header_lines = st.lists(
    st.sampled_from(
        [b"Subject: s", b" folded", b"\tfolded", b"x-qsift-client: v1", b"X-Qsift-Clientx: v1", b""]
    ),
    max_size=8,
)


def field(context: ClientContext) -> bytes:
    return client_context.make_field(KEY, context, b"s@example.org", [b"r@example.net"], NOW)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=300)
@given(contexts, header_lines, st.sampled_from([b"\n", b"\r\n"]))
def test_real_fields_in_headers(context: ClientContext, lines: list[bytes], line_end: bytes) -> None:
    TestOneInput(field(context).replace(b"\n", line_end) + line_end.join(lines))


@settings(max_examples=300)
@given(contexts, st.data())
def test_damaged_fields(context: ClientContext, data: st.DataObject) -> None:
    damaged = bytearray(field(context))
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    TestOneInput(bytes(damaged))


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=6))
def test_contexts_from_nul_separated_parts(parts: list[bytes]) -> None:
    TestOneInput(b"\0".join(parts))
