"""The benchmarks' SMTP sink: every message counted exactly once, however the bytes arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from bench.sink import Counter, SinkSession, listen

from qsift.act.smtp_forward import SmtpTimeouts, forward_via_smtp, parse_forward_method
from qsift.model import Envelope, Recipient
from qsift.spool import MessageSpool

TRANSACTION = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
CONTENT = b"Subject: s\r\n\r\n..a line that began with a dot\r\n" + b"x" * 3000 + b"\r\n.\r\n"


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Counter, int]]:
    counter = Counter()
    server = await listen(counter)
    port = server.sockets[0].getsockname()[1]
    try:
        yield counter, port
    finally:
        server.close()


async def exchange(port: int, pieces: list[bytes]) -> bytes:
    """Send `pieces` one write each, then read every reply until the sink closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def replies(data: bytes) -> list[bytes]:
    """The reply codes, one per final reply line."""
    return [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]


async def test_a_pipelined_session_is_answered_in_order(sink: tuple[Counter, int]) -> None:
    counter, port = sink
    data = await exchange(port, [b"EHLO c\r\n" + TRANSACTION + CONTENT + b"QUIT\r\n"])
    assert replies(data) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert counter.messages == 1


class RecordingTransport(asyncio.Transport):
    """What the session wrote, for feeding it bytes without a socket (where the kernel may merge reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


def fed(pieces: list[bytes], *, ids: bool = False, tally: bool = False) -> tuple[Counter, RecordingTransport]:
    counter = Counter(ids=ids, tally=tally)
    session, transport = SinkSession(counter), RecordingTransport()
    session.connection_made(transport)
    for piece in pieces:
        session.data_received(piece)
    return counter, transport


@pytest.mark.parametrize("split", range(1, 8))
def test_the_end_of_data_split_across_reads_is_found(split: int) -> None:
    head, tail = CONTENT[:-split], CONTENT[-split:]
    counter, transport = fed([b"HELO c\r\n" + TRANSACTION, head, tail, b"QUIT\r\n"])
    assert replies(transport.written)[-2:] == [b"250", b"221"]
    assert (counter.messages, transport.closed) == (1, True)


def test_a_session_fed_byte_by_byte_counts_each_message_once() -> None:
    session = b"EHLO c\r\n" + TRANSACTION + CONTENT + TRANSACTION + b".\r\n" + b"QUIT\r\n"
    counter, transport = fed([session[i : i + 1] for i in range(len(session))])
    assert replies(transport.written).count(b"354") == 2
    assert counter.messages == 2


async def test_empty_content_ends_at_the_first_dot(sink: tuple[Counter, int]) -> None:
    counter, port = sink
    data = await exchange(
        port, [b"HELO c\r\n" + TRANSACTION + b".\r\n" + TRANSACTION + CONTENT + b"QUIT\r\n"]
    )
    assert replies(data).count(b"354") == 2
    assert counter.messages == 2


async def test_data_without_a_recipient_is_refused_and_not_counted(sink: tuple[Counter, int]) -> None:
    counter, port = sink
    data = await exchange(port, [b"HELO c\r\nMAIL FROM:<a@example.org>\r\nDATA\r\nQUIT\r\n"])
    assert replies(data) == [b"220", b"250", b"250", b"503", b"221"]
    assert counter.messages == 0


async def test_qsift_forward_is_counted_once(sink: tuple[Counter, int]) -> None:
    counter, port = sink
    envelope = Envelope("a@example.org", (Recipient("b@example.net"), Recipient("c@example.net")))
    with MessageSpool.from_bytes(b"Subject: s\n\n" + b"y" * 1500 + b"\n.\n") as spool:
        result = await forward_via_smtp(
            parse_forward_method(f"smtp:[127.0.0.1]:{port}"),
            envelope,
            spool,
            helo_name="bench.example.org",
            timeouts=SmtpTimeouts(),
        )
    assert result.all_accepted
    assert counter.messages == 1


def stamped_content(name: bytes) -> bytes:
    """A message as qsift forwards it: its own fields first, the bench's X-Bench-Id under them."""
    return b"X-Qsift-Scanned: yes\r\nX-Bench-Id: " + name + b" (corpus/a)\r\n" + CONTENT


@pytest.mark.parametrize("size", [1, 3, 5, 17, 4096])
def test_each_message_s_bench_id_is_noted_however_the_bytes_arrive(size: int) -> None:
    session = (
        b"EHLO c\r\n"
        + TRANSACTION
        + stamped_content(b"run-1")
        + TRANSACTION
        + stamped_content(b"run-22")
        + TRANSACTION
        + b".\r\n"
        + b"QUIT\r\n"
    )
    counter, _ = fed([session[i : i + size] for i in range(0, len(session), size)], ids=True)
    assert counter.messages == 3
    assert counter.ids == [b"run-1", b"run-22", b"?"]  # the empty message has none


def test_ids_are_not_kept_unless_asked_for() -> None:
    counter, _ = fed([b"HELO c\r\n" + TRANSACTION + stamped_content(b"run-1") + b"QUIT\r\n"])
    assert (counter.messages, counter.ids) == (1, None)


@pytest.mark.parametrize("size", [1, 3, 17, 4096])
def test_a_tallying_sink_counts_each_mark_once_per_header_however_the_bytes_arrive(size: int) -> None:
    alerts = b"X-Qsift-Alert: INFECTED, message contains virus: Eicar\r\nX-Spam-Flag: YES\r\n"
    body_mark = b"\r\n\r\nX-Spam-Flag: YES in the body is not counted\r\n.\r\n"
    session = (
        b"EHLO c\r\n"
        + TRANSACTION
        + alerts
        + b"X-Bench-Id: run-1 (corpus/a)\r\nSubject: s"
        + body_mark
        + TRANSACTION
        + b"Subject: clean"
        + body_mark
        + TRANSACTION
        + b".\r\n"
        + b"QUIT\r\n"
    )
    counter, transport = fed(
        [session[i : i + size] for i in range(0, len(session), size)], ids=True, tally=True
    )
    assert replies(transport.written)[-1] == b"221"
    assert counter.messages == 3
    assert counter.marks == {"virus": 1, "banned": 0, "spam": 1}
    assert counter.ids == [b"run-1", b"?", b"?"]
