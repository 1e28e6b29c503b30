"""Bad QMQP input gets the answer table's answer (DESIGN.md §3) and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import RunningDaemon, netstring, qmqp_exchange, qmqp_request, qmqp_send, running_daemon

GOOD = b"Subject: ok\n\nbody\n"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[RunningDaemon]:
    async with running_daemon(
        tmp_path,
        f"maildir:{tmp_path / 'Maildir'}",
        protocols=("qmqp",),
        limits={"message_size": 2_000_000, "client_timeout": 1, "recipients": 10_000},
    ) as running:
        yield running


def delivered(tmp_path: Path) -> list[Path]:
    new = tmp_path / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


async def assert_still_serving(daemon: RunningDaemon) -> None:
    assert (await qmqp_send(daemon.qmqp, GOOD, b"a@example.org", [b"b@example.net"])).startswith("K")


def inner(*parts: bytes) -> bytes:
    return netstring(b"".join(parts))


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"abc", "D5"),
        (b"05:hello,", "D5"),
        (b":,", "D5"),
        (b"99999999999999999999:", "D5"),
        (inner(b"5:hello", b"1:a,", b"1:b,"), "D5.5.2"),  # missing comma after the message
        (inner(netstring(GOOD), b"1:a,", b"3:b,"), "D5.5.2"),  # inner length crosses the outer end
        (inner(netstring(GOOD), b"1:a,"), "D5.5.1"),  # no recipients
        (inner(netstring(GOOD), netstring(b"a@x"), netstring(b"b\0@y")), "D5.1.3"),
        (inner(netstring(GOOD), netstring(b"a@x"), netstring(b"b\r\n@y")), "D5.1.3"),
        (inner(netstring(GOOD), netstring(b"a@x"), netstring(b"b" * 1200 + b"@y")), "D5.1.3"),
        (inner(netstring(GOOD), netstring(b"a@x"), netstring(b""))[:-1] + b";", "D5"),  # bad final comma
    ],
)
async def test_malformed_requests_are_refused_permanently(
    daemon: RunningDaemon, tmp_path: Path, request_bytes: bytes, expected: str
) -> None:
    answer = await qmqp_exchange(daemon.qmqp, request_bytes)
    # "D554 5.5.2 text": the letter, an SMTP code, the enhanced status (as amavisd-new's QMQPqq answers).
    assert answer[:2] == "D5" and answer[4] == " " and ("D" + answer[5:]).startswith(expected), answer
    assert delivered(tmp_path) == []
    await assert_still_serving(daemon)


async def test_message_over_the_size_limit_is_refused_after_the_whole_request(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    answer = await qmqp_send(daemon.qmqp, b"x" * 3_000_000, b"a@x", [b"b@y"])
    assert answer.startswith("D552 5.3.4"), answer
    assert delivered(tmp_path) == []
    await assert_still_serving(daemon)


async def test_truncated_request_gets_no_answer_and_nothing_is_delivered(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    request = qmqp_request(GOOD, b"a@x", [b"b@y"])
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.qmqp)
    writer.write(request[:-3])
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    await assert_still_serving(daemon)
    assert len(delivered(tmp_path)) == 1


async def test_silent_client_is_dropped_after_the_client_timeout(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.qmqp)
    writer.write(qmqp_request(GOOD, b"a@x", [b"b@y"])[:20])
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert loop.time() - started < 5
    writer.close()
    assert delivered(tmp_path) == []


async def test_ten_thousand_recipients_and_a_one_megabyte_header_line(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    recipients = [b"user%d@example.net" % i for i in range(10_000)]
    message = b"X-Long: " + b"a" * 1_000_000 + b"\nSubject: wide\n\nbody\n"
    answer = await qmqp_send(daemon.qmqp, message, b"a@example.org", recipients)
    assert answer.startswith("K250 2.0.0"), answer[:200]
    (stored,) = delivered(tmp_path)
    content = stored.read_bytes()
    assert content.count(b"\nDelivered-To: ") == 10_000
    # The long line arrives folded (no white space in it: cut every 998 octets with a space, as Postfix
    # cuts it), the rest as it came.
    assert max(len(line) for line in content.split(b"\n")) <= 998
    folded = content[content.index(b"\nX-Long:") + 1 :]
    field, _, rest = folded.partition(b"\nSubject: ")
    assert field.replace(b"\n ", b"").replace(b" ", b"") == b"X-Long:" + b"a" * 1_000_000
    assert rest == b"wide\n\nbody\n"
    too_many = await qmqp_send(daemon.qmqp, GOOD, b"a@x", [*recipients, b"one-more@example.net"])
    assert too_many.startswith("D552 5.5.3"), too_many
