"""The message log in PostgreSQL (issue 13): every finished message gets amavisd-new's msgs, msgrcpt and
maddr rows, as its default $sql_store_info_for_all_msgs writes them (reference amavisd-sql.md §1.3-1.4).

Real daemons on loopback, one private cluster (tests/postgres_server.py), the fake MTA. The rows are
checked column by column for a passed, a tempfailed, a rejected, a discarded and a quarantined message;
two nodes logging at once share maddr rows without a clash; PostgreSQL stopped after the forward changes
neither the answer nor the delivery; the purge keeps what the quarantine keeps.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qsift.mail_ids import new_mail_ids
from qsift.store.message_log import LoggedMessage, LoggedRecipient
from qsift.store.pg_log import SharedMessageLog
from qsift.store.pg_quarantine import SharedQuarantine
from qsift.store.pg_worker import WorkerDatabase
from qsift.store.quarantine import KeptFacts
from qsift.store.settings import StoreSettings
from tests.fakes.mta import Script, fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.integration.test_destinies import banned_message, mail_to_bob
from tests.integration.test_shared_outcomes import store, store_url, two_nodes
from tests.integration.test_shared_quarantine import rows
from tests.postgres_server import PostgresServer

__all__ = ["store_url"]  # the fixture, shared with the outcome record's tests

SENDER = b"Alice@Example.ORG"
BOB, CAROL = b"bob@example.net", b"carol@example.net"

_MSGS = (
    "SELECT partition_tag, secret_id, am_id, time_num = extract(epoch FROM time_iso), "
    "(SELECT email FROM maddr WHERE id = sid), policy, client_addr, size, originating, content, quar_type, "
    "quar_loc, dsn_sent, spam_level, message_id, from_addr, subject, host FROM msgs WHERE mail_id = %s"
)
_MSGRCPT = (
    "SELECT rseqnum, email, domain, is_local, content, ds, rs, bl, wl, bspam_level, smtp_resp "
    "FROM msgrcpt JOIN maddr ON maddr.id = rid WHERE mail_id = %s ORDER BY rseqnum"
)


def plain_message(number: int) -> bytes:
    mail = mail_to_bob(f"Grüße {number}", f"<log-{number}@example.org>", "hello")
    return mail.as_bytes()


def mail_id_of(answer: str) -> bytes:
    found = re.search(r"id=([A-Za-z0-9_-]{12})\b", answer)
    assert found is not None, answer
    return found.group(1).encode()


def logged(url: str, mail_id: bytes) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    [message] = rows(url, _MSGS, mail_id)
    recipients = [(n, bytes(email), *rest) for n, email, *rest in rows(url, _MSGRCPT, mail_id)]
    return (message[0], bytes(message[1]), *message[2:]), recipients


def msgs(url: str) -> int:
    return int(rows(url, "SELECT count(*) FROM msgs")[0][0])


async def test_a_passed_message_and_a_tempfailed_recipient(tmp_path: Path, store_url: str) -> None:
    """Carol's downstream says 451: her row says T with that reply, Bob's P with the queue id."""
    message = plain_message(1)
    script = Script(rcpt_replies={"carol@example.net": "451 4.2.0 try later"})
    async with (
        fake_mta(script) as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={**store(store_url), "policy": {"local_domains": ["example.net"]}},
            listen_extra={"policy_bank": "ORIGINATING"},
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB, CAROL])
    assert answer.startswith("Z"), answer
    mail_id = mail_id_of(answer)
    message_row, recipients = logged(store_url, mail_id)
    secret_id = message_row[1]
    assert message_row == (
        0,
        secret_id,
        mail_id.decode(),
        True,
        b"alice@example.org",
        "ORIGINATING",
        "127.0.0.1",  # the peer: qsift-queue vouched for no client
        len(message),
        "Y",
        "C",
        " ",
        "",
        "N",
        None,
        "<log-1@example.org>",
        "alice@example.org",
        "Grüße 1",
        "qsift.test",
    )
    assert len(secret_id) == 12 and secret_id != mail_id
    [(bob_reply,)] = [r[-1:] for r in recipients[:1]]
    assert recipients[0][:-1] == (1, BOB, "net.example", "Y", "C", "P", " ", "N", "N", None)
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as \S+", bob_reply), bob_reply
    assert recipients[1][:-1] == (2, CAROL, "net.example", "Y", "C", "T", " ", "N", "N", None)
    assert recipients[1][-1] == f"451 4.2.0 try later (smtp:[127.0.0.1]:{mta.port})"
    assert [d.recipients for d in mta.accepted] == [[BOB]]


@pytest.mark.parametrize(
    ("destiny", "letter", "answer"),
    [("reject", "R", "D554 5.7.0 Reject"), ("discard", "D", "K250 2.7.0 Ok, discarded")],
)
async def test_a_rejected_and_a_discarded_message(
    tmp_path: Path, store_url: str, destiny: str, letter: str, answer: str
) -> None:
    """Not kept ([quarantine] off for banned): the log alone writes its rows."""
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={
                **store(store_url),
                "destiny": {"banned": destiny},
                "quarantine": {"banned": False},
                "policy": {"local_domains": ["example.com"]},
            },
        ) as daemon,
    ):
        said = await qmqp_send(daemon.qmqp, banned_message(), SENDER, [BOB])
    assert said.startswith(answer), said
    mail_id = mail_id_of(said)
    message_row, [recipient] = logged(store_url, mail_id)
    assert message_row[2:] == (
        mail_id.decode(),
        True,
        b"alice@example.org",
        "",
        "127.0.0.1",
        len(banned_message()),
        "N",
        "B",
        " ",
        "",
        "N",
        None,
        "<banned-1@example.org>",
        "alice@example.org",
        "Invoice",
        "qsift.test",
    )
    assert recipient[:-1] == (1, BOB, "net.example", "N", "B", letter, " ", "N", "N", None)
    assert recipient[-1] == said[1:256]
    assert mta.deliveries == []


async def test_a_quarantined_message_has_one_msgs_row_and_every_recipient(
    tmp_path: Path, store_url: str
) -> None:
    """Bob loves banned files and gets it; Carol's copy is kept and bounced. The quarantine's rows (Carol's,
    before the forward) and the log's meet: one msgs row, still quar_type Q, and a msgrcpt row each."""
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={
                **store(store_url),
                "policy": {"banned_files_lovers": ["bob@example.net"]},
            },
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, banned_message(), SENDER, [BOB, CAROL])
    assert answer.startswith("K") and "1 BOUNCE" in answer, answer
    mail_id = mail_id_of(answer)
    assert rows(store_url, "SELECT count(*) FROM msgs") == [(1,)]
    message_row, recipients = logged(store_url, mail_id)
    assert message_row[9:13] == ("B", "Q", mail_id.decode(), "Y")  # content, quar_type, quar_loc, dsn_sent
    assert [r[:-1] for r in recipients] == [
        (1, BOB, "net.example", "Y", "B", "P", " ", "N", "N", None),
        (2, CAROL, "net.example", "Y", "B", "B", " ", "N", "N", None),
    ]
    assert recipients[0][-1].startswith("250 2.0.0 Ok: queued as ")
    assert recipients[1][-1] == f"250 2.5.0 Ok, id={mail_id.decode()}, BOUNCE"
    assert mta.accepted[0].recipients == [BOB]
    quarantine = SharedQuarantine(StoreSettings(url=store_url, connect_timeout=1.0), "qsift.test")
    try:  # a release to both marks the kept one's row: Bob's copy was never kept
        await asyncio.to_thread(quarantine.mark_released, mail_id.decode(), [BOB.decode(), CAROL.decode()])
    finally:
        quarantine.close()
    assert rows(store_url, "SELECT rseqnum, rs FROM msgrcpt ORDER BY rseqnum") == [(1, " "), (2, "R")]


