from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import (
    BadAddress,
    ClientError,
    MessageTooBig,
    NetstringError,
    NoRecipients,
    ProtocolError,
    QsiftError,
    TooManyRecipients,
)
from qsift.wire import qmqp
from qsift.wire.qmqp import (
    NEED_DATA,
    Event,
    MessageChunk,
    MessageEnd,
    NeedData,
    Recipient,
    RequestEnd,
    RequestParser,
    RequestRejected,
    ResponseParser,
    Sender,
)

# The worked example of qmail-protocols.md §2.2.
EXAMPLE = b"62:16:A simple message,18:sender@example.com,16:rcpt@example.net,,"

MAX_MESSAGE = 100
MAX_RECIPIENTS = 3
MAX_ADDRESS = 20


def ns(data: bytes) -> bytes:
    """A netstring, written independently of the codec under test."""
    return b"%d:%s," % (len(data), data)


def outer(*parts: bytes) -> bytes:
    return ns(b"".join(parts))


def parser() -> RequestParser:
    return RequestParser(
        max_message_size=MAX_MESSAGE, max_recipients=MAX_RECIPIENTS, max_address_length=MAX_ADDRESS
    )


def drain(p: RequestParser) -> list[Event]:
    events: list[Event] = []
    for _ in range(100_000):
        event = p.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
    raise AssertionError("parser did not ask for data within 100000 events")


def feed(chunks: Iterable[bytes], p: RequestParser | None = None) -> list[Event]:
    p = p or parser()
    events: list[Event] = []
    for chunk in chunks:
        p.receive_data(chunk)
        events += drain(p)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def summary(events: list[Event]) -> tuple[bytes, bytes | None, list[bytes], Event | None]:
    """(message, sender, recipients, final event) from a list of events."""
    message = b"".join(e.data for e in events if isinstance(e, MessageChunk))
    senders = [e.address for e in events if isinstance(e, Sender)]
    recipients = [e.address for e in events if isinstance(e, Recipient)]
    final = events[-1] if events and isinstance(events[-1], RequestEnd | RequestRejected) else None
    return message, (senders[0] if senders else None), recipients, final


# --- the client side ---------------------------------------------------------------------------------


def test_encode_request_matches_the_worked_example() -> None:
    assert qmqp.encode_request(b"A simple message", b"sender@example.com", [b"rcpt@example.net"]) == EXAMPLE


def test_request_frame_surrounds_the_message() -> None:
    head, tail = qmqp.request_frame(16, b"sender@example.com", [b"rcpt@example.net"])
    assert head == b"62:16:"
    assert tail == b",18:sender@example.com,16:rcpt@example.net,,"


@pytest.mark.parametrize(
    ("message", "sender", "recipients"),
    [
        (b"", b"", [b"a@b"]),
        (b"x" * 1000, b"#@[]", [b"a@b", b"c@d"]),
        (b"no final newline", b"prefix@host-@[]", [b"r@x"] * 3),
    ],
)
def test_request_frame_length_is_exact(message: bytes, sender: bytes, recipients: list[bytes]) -> None:
    head, tail = qmqp.request_frame(len(message), sender, recipients)
    assert head + message + tail == outer(ns(message), ns(sender), *(ns(r) for r in recipients))


def test_request_frame_refuses_a_negative_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        qmqp.request_frame(-1, b"", [b"a"])


# --- the server side: valid requests ------------------------------------------------------------------


def test_worked_example_in_one_chunk() -> None:
    assert feed([EXAMPLE]) == [
        MessageChunk(b"A simple message"),
        MessageEnd(16),
        Sender(b"sender@example.com"),
        Recipient(b"rcpt@example.net"),
        RequestEnd(),
    ]


def test_worked_example_byte_by_byte_streams_the_body() -> None:
    events = feed(bytewise(EXAMPLE))
    chunks = [e for e in events if isinstance(e, MessageChunk)]
    assert len(chunks) == 16
    assert all(len(c.data) == 1 for c in chunks)
    assert summary(events) == (
        b"A simple message",
        b"sender@example.com",
        [b"rcpt@example.net"],
        RequestEnd(),
    )


def test_body_comes_in_the_slices_it_arrived_in() -> None:
    request = outer(ns(b"abcdefgh"), ns(b"s"), ns(b"r"))
    events = feed([request[:7], request[7:10], request[10:]])
    assert request[:5] == b"19:8:"
    assert [e.data for e in events if isinstance(e, MessageChunk)] == [b"ab", b"cde", b"fgh"]


