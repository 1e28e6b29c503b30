"""Sessions to the downstream kept between messages (act/smtp_forward.IdleSessions), against the scripted
downstream over real loopback sockets: reused after RSET, dropped and replaced unseen when the server
closed them or refuses RSET, and ended with QUIT when let go."""

from __future__ import annotations

import asyncio

from qsift.act.smtp_forward import IdleSessions, SmtpTarget, SmtpTimeouts, forward_via_smtp
from qsift.model import Envelope, ForwardResult, Recipient
from qsift.spool import MessageSpool
from tests.fakes.mta import FakeMta, Script, fake_mta

QUICK = SmtpTimeouts(connect=2, command=2, data_block=2, final_reply=2)
ENVELOPE = Envelope("alice@example.org", (Recipient("bob@example.net"),), protocol="ESMTP")


async def forward(
    mta: FakeMta, sessions: IdleSessions, number: int, timeouts: SmtpTimeouts = QUICK
) -> ForwardResult:
    target = SmtpTarget(False, host="127.0.0.1", port=mta.port)
    with MessageSpool.from_bytes(b"Subject: %d\n\nbody %d\n" % (number, number)) as spool:
        return await forward_via_smtp(
            target, ENVELOPE, spool, helo_name="qsift.test", timeouts=timeouts, sessions=sessions
        )


def verbs(mta: FakeMta) -> list[bytes]:
    return [line[:4].upper() for line in mta.transcript]


async def test_a_kept_session_carries_the_next_message_after_rset() -> None:
    async with fake_mta() as mta:
        sessions = IdleSessions(2)
        for number in range(3):
            result = await forward(mta, sessions, number)
            assert result.all_accepted
        assert mta.connections == 1
        assert verbs(mta) == [
            b"EHLO",
            *[b"MAIL", b"RCPT", b"DATA"],
            *[b"RSET", b"MAIL", b"RCPT", b"DATA"] * 2,
        ]
        assert not mta.quit_received.is_set()
        sessions.close()
        await asyncio.wait_for(mta.quit_received.wait(), 5)
    assert [d.body.split(b"\r\n")[0] for d in mta.accepted] == [b"Subject: 0", b"Subject: 1", b"Subject: 2"]


async def test_a_session_the_server_closed_is_replaced_before_anything_is_sent() -> None:
    async with fake_mta() as mta:
        sessions = IdleSessions(2)
        assert (await forward(mta, sessions, 1)).all_accepted
        await mta.drop_sessions()
        result = await forward(mta, sessions, 2)
        sessions.close()
    assert result.all_accepted
    assert mta.connections == 2
    assert len(mta.accepted) == 2


async def test_a_session_whose_rset_is_refused_is_replaced() -> None:
    async with fake_mta(Script(rset_reply="421 4.4.2 sink.test timeout, closing")) as mta:
        sessions = IdleSessions(2)
        assert (await forward(mta, sessions, 1)).all_accepted
        result = await forward(mta, sessions, 2)
        sessions.close()
    assert result.all_accepted
    assert mta.connections == 2
    assert [d.body.split(b"\r\n")[0] for d in mta.accepted] == [b"Subject: 1", b"Subject: 2"]


async def test_a_refused_message_leaves_a_sound_session_that_is_kept() -> None:
    async with fake_mta(Script(final_reply="451 4.3.0 try later")) as mta:
        sessions = IdleSessions(2)
        first = await forward(mta, sessions, 1)
        assert not first.all_accepted
        await forward(mta, sessions, 2)
        assert mta.connections == 1
        sessions.close()


async def test_a_session_that_broke_off_is_closed_not_kept() -> None:
    async with fake_mta(Script(hang_after_dot=True)) as mta:
        sessions = IdleSessions(2)
        short = SmtpTimeouts(connect=2, command=2, data_block=2, final_reply=0.2)
        result = await forward(mta, sessions, 1, short)
        assert [r.reply.smtp_code for r in result.per_recipient] == [451]
        await forward(mta, sessions, 2, short)
        assert mta.connections == 2
        sessions.close()


async def test_no_more_sessions_are_kept_than_allowed() -> None:
    async with fake_mta() as mta:
        sessions = IdleSessions(1)
        results = await asyncio.gather(*(forward(mta, sessions, n) for n in range(3)))
        assert all(r.all_accepted for r in results)
        assert mta.connections == 3
        # Two were let go at once with QUIT; the one kept says QUIT when the set is closed.
        sessions.close()
        deadline = asyncio.get_running_loop().time() + 5
        while verbs(mta).count(b"QUIT") < 3:
            assert asyncio.get_running_loop().time() < deadline, verbs(mta)
            await asyncio.sleep(0.01)


async def test_no_session_is_kept_while_a_new_connection_waits_for_its_greeting() -> None:
    """A server taking one connection at a time (tcpserver -c 1): a kept session would hold the slot the
    other message's connection waits in until its greeting times out."""
    async with fake_mta(Script(max_connections=1, final_delay=0.2)) as mta:
        sessions = IdleSessions(2)
        results = await asyncio.gather(*(forward(mta, sessions, n) for n in range(2)))
        sessions.close()
    assert all(r.all_accepted for r in results), [r.per_recipient for r in results]
    assert mta.peak == 1


async def test_an_lmtp_session_is_kept_too() -> None:
    async with fake_mta(Script(lmtp=True)) as mta:
        sessions = IdleSessions(2)
        target = SmtpTarget(True, host="127.0.0.1", port=mta.port)
        for number in range(2):
            with MessageSpool.from_bytes(b"Subject: %d\n\nbody\n" % number) as spool:
                result = await forward_via_smtp(
                    target, ENVELOPE, spool, helo_name="qsift.test", timeouts=QUICK, sessions=sessions
                )
            assert result.all_accepted
        sessions.close()
    assert mta.connections == 1
    assert verbs(mta)[:1] == [b"LHLO"] and b"RSET" in verbs(mta)