async def test_two_nodes_logging_at_once_share_the_addresses(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same new addresses from both nodes at once: each ends up in maddr once, every message logged."""
    recipients = [f"user{n}@example.net".encode() for n in range(8)]
    async with fake_mta() as mta, two_nodes(tmp_path, store_url, mta) as (a, b):
        answers = await asyncio.gather(
            *(
                qmqp_send(node.qmqp, plain_message(100 + n), SENDER, recipients[n % 3 :])
                for n, node in enumerate([a, b] * 6)
            )
        )
    assert all(answer.startswith("K") for answer in answers), answers
    assert "not logged to SQL" not in caplog.text
    assert msgs(store_url) == 12
    addresses = rows(store_url, "SELECT email, count(*) FROM maddr GROUP BY email ORDER BY email")
    assert [(bytes(e), n) for e, n in addresses] == [(b"alice@example.org", 1)] + [(r, 1) for r in recipients]
    passed = rows(store_url, "SELECT count(*) FROM msgrcpt WHERE ds = 'P'")
    assert passed == [(sum(len(recipients[n % 3 :]) for n in range(12)),)]


async def test_postgresql_gone_after_the_forward_leaves_the_answer_alone(
    tmp_path: Path, store_url: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The downstream has the message when PostgreSQL stops: K, delivered once, the log line says what
    was lost."""
    async with (
        fake_mta(Script(final_delay=1.0)) as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=store(store_url)
        ) as daemon,
    ):
        sending = asyncio.create_task(qmqp_send(daemon.qmqp, plain_message(2), SENDER, [BOB]))
        try:
            await asyncio.wait_for(mta.data_received.wait(), 10)
            await asyncio.to_thread(postgres.stop)
            answer = await sending
        finally:
            await asyncio.to_thread(postgres.start)
    assert answer.startswith("K250 2.0.0 Ok"), answer
    assert len(mta.accepted) == 1
    assert f"id={mail_id_of(answer).decode()} not logged to SQL: " in caplog.text
    assert msgs(store_url) == 0


