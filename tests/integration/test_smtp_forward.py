"""forward_via_smtp against a scripted downstream MTA over real loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qsift.act.smtp_forward import SmtpTarget, SmtpTimeouts, forward_via_smtp, parse_forward_method
from qsift.model import Envelope, ForwardResult, Params, Recipient
from qsift.spool import MessageSpool
from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import free_port

QUICK = SmtpTimeouts(connect=2, command=2, data_block=2, final_reply=2)
MESSAGE = b"Subject: test\n\n.leading dot\nline\r\nlast line without end"


def envelope(*recipients: str, sender: str = "alice@example.org", params: Params = ()) -> Envelope:
    return Envelope(sender, tuple(Recipient(r) for r in recipients), mail_params=params, protocol="ESMTP")


async def forward(
    mta: FakeMta,
    env: Envelope,
    message: bytes = MESSAGE,
    *,
    lmtp: bool = False,
    per_transaction: int = 1000,
    client_gone: asyncio.Event | None = None,
    timeouts: SmtpTimeouts = QUICK,
) -> ForwardResult:
    target = SmtpTarget(lmtp, host="127.0.0.1", port=mta.port)
    with MessageSpool.from_bytes(message) as spool:
        return await forward_via_smtp(
            target,
            env,
            spool,
            helo_name="qsift.test",
            timeouts=timeouts,
            max_recipients_per_transaction=per_transaction,
            client_gone=client_gone,
        )


def answers(result: ForwardResult) -> list[str]:
    return [
        f"{r.reply.answer.value}{r.reply.smtp_code} {r.reply.enhanced_status}" for r in result.per_recipient
    ]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_delivery_is_crlf_and_dot_stuffed(pipelining: bool) -> None:
    async with fake_mta(Script(pipelining=pipelining)) as mta:
        result = await forward(mta, envelope("bob@example.net", "carol@example.net"))
    assert answers(result) == ["K250 2.0.0", "K250 2.0.0"]
    assert result.queued_as == "250 2.0.0 Ok: queued as SINK1"
    [delivery] = mta.deliveries
    assert delivery.raw == b"Subject: test\r\n\r\n..leading dot\r\nline\r\nlast line without end\r\n"
    assert delivery.body == b"Subject: test\r\n\r\n.leading dot\r\nline\r\nlast line without end\r\n"
    assert delivery.recipients == [b"bob@example.net", b"carol@example.net"]
    commands = [line[:4] for line in mta.transcript]
    assert commands == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"QUIT"]
    assert mta.transcript[1] == b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(MESSAGE)


async def test_a_server_without_esmtp_gets_helo_and_no_parameters() -> None:
    async with fake_mta(Script(esmtp=False)) as mta:
        env = envelope("bob@example.net", params=(("BODY", "8BITMIME"),))
        result = await forward(mta, env)
    assert answers(result) == ["K250 2.0.0"]
    assert mta.transcript[:3] == [
        b"EHLO qsift.test\r\n",
        b"HELO qsift.test\r\n",
        b"MAIL FROM:<alice@example.org>\r\n",
    ]


async def test_dsn_parameters_travel_only_where_offered() -> None:
    env = Envelope(
        "a@x.org",
        (Recipient("b@y.net", (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;b@y.net"))),),
        mail_params=(("RET", "HDRS"), ("ENVID", "QQ314"), ("BODY", "8BITMIME")),
    )
    async with fake_mta() as mta:
        await forward(mta, env)
    assert mta.transcript[1] == b"MAIL FROM:<a@x.org> SIZE=%d RET=HDRS ENVID=QQ314 BODY=8BITMIME\r\n" % len(
        MESSAGE
    )
    assert mta.transcript[2] == b"RCPT TO:<b@y.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.net\r\n"
    async with fake_mta(Script(dsn=False)) as mta:
        await forward(mta, env)
    assert mta.transcript[1] == b"MAIL FROM:<a@x.org> SIZE=%d BODY=8BITMIME\r\n" % len(MESSAGE)
    assert mta.transcript[2] == b"RCPT TO:<b@y.net>\r\n"


async def test_some_recipients_refused_at_rcpt() -> None:
    script = Script(
        rcpt_replies={"gone@y.net": "550 5.1.1 no such user", "full@y.net": "452 4.2.2 over quota"}
    )
    async with fake_mta(script) as mta:
        result = await forward(mta, envelope("gone@y.net", "ok@y.net", "full@y.net"))
    assert answers(result) == ["D550 5.1.1", "K250 2.0.0", "Z452 4.2.2"]
    assert "no such user" in result.per_recipient[0].reply.text
    assert [d.recipients for d in mta.deliveries] == [[b"ok@y.net"]]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_every_recipient_refused_sends_no_message(pipelining: bool) -> None:
    script = Script(
        pipelining=pipelining, rcpt_replies={"a@y.net": "550 5.1.1 no", "b@y.net": "550 5.1.1 no"}
    )
    async with fake_mta(script) as mta:
        result = await forward(mta, envelope("a@y.net", "b@y.net"))
    assert answers(result) == ["D550 5.1.1", "D550 5.1.1"]
    assert mta.deliveries == []


@pytest.mark.parametrize(
    ("field", "reply", "expected"),
    [
        ("mail_reply", "553 5.1.8 sender domain does not exist", "D553 5.1.8"),
        ("mail_reply", "451 4.3.0 try later", "Z451 4.3.0"),
        ("data_reply", "554 5.7.1 no data for you", "D554 5.7.1"),
        ("data_reply", "451 4.3.0 data later", "Z451 4.3.0"),
        ("final_reply", "554 5.7.1 content rejected", "D554 5.7.1"),
        ("final_reply", "451 4.3.0 queue file write error", "Z451 4.3.0"),
        ("greeting", "554 5.3.2 not accepting mail", "Z451 4.4.2"),
        ("greeting", "421 4.3.2 busy", "Z451 4.3.2"),
    ],
)
@pytest.mark.parametrize("pipelining", [True, False])
async def test_refusals_at_each_step(field: str, reply: str, expected: str, pipelining: bool) -> None:
    script = Script(pipelining=pipelining)
    setattr(script, field, reply)
    async with fake_mta(script) as mta:
        result = await forward(mta, envelope("b@y.net", "c@y.net"))
    assert answers(result) == [expected, expected]
    assert mta.accepted == []


async def test_recipients_past_the_server_limit_go_in_more_transactions() -> None:
    recipients = [f"r{i}@y.net" for i in range(7)]
    async with fake_mta(Script(max_recipients=3)) as mta:
        result = await forward(mta, envelope(*recipients))
    assert answers(result) == ["K250 2.0.0"] * 7
    assert [len(d.recipients) for d in mta.deliveries] == [3, 3, 1]
    assert mta.connections == 1


async def test_our_own_recipient_limit_per_transaction() -> None:
    async with fake_mta() as mta:
        result = await forward(mta, envelope(*[f"r{i}@y.net" for i in range(5)]), per_transaction=2)
    assert result.all_accepted and [len(d.recipients) for d in mta.deliveries] == [2, 2, 1]


async def test_a_452_for_the_first_recipient_is_a_tempfail_not_a_loop() -> None:
    async with fake_mta(Script(max_recipients=0)) as mta:
        result = await forward(mta, envelope("a@y.net", "b@y.net"))
    assert answers(result) == ["Z452 4.5.3", "Z452 4.5.3"]


async def test_lmtp_answers_each_recipient_after_the_dot(tmp_path: Path) -> None:
    script = Script(
        lmtp=True,
        greeting="220 lmtp.test LMTP",
        lmtp_final={"full@y.net": "452 4.2.2 mailbox full", "bad@y.net": "550 5.2.1 mailbox disabled"},
    )
    async with fake_mta(script) as mta:
        result = await forward(mta, envelope("ok@y.net", "full@y.net", "bad@y.net"), lmtp=True)
    assert answers(result) == ["K250 2.0.0", "Z452 4.2.2", "D550 5.2.1"]
    assert mta.transcript[0] == b"LHLO qsift.test\r\n"
    assert [d.recipients for d in mta.deliveries] == [[b"ok@y.net"]]


async def test_lmtp_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")
    async with fake_mta(Script(lmtp=True), unix_path=path) as mta:
        with MessageSpool.from_bytes(MESSAGE) as spool:
            result = await forward_via_smtp(
                parse_forward_method(f"lmtp:unix:{path}"),
                envelope("a@y.net"),
                spool,
                helo_name="q",
                timeouts=QUICK,
            )
    assert result.method == f"lmtp:unix:{path}" and result.all_accepted and len(mta.deliveries) == 1


async def test_refused_connection_is_a_tempfail_for_everyone() -> None:
    target = SmtpTarget(False, host="127.0.0.1", port=free_port())
    with MessageSpool.from_bytes(MESSAGE) as spool:
        result = await forward_via_smtp(
            target, envelope("a@y.net", "b@y.net"), spool, helo_name="q", timeouts=QUICK
        )
    assert answers(result) == ["Z451 4.4.1", "Z451 4.4.1"]
    assert "cannot connect" in result.per_recipient[0].reply.text


async def test_a_server_that_never_greets_times_out() -> None:
    quick = SmtpTimeouts(connect=1, command=0.3, data_block=1, final_reply=1)
    async with fake_mta(Script(never_greet=True)) as mta:
        result = await forward(mta, envelope("a@y.net"), timeouts=quick)
    assert answers(result) == ["Z451 4.4.2"] and "greeting" in result.per_recipient[0].reply.text


async def test_no_reply_after_the_dot_is_a_tempfail() -> None:
    quick = SmtpTimeouts(connect=1, command=1, data_block=1, final_reply=0.3)
    async with fake_mta(Script(hang_after_dot=True)) as mta:
        result = await forward(mta, envelope("a@y.net"), timeouts=quick)
    assert answers(result) == ["Z451 4.4.2"] and "final dot" in result.per_recipient[0].reply.text


async def test_a_client_gone_before_the_dot_means_no_dot() -> None:
    gone = asyncio.Event()
    gone.set()
    async with fake_mta() as mta:
        result = await forward(mta, envelope("a@y.net"), client_gone=gone)
        await asyncio.sleep(0.05)
    assert answers(result) == ["Z451 4.4.2"]
    assert mta.deliveries == [] and not mta.data_received.is_set()


async def test_garbage_from_the_server_is_a_tempfail() -> None:
    async with fake_mta(Script(greeting="HTTP/1.1 400 Bad Request")) as mta:
        result = await forward(mta, envelope("a@y.net"))
    assert answers(result) == ["Z451 4.5.0"]


async def test_non_ascii_addresses_need_smtputf8_downstream() -> None:
    async with fake_mta(Script(smtputf8=False)) as mta:
        result = await forward(mta, envelope("j\u00f6rg@y.net"))
    assert answers(result) == ["D553 5.6.7"] and mta.deliveries == []
    async with fake_mta() as mta:
        result = await forward(mta, envelope("j\u00f6rg@y.net"))
    assert result.all_accepted
    assert mta.transcript[1].endswith(b" SMTPUTF8\r\n")


async def test_a_recipient_that_cannot_go_on_a_command_line_is_refused_alone() -> None:
    async with fake_mta() as mta:
        result = await forward(mta, envelope("a<b@y.net", "ok@y.net"))
    assert answers(result) == ["D553 5.1.3", "K250 2.0.0"]


async def test_many_chunks_never_split_cr_from_lf() -> None:
    message = b"".join(b"line %d\r\n" % i for i in range(40_000))  # several spool chunks
    async with fake_mta() as mta:
        result = await forward(mta, envelope("a@y.net"), message)
    assert result.all_accepted and mta.deliveries[0].raw == message
    assert all(line.endswith(b"\r\n") for line in mta.transcript)


async def test_a_server_silent_after_quit_does_not_hold_up_the_result() -> None:
    async with fake_mta(Script(quit_reply=None)) as mta:
        started = asyncio.get_running_loop().time()
        result = await forward(mta, envelope("a@y.net"), timeouts=SmtpTimeouts(command=30))
        elapsed = asyncio.get_running_loop().time() - started
    assert result.all_accepted and elapsed < 5