def test_empty_message_and_null_sender() -> None:
    assert feed([outer(ns(b""), ns(b""), ns(b"a@b"))]) == [
        MessageEnd(0),
        Sender(b""),
        Recipient(b"a@b"),
        RequestEnd(),
    ]


def test_limits_are_inclusive() -> None:
    request = outer(
        ns(b"m" * MAX_MESSAGE), ns(b"s" * MAX_ADDRESS), *[ns(b"r" * MAX_ADDRESS)] * MAX_RECIPIENTS
    )
    assert summary(feed([request]))[3] == RequestEnd()


def test_data_received_twice_before_parsing_is_joined() -> None:
    p = parser()
    p.receive_data(EXAMPLE[:30])
    p.receive_data(EXAMPLE[30:])
    assert summary(drain(p))[3] == RequestEnd()


def test_need_data_after_the_end_until_more_bytes_come() -> None:
    p = parser()
    p.receive_data(EXAMPLE)
    drain(p)
    assert p.next_event() is NEED_DATA


def test_event_values_compare_and_print_like_dataclasses() -> None:
    assert MessageChunk(b"x") == MessageChunk(b"x")
    assert MessageChunk(b"x") != Sender(b"x")
    assert hash(Recipient(b"a")) == hash(Recipient(b"a"))
    assert repr(MessageEnd(3)) == "MessageEnd(size=3)"
    assert repr(RequestEnd()) == "RequestEnd()"
    with pytest.raises(AttributeError, match="immutable"):
        Sender(b"a").address = b"b"


# --- the server side: refusals after the final byte ----------------------------------------------------

REJECTIONS: list[tuple[str, bytes, type[ClientError], str]] = [
    (
        "missing comma after the message",
        outer(b"5:hello", b"1:a,", b"1:b,"),
        NetstringError,
        "protocol error: missing comma after message",
    ),
    ("missing comma after the sender", outer(ns(b"m"), b"1:ab", ns(b"r")), NetstringError, "after sender"),
    (
        "missing comma after a recipient",
        outer(ns(b"m"), ns(b"s"), b"1:rx"),
        NetstringError,
        "after recipient",
    ),
    ("recipient crosses the end", outer(ns(b"m"), b"1:a,", b"3:b,"), NetstringError, "recipient crosses"),
    ("message crosses the end", outer(b"50:abc,"), NetstringError, "message crosses"),
    ("length digits cross the end", outer(ns(b"m"), ns(b"s"), b"12"), NetstringError, "recipient crosses"),
    ("inner leading zero", outer(b"01:m,", ns(b"s"), ns(b"r")), NetstringError, "message netstring length"),
    ("inner non-digit", outer(ns(b"m"), b"x:s,", ns(b"r")), NetstringError, "sender netstring length"),
    ("inner empty length", outer(ns(b"m"), ns(b"s"), b":r,"), NetstringError, "recipient netstring length"),
    (
        "message too big",
        outer(ns(b"m" * (MAX_MESSAGE + 1)), ns(b"s"), ns(b"r")),
        MessageTooBig,
        "message too big",
    ),
    (
        "too many recipients",
        outer(ns(b"m"), ns(b"s"), *[ns(b"r")] * 4),
        TooManyRecipients,
        "too many recipients",
    ),
    ("sender too long", outer(ns(b"m"), ns(b"s" * 21), ns(b"r")), BadAddress, "sender address too long"),
    (
        "recipient too long",
        outer(ns(b"m"), ns(b"s"), ns(b"r" * 21)),
        BadAddress,
        "recipient address too long",
    ),
    ("NUL in the sender", outer(ns(b"m"), ns(b"a\0b"), ns(b"r")), BadAddress, "NUL, CR or LF"),
    ("CR in a recipient", outer(ns(b"m"), ns(b"s"), ns(b"a\rb")), BadAddress, "NUL, CR or LF"),
    ("LF in a recipient", outer(ns(b"m"), ns(b"s"), ns(b"r"), ns(b"a\n")), BadAddress, "NUL, CR or LF"),
    ("empty recipient", outer(ns(b"m"), ns(b"s"), ns(b"")), BadAddress, "empty recipient"),
    ("no recipients", outer(ns(b"m"), ns(b"s")), NoRecipients, "no recipients"),
    ("no sender", outer(ns(b"m")), ProtocolError, "ends before the sender"),
    ("empty request", b"0:,", ProtocolError, "ends before the message"),
]


