"""DESIGN.md §3, row by row, end to end over loopback: a QMQP or SMTP client → qsift → a downstream MTA.

The downstream is tests/fakes/mta.py, a real listener scripted to answer 250, 4xx or 5xx, to refuse the
connection, or to hang. Rows that need content checks and policy (bounce, discard, reject destinies,
scanner failure) belong to the issues that build those stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import (
    RunningDaemon,
    free_port,
    qmqp_exchange,
    qmqp_request,
    qmqp_send,
    running_daemon,
    smtp_send,
)

DATE = b"Date: Wed, 25 Nov 2026 12:00:00 +0000"
MESSAGE = b"From: alice@example.org\nTo: bob@example.net\n%s\nSubject: table\n\nhello\n.dot line\n" % DATE
ON_WIRE = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\n%s\r\nSubject: table\r\n\r\nhello\r\n..dot line\r\n"
    % DATE
)
SENDER = b"alice@example.org"
QUICK = {"connect_timeout": 1, "command_timeout": 1, "data_timeout": 1, "final_timeout": 1}


@contextlib.asynccontextmanager
async def scene(
    tmp_path: Path,
    script: Script | None = None,
    *,
    forward_port: int | None = None,
    **daemon_kw: Any,
) -> AsyncIterator[tuple[RunningDaemon, FakeMta]]:
    async with fake_mta(script) as mta:
        port = forward_port or mta.port
        forward_extra: Mapping[str, Any] = daemon_kw.pop("forward_extra", QUICK)
        async with running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{port}",
            protocols=("qmqp", "smtp"),
            forward_extra=forward_extra,
            **daemon_kw,
        ) as daemon:
            yield daemon, mta


def without_mark(raw: bytes) -> bytes:
    first, _, rest = raw.partition(b"\r\n")
    assert re.fullmatch(rb"X-Qsift-Scanned: v2 t=\d+ h=[0-9a-f]{64}", first), first
    return rest


async def both(daemon: RunningDaemon, recipients: list[bytes], message: bytes = MESSAGE) -> tuple[str, str]:
    """The same message once over QMQP and once over SMTP: the QMQP answer and the SMTP final reply."""
    qmqp = await qmqp_send(daemon.qmqp, message, SENDER, recipients)
    transcript = await smtp_send(daemon.smtp, message, SENDER, recipients)
    if transcript.final:
        code, text = transcript.final[0]
    else:
        code, text = transcript.data or transcript.mail or transcript.greeting
    return qmqp, f"{code} {text}"


# --- delivered to every recipient ----------------------------------------------------------------------


async def test_delivered_to_every_recipient(tmp_path: Path) -> None:
    async with scene(tmp_path) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"bob@example.net", b"carol@example.net"])
    forward = rf"from MTA\(smtp:\[127\.0\.0\.1\]:{mta.port}\): 250 2\.0\.0 Ok: queued as SINK\d"
    assert re.fullmatch(rf"K250 2\.0\.0 Ok, id=[\w-]{{12}}, {forward}", qmqp), qmqp
    assert re.fullmatch(rf"250 2\.0\.0 Ok, id=[\w-]{{12}}, {forward}", smtp), smtp
    assert len(mta.deliveries) == 2
    assert all(d.recipients == [b"bob@example.net", b"carol@example.net"] for d in mta.deliveries)
    # QMQP carries qmail's LF form; both leave CRLF and dot-stuffed, and nothing else changes but the
    # X-Qsift-Scanned mark on top.
    assert without_mark(mta.deliveries[0].raw) == ON_WIRE
    assert without_mark(mta.deliveries[1].raw) == ON_WIRE


# --- the downstream refuses some or all ----------------------------------------------------------------


async def test_downstream_refuses_some_recipients(tmp_path: Path) -> None:
    script = Script(rcpt_replies={"gone@example.net": "550 5.1.1 no such user"})
    async with scene(tmp_path, script) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"gone@example.net", b"bob@example.net"])
    assert qmqp.startswith("K250 2.0.0 Ok") and qmqp.endswith(", but 1 REJECT"), qmqp
    assert smtp.startswith("250 2.0.0 Ok") and smtp.endswith(", but 1 REJECT"), smtp
    # Each message delivered to the one who took it, and a DSN to the sender for the one refused.
    assert [d.recipients for d in mta.deliveries] == [[b"bob@example.net"], [SENDER]] * 2
    dsn = mta.deliveries[1]
    assert dsn.sender == b"" and b"Final-Recipient: rfc822; gone@example.net" in dsn.body
    assert b"550 5.1.1 no such user" in dsn.body


async def test_downstream_refuses_every_recipient(tmp_path: Path) -> None:
    script = Script(rcpt_replies={"gone@example.net": "550 5.1.1 no such user"})
    async with scene(tmp_path, script) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"gone@example.net"])
    assert re.fullmatch(
        r"D550 5\.1\.1 id=\S+ - rejected by next-hop MTA, from MTA\(.+\): .*no such user.*", qmqp
    )
    assert smtp.startswith("550 5.1.1 id=") and "no such user" in smtp, smtp
    assert mta.deliveries == []


async def test_downstream_refuses_the_message_after_the_dot(tmp_path: Path) -> None:
    async with scene(tmp_path, Script(final_reply="554 5.7.1 content refused")) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"bob@example.net"])
    assert qmqp.startswith("D554 5.7.1 ") and "content refused" in qmqp, qmqp
    assert smtp.startswith("554 5.7.1 ") and "content refused" in smtp, smtp
    assert mta.accepted == []


# --- the downstream fails: always try later ------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        Script(mail_reply="451 4.3.0 queue busy"),
        Script(rcpt_replies={"bob@example.net": "450 4.2.0 try later"}),
        Script(final_reply="451 4.3.0 queue file write error"),
        Script(greeting="554 5.3.2 not now"),
        Script(never_greet=True),
        Script(hang_after_dot=True),
    ],
    ids=["mail-451", "rcpt-450", "dot-451", "greeting-554", "never-greets", "hangs-after-dot"],
)
async def test_downstream_trouble_is_a_temporary_failure(tmp_path: Path, script: Script) -> None:
    async with scene(tmp_path, script) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"bob@example.net"])
    assert re.match(r"Z4\d\d 4\.\d\.\d id=\S+ - forward failed, from MTA\(", qmqp), qmqp
    assert re.match(r"4\d\d 4\.\d\.\d id=", smtp), smtp
    assert mta.accepted == [] or script.hang_after_dot


async def test_downstream_refuses_the_connection(tmp_path: Path) -> None:
    async with scene(tmp_path, forward_port=free_port()) as (daemon, _):
        qmqp, smtp = await both(daemon, [b"bob@example.net"])
    assert qmqp.startswith("Z451 4.4.1 ") and "cannot connect" in qmqp, qmqp
    assert smtp.startswith("451 4.4.1 "), smtp


async def test_one_recipient_tempfailed_one_delivered(tmp_path: Path) -> None:
    """Z for the message, and the retry delivers only the recipient still owed."""
    script = Script(rcpt_replies={"later@example.net": "450 4.2.0 mailbox busy"})
    async with scene(tmp_path, script) as (daemon, mta):
        recipients = [b"later@example.net", b"bob@example.net"]
        first = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, recipients)
        script.rcpt_replies.clear()
        second = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, recipients)
    assert first.startswith("Z450 4.2.0"), first
    assert second.startswith("K250"), second
    assert [d.recipients for d in mta.deliveries] == [[b"bob@example.net"], [b"later@example.net"]]


# --- the client's side: size, protocol, truncation, access, load ---------------------------------------


async def test_message_over_the_size_limit(tmp_path: Path) -> None:
    big = b"Subject: big\n\n" + b"x" * 3000 + b"\n"
    async with scene(tmp_path, limits={"message_size": 2000}) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"bob@example.net"], big)
        declared = await smtp_send(daemon.smtp, big, SENDER, [b"bob@example.net"], mail_params=b" SIZE=5000")
    assert qmqp.startswith("D552 5.3.4"), qmqp
    assert smtp.startswith("552 5.3.4"), smtp
    assert declared.mail is not None and declared.mail[0] == 552
    assert mta.deliveries == []


async def test_smtp_protocol_errors_get_rfc_5321_replies(tmp_path: Path) -> None:
    async with scene(tmp_path) as (daemon, mta):
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.smtp)
        await reader.readline()
        writer.write(b"EHLO c\r\nMAIL FROM:<a@x> FOO=1\r\nRCPT TO:<b@y>\r\nBOGUS\r\nDATA\r\nQUIT\r\n")
        replies = []
        while line := await reader.readline():
            if line[3:4] == b" ":
                replies.append(line[:3])
        writer.close()
    assert replies == [b"250", b"555", b"503", b"500", b"503", b"221"]
    assert mta.connections == 0


async def test_truncated_input_is_never_forwarded(tmp_path: Path) -> None:
    async with scene(tmp_path, limits={"client_timeout": 1}) as (daemon, mta):
        request = qmqp_request(MESSAGE, SENDER, [b"bob@example.net"])
        assert await qmqp_exchange(daemon.qmqp, request[:-3]) == ""
        with socket.create_connection(("127.0.0.1", daemon.smtp)) as sock:
            sock.sendall(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: half\r\n\r\nhal")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)
    assert mta.connections == 0


async def test_client_outside_the_acl(tmp_path: Path) -> None:
    async with scene(tmp_path, listen_extra={"acl": ["192.0.2.0/24"]}) as (daemon, mta):
        qmqp = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"bob@example.net"])
        transcript = await smtp_send(daemon.smtp, MESSAGE, SENDER, [b"bob@example.net"])
    # One row for both listeners: refused and closed, so 421 (RFC 5321 §3.8) in QMQP's text too.
    assert qmqp.startswith("Z421 4.7.1 access denied"), qmqp
    assert transcript.greeting == (421, "4.7.1 access denied")
    assert mta.connections == 0


async def test_too_busy_past_the_bounded_wait(tmp_path: Path) -> None:
    """A slot is a message in progress: holders that have begun a request and a message take both."""
    limits = {"max_sessions": 1, "busy_wait": 0.3}
    async with scene(tmp_path, limits=limits) as (daemon, _):
        holders = []
        for port, begun in (
            (daemon.qmqp, b"1000:"),
            (daemon.smtp, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: slow\r\n"),
        ):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(begun)
            holders.append(writer)
        deadline = asyncio.get_running_loop().time() + 10
        while not all(slots.full for slots in daemon.daemon.slots):  # each holds its listener's only slot
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        qmqp = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"bob@example.net"])
        data_reply, waited, after = await asyncio.wait_for(data_refused(daemon.smtp), 0.3 + 10)
        for writer in holders:
            writer.close()
    # One row for every "too busy": 451 4.3.2, as the worker's limit and SMTP's reply to DATA say it.
    assert qmqp == "Z451 4.3.2 too busy, try later", qmqp
    # The reply to DATA itself, before any content is sent: no 354 first, no content read for nothing.
    assert data_reply == b"451 4.3.2 too busy, try later\r\n", data_reply
    assert 0.25 < waited < 0.3 + 5, waited
    # The session goes on: the client may give up the envelope and say goodbye (RFC 5321 §4.1.1.4).
    assert after == [b"250 2.0.0 Ok\r\n", b"221 2.0.0 Bye\r\n"], after


async def test_lmtp_too_busy_is_the_reply_to_data_and_content_sent_ahead_is_never_read(
    tmp_path: Path,
) -> None:
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("lmtp",),
            forward_extra=QUICK,
            limits={"max_sessions": 1, "busy_wait": 0.3},
        ) as daemon,
    ):
        _, holder = await asyncio.open_connection("127.0.0.1", daemon.lmtp)
        holder.write(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: slow\r\n")
        deadline = asyncio.get_running_loop().time() + 10
        while not daemon.daemon.slots[0].full:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        data_reply, waited, after = await asyncio.wait_for(data_refused(daemon.lmtp, b"LHLO c\r\n"), 10.3)
        # A client that does not wait for the reply to DATA, its content a transaction of its own.
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.lmtp)
        writer.write(
            b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
            b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n"
        )
        heard = await asyncio.wait_for(reader.read(), 10.3)  # to the close
        writer.close()
        holder.close()
    assert data_reply == b"451 4.3.2 too busy, try later\r\n", data_reply
    assert 0.25 < waited < 0.3 + 5, waited
    assert after == [b"250 2.0.0 Ok\r\n", b"221 2.0.0 Bye\r\n"], after
    assert heard.endswith(
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.3.2 too busy, try later\r\n"
        b"421 4.5.0 Improper use of SMTP command pipelining, closing connection\r\n"
    ), heard
    assert mta.deliveries == []


async def data_refused(port: int, hello: bytes = b"EHLO c\r\n") -> tuple[bytes, float, list[bytes]]:
    """EHLO, MAIL, RCPT, DATA, one at a time: the reply to DATA, how long it took, then RSET's and QUIT's."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def ask(command: bytes) -> bytes:
            writer.write(command)
            lines = [await reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(await reader.readline())
            return lines[-1]

        assert (await reader.readline()).startswith(b"220 ")
        for command in (hello, b"MAIL FROM:<a@x>\r\n", b"RCPT TO:<b@y>\r\n"):
            assert (await ask(command)).startswith(b"250 "), command
        started = time.monotonic()
        data_reply = await ask(b"DATA\r\n")
        waited = time.monotonic() - started
        if not data_reply.startswith(b"4"):
            return data_reply, waited, []  # a 354: what follows would be read as content
        return data_reply, waited, [await ask(b"RSET\r\n"), await ask(b"QUIT\r\n")]
    finally:
        writer.close()


# --- the same message again ----------------------------------------------------------------------------


async def test_retry_after_the_client_vanished_before_k_is_not_delivered_twice(tmp_path: Path) -> None:
    script = Script(final_delay=0.5)
    async with scene(tmp_path, script) as (daemon, mta):
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.qmqp)
        writer.write(
            qmqp_request(b"Received: from a by b; Mon, 1 Jan 2024\n" + MESSAGE, SENDER, [b"b@y.net"])
        )
        await writer.drain()
        await asyncio.wait_for(mta.data_received.wait(), 5)
        writer.close()  # like qmail-qmqpc hitting its 60 s timeout: it never hears K
        await asyncio.sleep(0.8)
        # The retry comes through qmail-smtpd again, which wrote a new Received line on top.
        retry = b"Received: from a by b; Mon, 1 Jan 2024 00:05\n" + MESSAGE
        answer = await qmqp_send(daemon.qmqp, retry, SENDER, [b"b@y.net"])
        smtp = await smtp_send(daemon.smtp, MESSAGE, SENDER, [b"b@y.net"])
    assert answer.startswith("K250 2.0.0") and "already delivered as id=" in answer, answer
    assert len(mta.deliveries) == 2  # the QMQP one once, and the SMTP one (a different body form)
    assert smtp.final[0][0] == 250


