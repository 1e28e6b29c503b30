"""Lines over 998 octets reach an RFC 5321-strict downstream (aiosmtpd as it comes: it refuses a longer
line with 500) folded and re-encoded, with the content intact and the mark valid on what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from qsift.wire import mark
from tests.harness import free_port, qmqp_send, running_daemon, smtp_send
from tests.integration.test_destinies import banned_message
from tests.integration.test_quarantine import qsift
from tests.unit.wire.test_long_lines import parts_of, unfold

LONG_HEADER = b"References: " + b" ".join(b"<%04d.part@example.org>" % i for i in range(87))
LONG_BODY_LINE = b"".join(b"%05d%s" % (i, b"=x\xc3\xa9 \t"[i % 6 : i % 6 + 1]) for i in range(3334))[:20_000]
MESSAGE = (
    b"From: alice@example.org\nTo: bob@example.net\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n"
    b"Subject: long lines\n" + LONG_HEADER + b"\n\nfirst line\n" + LONG_BODY_LINE + b"\n-- \nlast line\n"
)


class _Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        return "250 2.0.0 Ok: queued"


@contextlib.asynccontextmanager
async def strict_downstream() -> AsyncIterator[tuple[int, _Sink]]:
    """aiosmtpd with its defaults (lines of at most 1,000 octets with CRLF), on a free loopback port."""
    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    try:
        yield port, sink
    finally:
        await asyncio.to_thread(controller.stop)


@pytest.mark.parametrize("listener", ["qmqp", "smtp"])
async def test_long_lines_are_delivered_intact_to_a_strict_downstream(tmp_path: Path, listener: str) -> None:
    async with (
        strict_downstream() as (port, sink),
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{port}", protocols=(listener,)) as daemon,
    ):
        if listener == "qmqp":
            answer = await qmqp_send(daemon.qmqp, MESSAGE, b"alice@example.org", [b"bob@example.net"])
            assert answer.startswith("K"), answer
        else:
            sent = await smtp_send(daemon.smtp, MESSAGE, b"alice@example.org", [b"bob@example.net"])
            assert sent.final[0][0] == 250, sent.final
        key = (daemon.state_dir / "mark.key").read_bytes()
    [delivered] = sink.messages
    assert max(len(line) for line in delivered.split(b"\r\n")) <= 998
    head, _, _ = delivered.partition(b"\r\n\r\n")
    assert LONG_HEADER in unfold(head).split(b"\r\n")
    parsed = email.message_from_bytes(delivered, policy=email.policy.compat32)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed["MIME-Version"] == "1.0"
    original_body = MESSAGE.partition(b"\n\n")[2]
    assert parsed.get_payload(decode=True) == original_body.replace(b"\n", b"\r\n")  # as SMTP carries it
    # The mark is over the message as it was sent: valid on qmail's LF copy.
    value = mark.find_value(head)
    assert value is not None
    digest = mark.BodyDigest()
    digest.update(delivered.replace(b"\r\n", b"\n"))
    reading = mark.reading_digest(head)  # of the re-encoded message: Content-Transfer-Encoding changed
    assert mark.verify(key, value, digest.hexdigest(), reading, int(time.time()))


MULTIPART = (
    b"From: alice@example.org\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + LONG_BODY_LINE
    + b"\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b"QUJD" * 500
    + b"\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>short</p>\r\n--b1--\r\n"
)


async def test_each_part_is_fitted_its_own_way(tmp_path: Path) -> None:
    async with (
        strict_downstream() as (port, sink),
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{port}", protocols=("qmqp",)) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, MULTIPART, b"alice@example.org", [b"bob@example.net"])
        assert answer.startswith("K"), answer
    [delivered] = sink.messages
    assert max(len(line) for line in delivered.split(b"\r\n")) <= 998
    text, binary, html = parts_of(email.message_from_bytes(delivered, policy=email.policy.compat32))
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_payload(decode=True) == LONG_BODY_LINE
    assert binary.get_payload(decode=True) == b"ABC" * 500
    assert html["Content-Transfer-Encoding"] is None
    assert html.get_payload() == "<p>short</p>"


async def test_a_quarantined_message_is_kept_as_it_came_and_fitted_on_release(tmp_path: Path) -> None:
    message = banned_message().replace(b"Subject: Invoice\n", b"Subject: Invoice\n" + LONG_HEADER + b"\n")
    async with strict_downstream() as (port, sink):
        async with running_daemon(tmp_path, f"smtp:[127.0.0.1]:{port}", protocols=("qmqp",)) as daemon:
            answer = await qmqp_send(daemon.qmqp, message, b"alice@example.org", [b"bob@example.net"])
        assert "BOUNCE" in answer, answer
        mail_id = answer.split("id=")[1].split(",")[0]
        config = tmp_path / "qsift.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\nmyhostname = "qsift.test"\n'
            f'[forward]\nmethod = "smtp:[127.0.0.1]:{port}"\n'
        )
        shown = qsift("quarantine", "show", "--config", str(config), mail_id)
        assert LONG_HEADER.decode() in shown.stdout  # the quarantine keeps the message as it came
        released = await asyncio.to_thread(qsift, "release", "--config", str(config), mail_id)
        assert released.returncode == 0, released.stdout + released.stderr
    delivered = sink.messages[-1]
    assert b"invoice.zip" in delivered
    assert max(len(line) for line in delivered.split(b"\r\n")) <= 998
    assert LONG_HEADER in unfold(delivered.partition(b"\r\n\r\n")[0]).split(b"\r\n")