@pytest.mark.parametrize(
    ("request_bytes", "error", "text"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_refusal_comes_only_after_the_final_byte(
    request_bytes: bytes, error: type[ClientError], text: str, chunking: str
) -> None:
    p = parser()
    body = request_bytes[:-1]
    before = feed([body] if chunking == "whole" else bytewise(body), p)
    assert not any(isinstance(e, RequestEnd | RequestRejected) for e in before)
    p.receive_data(request_bytes[-1:])
    (final,) = drain(p)
    assert isinstance(final, RequestRejected)
    assert type(final.error) is error
    assert text in str(final.error)


def test_outer_length_past_every_limit_is_discarded_then_refused() -> None:
    allowance = (3 + 2 + MAX_MESSAGE) + (MAX_RECIPIENTS + 1) * (2 + 2 + MAX_ADDRESS)
    p = parser()
    length = allowance + 1_000_000
    p.receive_data(b"%d:" % length)
    assert drain(p) == []
    junk = b"\0" * 4096
    sent = 0
    while sent < length:
        piece = junk[: length - sent]
        p.receive_data(piece)
        assert drain(p) == []
        sent += len(piece)
    p.receive_data(b",")
    (final,) = drain(p)
    assert isinstance(final, RequestRejected)
    assert isinstance(final.error, MessageTooBig)


def test_outer_length_at_the_allowance_is_read() -> None:
    allowance = (3 + 2 + MAX_MESSAGE) + (MAX_RECIPIENTS + 1) * (2 + 2 + MAX_ADDRESS)
    p = parser()
    p.receive_data(b"%d:3:" % allowance)
    assert drain(p) == []
    p.receive_data(b"abc,")
    assert drain(p) == [MessageChunk(b"abc"), MessageEnd(3)]


# --- the server side: errors raised at once --------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [b"abc", b"05:hello,", b":,", b"-1:", b"12345678901:", b"99999999999999999999:"],
)
def test_malformed_outer_length_raises_at_once(request_bytes: bytes) -> None:
    p = parser()
    p.receive_data(request_bytes)
    with pytest.raises(NetstringError, match=r"^protocol error: request netstring length"):
        p.next_event()


@pytest.mark.parametrize(
    "request_bytes",
    [
        EXAMPLE[:-1] + b";",
        outer(ns(b"m"), ns(b"s"), ns(b""))[:-1] + b";",  # refused inside, then a bad final comma
    ],
)
def test_wrong_final_comma_raises(request_bytes: bytes) -> None:
    with pytest.raises(NetstringError, match="missing comma at the end of the request"):
        feed([request_bytes])


def test_bytes_after_the_final_comma_in_the_same_chunk() -> None:
    with pytest.raises(ProtocolError, match="bytes after the end"):
        feed([EXAMPLE + b"x"])


def test_bytes_after_the_final_comma_in_a_later_chunk() -> None:
    p = parser()
    assert summary(feed([EXAMPLE], p))[3] == RequestEnd()
    with pytest.raises(ProtocolError, match="bytes after the end"):
        feed([b"\n"], p)


def test_a_failed_parser_keeps_raising() -> None:
    p = parser()
    p.receive_data(b"x")
    with pytest.raises(NetstringError) as first:
        p.next_event()
    p.receive_data(EXAMPLE)
    with pytest.raises(NetstringError) as second:
        p.next_event()
    assert second.value is first.value


# --- property tests ---------------------------------------------------------------------------------------

addresses = st.binary(max_size=MAX_ADDRESS).filter(lambda a: not any(c in a for c in b"\0\r\n"))
recipients = st.lists(addresses.filter(bool), min_size=1, max_size=MAX_RECIPIENTS)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.binary(max_size=MAX_MESSAGE), addresses, recipients, st.data())
def test_round_trip_in_random_chunks(
    message: bytes, sender: bytes, rcpts: list[bytes], data: st.DataObject
) -> None:
    request = qmqp.encode_request(message, sender, rcpts)
    events = feed(data.draw(chunked(request)))
    assert summary(events) == (message, sender, rcpts, RequestEnd())
    assert MessageEnd(len(message)) in events
    assert all(len(e.data) > 0 for e in events if isinstance(e, MessageChunk))