async def test_a_different_message_is_not_a_duplicate(tmp_path: Path) -> None:
    async with scene(tmp_path) as (daemon, mta):
        first = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"b@y.net"])
        second = await qmqp_send(daemon.qmqp, MESSAGE + b"P.S.\n", SENDER, [b"b@y.net"])
        third = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"c@y.net"])
    assert all(a.startswith("K250") and "already" not in a for a in (first, second, third))
    assert len(mta.deliveries) == 3


async def test_outside_the_dedupe_window_the_message_goes_again(tmp_path: Path) -> None:
    async with scene(tmp_path, top={"dedupe_window": 0.2}) as (daemon, mta):
        await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"b@y.net"])
        await asyncio.sleep(0.4)
        again = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [b"b@y.net"])
    assert "already" not in again and len(mta.deliveries) == 2


# --- LMTP in: one answer per recipient -----------------------------------------------------------------


async def test_lmtp_listener_answers_each_recipient(tmp_path: Path) -> None:
    script = Script(
        rcpt_replies={"gone@example.net": "550 5.1.1 no such user", "busy@example.net": "451 4.3.0 x"}
    )
    async with (
        fake_mta(script) as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("lmtp",), forward_extra=QUICK
        ) as daemon,
    ):
        recipients = [b"bob@example.net", b"gone@example.net", b"busy@example.net"]
        transcript = await smtp_send(daemon.lmtp, MESSAGE, SENDER, recipients, lmtp=True)
    codes = [code for code, _ in transcript.final]
    assert codes == [250, 550, 451], transcript.final
    assert "no such user" in transcript.final[1][1]
    assert [d.recipients for d in mta.deliveries] == [[b"bob@example.net"]]