def entry(
    mail_id: str, received: float, secret_id: str = "", to: tuple[str, ...] = ("bob@example.net",)
) -> LoggedMessage:
    recipients = tuple(
        LoggedRecipient(address, n, True, "C", "P", None, "250 2.0.0 Ok") for n, address in enumerate(to, 1)
    )
    return LoggedMessage(
        mail_id, secret_id, received, "alice@example.org", recipients, 10, "C", "", "", False, None, "N", b""
    )


async def test_four_nodes_adding_the_same_addresses_at_once_log_every_message(store_url: str) -> None:
    """The address race of amavisd-new's SELECT/INSERT/SELECT (reference §5): an address another node adds
    meanwhile is not in this statement's snapshot, the statement goes again and finds it."""
    settings = StoreSettings(url=store_url, connect_timeout=2.0)
    nodes = [SharedMessageLog(WorkerDatabase(settings), f"n{n}.qsift.test") for n in range(4)]
    try:
        for round_ in range(10):
            to = tuple(f"u{round_}-{k}@example.net" for k in range(6))
            await asyncio.gather(
                *(nodes[n % 4].log(entry(new_mail_ids().mail_id, 1000.0, to=to[n % 3 :])) for n in range(16))
            )
    finally:
        for node in nodes:
            await node.close()
    assert msgs(store_url) == 160
    assert rows(store_url, "SELECT count(*), count(DISTINCT email) FROM maddr") == [(61, 61)]


async def test_the_purge_takes_old_log_rows_one_node_at_a_time_and_leaves_what_is_kept(
    store_url: str,
) -> None:
    settings = StoreSettings(url=store_url, connect_timeout=1.0)
    message_log = SharedMessageLog(WorkerDatabase(settings), "qsift.test")
    quarantine = SharedQuarantine(settings, "qsift.test")
    old, new, kept = (new_mail_ids() for _ in range(3))
    try:
        await message_log.log(entry(old.mail_id, 1000.0, old.secret_id))
        await message_log.log(entry(new.mail_id, 3000.0, new.secret_id))
        facts = KeptFacts(delivery_status=("B",), local=(True,), secret_id=kept.secret_id)
        await asyncio.to_thread(
            quarantine.store,
            kept.mail_id,
            "banned",
            "a program",
            "alice@example.org",
            ["bob@example.net"],
            [b"Subject: x\n\nx\n"],
            1000.0,
            "",
            facts,
        )
        await message_log.log(entry(kept.mail_id, 1000.0, kept.secret_id))
        with psycopg.connect(store_url, autocommit=True) as other_node:
            other_node.execute("SELECT pg_advisory_lock(%s)", (0x71736D6C,))
            assert await message_log.purge(2000.0) == 0  # the other node is purging
            other_node.execute("SELECT pg_advisory_unlock(%s)", (0x71736D6C,))
        assert await message_log.purge(2000.0) == 1
        left = rows(store_url, "SELECT mail_id FROM msgs ORDER BY mail_id")
        assert sorted(bytes(m).decode() for (m,) in left) == sorted([new.mail_id, kept.mail_id])
        left = rows(store_url, "SELECT DISTINCT mail_id FROM msgrcpt")
        assert sorted(bytes(m).decode() for (m,) in left) == sorted([new.mail_id, kept.mail_id])
        assert quarantine.get(kept.mail_id) is not None
    finally:
        await message_log.close()
        quarantine.close()