@given(st.binary(max_size=MAX_MESSAGE), addresses, recipients, st.data())
def test_frame_round_trip(message: bytes, sender: bytes, rcpts: list[bytes], data: st.DataObject) -> None:
    head, tail = qmqp.request_frame(len(message), sender, rcpts)
    events = feed(data.draw(chunked(head + message + tail)))
    assert summary(events) == (message, sender, rcpts, RequestEnd())


def check_events(events: list[Event]) -> None:
    finals = [i for i, e in enumerate(events) if isinstance(e, RequestEnd | RequestRejected)]
    assert finals in ([], [len(events) - 1])
    if finals and isinstance(events[-1], RequestRejected):
        assert isinstance(events[-1].error, ClientError)


@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_raise_only_protocol_errors(blob: bytes, data: st.DataObject) -> None:
    try:
        events = feed(data.draw(chunked(blob)))
    except ProtocolError:
        return
    check_events(events)


@given(st.binary(max_size=60), addresses, recipients, st.data())
def test_damaged_requests_raise_only_protocol_errors(
    message: bytes, sender: bytes, rcpts: list[bytes], data: st.DataObject
) -> None:
    request = bytearray(qmqp.encode_request(message, sender, rcpts))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(request) - 1))
        request[index] = data.draw(st.integers(0, 255))
    try:
        events = feed(data.draw(chunked(bytes(request))))
    except ProtocolError:
        return
    check_events(events)


# --- the response -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("letter", "text", "wire"),
    [("K", b"ok 1 qp 2", b"10:Kok 1 qp 2,"), ("Z", b"", b"1:Z,"), ("D", b"5.7.0 no", b"9:D5.7.0 no,")],
)
def test_encode_response(letter: str, text: bytes, wire: bytes) -> None:
    assert qmqp.encode_response(letter, text) == wire


def test_encode_response_refuses_other_letters() -> None:
    with pytest.raises(ValueError, match="K, Z or D"):
        qmqp.encode_response("X", b"")


def test_response_byte_by_byte() -> None:
    p = ResponseParser()
    wire = b"10:Dno thanks,"
    results = [p.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == ("D", b"no thanks")


def test_response_bytes_after_the_comma_are_ignored() -> None:
    p = ResponseParser()
    assert p.feed(b"3:Kok,junk") == ("K", b"ok")
    assert p.feed(b"more") == ("K", b"ok")


def test_response_letter_is_checked_as_soon_as_it_arrives() -> None:
    p = ResponseParser()
    assert p.feed(b"100:") is None
    with pytest.raises(ProtocolError, match="K, Z or D"):
        p.feed(b"X")


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b"0:,", "empty response"),
        (b"3:Xok,", "K, Z or D"),
        (b"3:kok,", "K, Z or D"),
        (b"3:Kok;", "missing comma"),
        (b"abc", "not a number"),
        (b"03:Kok,", "leading zero"),
        (b"65537:", "exceeds the limit"),
        (b"HTTP/1.0 400", "not a number"),
    ],
)
def test_malformed_responses(wire: bytes, text: str) -> None:
    with pytest.raises(ProtocolError, match=text):
        ResponseParser().feed(wire)


def test_response_limit_is_configurable() -> None:
    with pytest.raises(NetstringError, match="exceeds"):
        ResponseParser(max_length=10).feed(b"11:")


@given(st.sampled_from("KZD"), st.binary(max_size=300), st.data())
def test_response_round_trip_in_random_chunks(letter: str, text: bytes, data: st.DataObject) -> None:
    p = ResponseParser()
    results = [p.feed(chunk) for chunk in data.draw(chunked(qmqp.encode_response(letter, text)))]
    assert results[-1] == (letter, text)
    assert all(r is None for r in results[:-1] if r != (letter, text))


@given(st.binary(max_size=100), st.data())
def test_arbitrary_response_bytes_raise_only_protocol_errors(blob: bytes, data: st.DataObject) -> None:
    p = ResponseParser()
    try:
        for chunk in data.draw(chunked(blob)):
            result = p.feed(chunk)
            if result is not None:
                assert result[0] in "KZD"
    except ProtocolError:
        pass
    except QsiftError as exc:  # pragma: no cover - the assertion below explains the failure
        raise AssertionError(f"not a ProtocolError: {exc!r}") from exc