# --- SMTP clients that are slow, silent or sending huge lines -------------------------------------------


async def test_a_silent_smtp_client_is_dropped_and_nothing_is_forwarded(tmp_path: Path) -> None:
    async with scene(tmp_path, limits={"client_timeout": 0.5}) as (daemon, mta):
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.smtp)
        writer.write(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: stalled\r\n")
        await writer.drain()
        started = asyncio.get_running_loop().time()
        received = await asyncio.wait_for(reader.read(), 5)  # EOF once qsift gives up
        waited = asyncio.get_running_loop().time() - started
        writer.close()
    assert received.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert 0.4 < waited < 3 and mta.connections == 0


async def test_a_one_megabyte_header_line_over_smtp_arrives_folded(tmp_path: Path) -> None:
    message = b"X-Long: " + b"a" * 1_000_000 + b"\r\nSubject: wide\r\n\r\nbody\r\n"
    async with scene(tmp_path) as (daemon, mta):
        transcript = await smtp_send(daemon.smtp, message, SENDER, [b"bob@example.net"])
    assert transcript.final[0][0] == 250, transcript
    # Passed, with the bad header named on top (amavisd-new's X-Amavis-Alert), the rest as it came but
    # for the long line: with no white space to fold at, it is cut every 998 octets with CRLF SP, as
    # Postfix's smtp_line_length_limit cuts it (tests/integration/test_long_lines.py: folding at spaces).
    alert, _, rest = without_mark(mta.deliveries[0].raw).partition(b"\r\n")
    assert alert.startswith(b"X-Qsift-Alert: BAD HEADER SECTION, "), alert[:100]
    assert max(len(line) for line in rest.split(b"\r\n")) <= 998
    field, _, after = re.sub(rb"\r\n(?=[ \t])", b"", rest).partition(b"\r\n")
    assert field.startswith(b"X-Long: ") and field[8:].replace(b" ", b"") == b"a" * 1_000_000
    assert after == b"Subject: wide\r\n\r\nbody\r\n"


# --- scanners -----------------------------------------------------------------------------------------


async def test_every_virus_scanner_failed_is_a_temporary_failure(tmp_path: Path) -> None:
    broken = {"type": "command", "name": "gone", "command": "/nonexistent/scanner", "args": ["{}"]}
    virus = {"scanners": [broken], "backup_scanners": [{**broken, "name": "gone-too"}]}
    async with scene(tmp_path, top={"virus": virus}) as (daemon, mta):
        qmqp, smtp = await both(daemon, [b"bob@example.net"])
    assert re.match(r"Z451 4\.5\.0 id=\S+ - virus scanner failure: gone: .*; gone-too: ", qmqp), qmqp
    assert smtp.startswith("451 4.5.0 id="), smtp
    assert mta.connections == 0  # nothing forwarded, nothing lost: the client keeps the message


async def test_a_refusal_notice_that_cannot_be_sent_means_try_later(tmp_path: Path) -> None:
    script = Script(rcpt_replies={"gone@example.net": "550 5.1.1 no such user"})
    async with (
        fake_mta(Script(mail_reply="451 4.3.0 notify queue full")) as notify,
        scene(tmp_path, script, top={"notify": {"method": f"smtp:[127.0.0.1]:{notify.port}"}}) as (
            daemon,
            mta,
        ),
    ):
        recipients = [b"gone@example.net", b"bob@example.net"]
        first = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, recipients)
        notify.script.mail_reply = "250 2.1.0 Ok"
        retry = await qmqp_send(daemon.qmqp, MESSAGE, SENDER, recipients)
    assert first.startswith("Z451 4.5.0") and "could not be sent" in first, first
    assert retry.startswith("K250"), retry
    # bob got it once; the retry went to the refused recipient only, and its DSN went out.
    assert [d.recipients for d in mta.deliveries] == [[b"bob@example.net"]]
    assert [d.recipients for d in notify.deliveries] == [[SENDER]]
