"""Pen pals against a real PostgreSQL (tests/postgres_server.py): rows written as amavisd-new writes them
for an outgoing mail (msgs, msgrcpt, maddr), the lookup (store/pg_penpals.py) and its bonus, and end to
end through a qsift daemon with a real spamd: X-Spam-Status and the log line say AM.PENPAL.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from qsift.checks.spam_levels import SpamLevels
from qsift.errors import StoreUnreachable
from qsift.policy.penpals import penpal_bonus
from qsift.store.amavisd_forms import maddr_domain, maddr_email
from qsift.store.penpals import PenPalQuery, SentMail
from qsift.store.pg_migrate import migrate
from qsift.store.pg_penpals import _FIND, SharedPenPals
from qsift.store.pg_worker import WorkerDatabase
from qsift.store.settings import StoreSettings
from tests.fakes.mta import Delivery, fake_mta
from tests.harness import free_port, qmqp_send, running_daemon
from tests.postgres_server import PostgresServer
from tests.spamd_daemon import Spamd, running_spamd

ALICE, BOB, CAROL = "alice@example.org", "bob@example.net", "carol@example.net"
WEEK = 7 * 86400
T = 1_800_000_000
_databases = itertools.count()


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    url = postgres.create_database(f"penpals{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    return url


def log_sent(
    url: str,
    mail_id: str,
    sender: str,
    recipients: list[str],
    time_num: int,
    *,
    message_id: str = "",
    subject: str = "",
    content: str | None = "C",
    ds: str = "P",
    partition_tag: int = 0,
) -> None:
    """One message's rows as amavisd-new's save_info_preliminary and save_info_final write them (with
    $sql_store_info_for_all_msgs), for mail `sender` sent out."""
    with psycopg.connect(url, autocommit=True) as db:
        ids = {}
        for address in [sender, *recipients]:
            email_ = maddr_email(address)
            db.execute(
                "INSERT INTO maddr (partition_tag, email, domain) VALUES (%s, %s, %s) "
                "ON CONFLICT (partition_tag, email) DO NOTHING",
                (partition_tag, email_, maddr_domain(email_)),
            )
            row = db.execute(
                "SELECT id FROM maddr WHERE partition_tag = %s AND email = %s", (partition_tag, email_)
            ).fetchone()
            assert row is not None
            ids[address] = row[0]
        with db.transaction():
            db.execute(
                "INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, policy,"
                " client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, spam_level,"
                " message_id, from_addr, subject, host) VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), %s,"
                " 'ORIGINATING', '192.0.2.7', 1234, 'Y', %s, '', '', 'N', -1.0, %s, %s, %s, 'mx.test')",
                (
                    partition_tag,
                    mail_id.encode(),
                    b"secret",
                    "1234-01",
                    time_num,
                    time_num,
                    ids[sender],
                    content,
                    message_id,
                    sender,
                    subject,
                ),
            )
            for rseqnum, recipient in enumerate(recipients, 1):
                db.execute(
                    "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs,"
                    " bl, wl, bspam_level, smtp_resp) VALUES (%s, %s, %s, %s, 'N', %s, %s, ' ', 'N', 'N',"
                    " -1.0, '250 2.0.0 Ok')",
                    (partition_tag, mail_id.encode(), rseqnum, ids[recipient], content or " ", ds),
                )


async def find(url: str, query: PenPalQuery) -> dict[str, SentMail]:
    database = WorkerDatabase(StoreSettings(url=url, connect_timeout=2.0))
    try:
        return await SharedPenPals(database).find(query)
    finally:
        await database.close()


# --- the lookup -------------------------------------------------------------------------------------


async def test_a_reply_within_the_halflife_gets_the_bonus(store_url: str) -> None:
    log_sent(store_url, "bobtoalice01", BOB, [ALICE], T, subject="lunch?")
    found = await find(store_url, PenPalQuery(ALICE, (BOB,)))
    assert found == {BOB: SentMail("bobtoalice01", T, "lunch?", by_reference=False)}
    penpal = penpal_bonus(found[BOB], T + 3600, SpamLevels(penpals_bonus_score=8.0))
    assert penpal.adjustment == -8.0 * 2 ** (-3600 / WEEK)  # -7.96715...
    assert penpal.test == "AM.PENPAL=-7.967"


async def test_at_one_halflife_the_bonus_is_halved(store_url: str) -> None:
    log_sent(store_url, "bobtoalice02", BOB, [ALICE], T - WEEK)
    found = await find(store_url, PenPalQuery(ALICE, (BOB,)))
    penpal = penpal_bonus(found[BOB], T, SpamLevels(penpals_bonus_score=8.0))
    assert (penpal.adjustment, penpal.test) == (-4.0, "AM.PENPAL=-4.000")


async def test_the_newest_mail_to_the_sender_counts(store_url: str) -> None:
    log_sent(store_url, "older0000001", BOB, [ALICE], T - 5000)
    log_sent(store_url, "newest000001", BOB, [CAROL, ALICE], T - 100)
    log_sent(store_url, "toanother001", BOB, [CAROL], T)
    log_sent(store_url, "alicetobob01", ALICE, [BOB], T + 10)  # the other way round: not a pen pal
    found = await find(store_url, PenPalQuery(ALICE, (BOB,)))
    assert found[BOB].mail_id == "newest000001"


async def test_the_message_id_path_prefers_the_mail_to_this_sender(store_url: str) -> None:
    """sel_penpals_msgid: of the mails the message refers to, one to its sender first, then the newest;
    and any of them before the newest mail to the sender found by address alone."""
    log_sent(store_url, "tocarol00001", BOB, [CAROL], T, message_id="<a@example.net>")
    log_sent(store_url, "toalice00001", BOB, [ALICE], T - 1000, message_id="<b@example.net>")
    log_sent(store_url, "toalice00002", BOB, [ALICE], T + 500, message_id="<c@example.net>")
    refs = ("<a@example.net>", "<b@example.net>")
    found = await find(store_url, PenPalQuery(ALICE, (BOB,), refs))
    assert found[BOB] == SentMail("toalice00001", T - 1000, "", by_reference=True)
    # Not to this sender at all, but the message names it: still a reply (a list, a forward).
    found = await find(store_url, PenPalQuery("list@lists.test", (BOB,), ("<a@example.net>",)))
    assert found[BOB] == SentMail("tocarol00001", T, "", by_reference=True)
    # No References: the newest mail to the sender.
    found = await find(store_url, PenPalQuery(ALICE, (BOB,)))
    assert found[BOB] == SentMail("toalice00002", T + 500, "", by_reference=False)


async def test_a_reply_from_a_sender_never_seen_is_found_by_message_id(store_url: str) -> None:
    log_sent(store_url, "tocarol00002", BOB, [CAROL], T, message_id="<d@example.net>")
    found = await find(store_url, PenPalQuery("new@elsewhere.test", (BOB,), ("<d@example.net>",)))
    assert found[BOB].mail_id == "tocarol00002"
    assert await find(store_url, PenPalQuery("new@elsewhere.test", (BOB,))) == {}


@pytest.mark.parametrize(
    ("content", "ds"),
    [("V", "P"), ("C", "B"), ("C", "R"), ("C", "D"), ("C", "T"), (None, "P")],
    ids=["a virus", "bounced", "rejected", "discarded", "tempfailed", "still in progress"],
)
async def test_only_clean_passed_mail_counts(store_url: str, content: str | None, ds: str) -> None:
    log_sent(store_url, "notcounted01", BOB, [ALICE], T, message_id="<e@example.net>", content=content, ds=ds)
    assert await find(store_url, PenPalQuery(ALICE, (BOB,), ("<e@example.net>",))) == {}


async def test_a_note_to_self_is_no_reply(store_url: str) -> None:
    log_sent(store_url, "toself000001", BOB, [BOB], T, message_id="<f@example.net>")
    assert await find(store_url, PenPalQuery(ALICE, (BOB,), ("<f@example.net>",))) == {}


async def test_all_recipients_in_one_statement(store_url: str) -> None:
    log_sent(store_url, "bobtoalice03", BOB, [ALICE], T - 10)
    log_sent(store_url, "caroltoalic1", CAROL, [ALICE], T - 20, subject="Re: Grüße")
    found = await find(store_url, PenPalQuery(ALICE, ("Bob@Example.NET", CAROL, "dave@example.net")))
    assert {r: s.mail_id for r, s in found.items()} == {
        "Bob@Example.NET": "bobtoalice03",  # maddr.email is lowercased: the envelope's form is kept
        CAROL: "caroltoalic1",
    }
    assert found[CAROL].subject == "Re: Grüße"


async def test_addresses_are_looked_up_in_partition_0(store_url: str) -> None:
    """qsift writes partition 0; maddr's index leads with partition_tag, so only that one is asked."""
    log_sent(store_url, "partition5ab", BOB, [ALICE], T, partition_tag=5)
    assert await find(store_url, PenPalQuery(ALICE, (BOB,))) == {}
    log_sent(store_url, "partition0ab", BOB, [ALICE], T - 10)
    assert (await find(store_url, PenPalQuery(ALICE, (BOB,))))[BOB].mail_id == "partition0ab"


def test_the_statement_uses_the_documented_indexes(store_url: str) -> None:
    """With a site's worth of log (20,000 mails from 2,000 addresses), no table is read whole: maddr by
    part_email, msgs by msgs_idx_mess_id and msgs_idx_sid, msgrcpt by its own."""
    with psycopg.connect(store_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO maddr (partition_tag, email, domain) "
            "SELECT 0, ('u' || g || '@example.net')::bytea, 'net.example' FROM generate_series(1, 2000) g"
        )
        db.execute(
            "INSERT INTO msgs (partition_tag, mail_id, am_id, time_num, time_iso, sid, size, content,"
            " message_id, host) SELECT 0, ('m' || g)::bytea, 'x', %s + g, now(), 1 + (g * 7919) %% 2000,"
            " 100, 'C', '<' || g || '@x>', 'h' FROM generate_series(1, 20000) g",
            (T,),
        )
        db.execute(
            "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, ds, rs) "
            "SELECT 0, ('m' || g)::bytea, 1, 1 + (g * 104729::bigint) % 2000, 'P', ' '"
            " FROM generate_series(1, 20000) g"
        )
        db.execute("ANALYZE")
        arguments = {
            "sender": b"u17@example.net",
            "recipients": [b"u1@example.net", b"u2@example.net", b"u3@example.net"],
            "references": ["<5@x>", "<77@x>"],
        }
        explain = sql.SQL("EXPLAIN ") + sql.SQL(_FIND)
        plan = "\n".join(str(row[0]) for row in db.execute(explain, arguments).fetchall())
    assert "Seq Scan" not in plan, plan
    for index in ("part_email", "msgs_idx_mess_id", "msgs_idx_sid", "msgrcpt_idx_rid"):
        assert index in plan, plan


async def test_postgresql_down_is_store_unreachable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/mail"
    with pytest.raises(StoreUnreachable, match="PostgreSQL"):
        await find(url, PenPalQuery(ALICE, (BOB,)))


# --- end to end: a qsift daemon, a real spamd ------------------------------------------------------


@pytest.fixture(scope="module")
def spamd() -> Iterator[Spamd]:
    with running_spamd() as daemon:
        yield daemon


REPLY = (
    b"From: Alice <alice@example.org>\nTo: bob@example.net, carol@example.net, dave@elsewhere.test\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <reply-1@example.org>\n"
    b"In-Reply-To: <bob-1@example.net>\nReferences: <bob-1@example.net>\nSubject: Re: lunch\n\n"
    b"Thursday at noon suits me. See you there.\n"
)


def settings(spamd: Spamd, url: str) -> dict[str, Any]:
    spam = {
        "type": "spamd",
        "address": spamd.unix_address,
        "tag_level": -100,  # headers on every message, as amavisd-new's sample's undef
        "penpals_bonus_score": 8,
        # So long that the minute between the row and the message rounds to the whole bonus.
        "penpals_halflife": 1e9,
        "penpals_threshold_low": -100,
    }
    return {
        "spam": spam,
        "policy": {"local_domains": ["example.net"]},
        "store": {"url": url, "connect_timeout": 1.0},
    }


def fields(delivery: Delivery) -> email.message.Message:
    return email.message_from_bytes(delivery.body, policy=email.policy.compat32)


def score_of(delivery: Delivery) -> float:
    return float(str(fields(delivery)["X-Spam-Score"]))


async def test_a_reply_to_a_local_user_is_scored_lower_for_that_user_alone(
    tmp_path: Path, store_url: str, spamd: Spamd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    log_sent(store_url, "bobtoalice09", BOB, [ALICE], int(time.time()) - 60, message_id="<bob-1@example.net>")
    recipients = [BOB.encode(), CAROL.encode(), b"dave@elsewhere.test"]
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=settings(spamd, store_url)
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, REPLY, ALICE.encode(), recipients)
    assert answer.startswith("K"), answer
    by_recipient = {d.recipients[0]: d for d in mta.accepted if len(d.recipients) == 1}
    bob, carol, dave = (by_recipient[r] for r in recipients)
    status = str(fields(bob)["X-Spam-Status"]).replace("\n", "")
    assert re.search(r"tests=\[AM\.PENPAL=-8\.000,", status), status
    assert "AM.PENPAL" not in str(fields(carol)["X-Spam-Status"])  # carol never wrote to alice
    assert score_of(bob) == pytest.approx(score_of(carol) - 8.0, abs=0.0015)
    assert fields(dave)["X-Spam-Status"] is None  # not local: no X-Spam fields, no pen pals
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Passed")]
    assert len(lines) == 1
    said = r"penpals: <bob@example.net> AM\.PENPAL=-8\.000 \(mail_id bobtoalice09, 6\d s old, by Message-ID\)"
    assert re.search(said, lines[0]), lines[0]
    assert "<carol@example.net> AM.PENPAL" not in lines[0]


async def test_qsift_s_own_log_makes_the_pen_pal(tmp_path: Path, store_url: str, spamd: Spamd) -> None:
    """bob writes to alice through qsift, which logs it (store/pg_log.py); alice's reply gets the bonus."""
    note = (
        b"From: bob@example.net\nTo: alice@example.org\nDate: Thu, 03 Dec 2026 11:00:00 +0000\n"
        b"Message-ID: <bob-1@example.net>\nSubject: lunch\n\nThursday at noon?\n"
    )
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=settings(spamd, store_url)
        ) as daemon,
    ):
        sent = await qmqp_send(daemon.qmqp, note, BOB.encode(), [ALICE.encode()])
        reply = await qmqp_send(daemon.qmqp, REPLY, ALICE.encode(), [BOB.encode()])
    assert sent.startswith("K") and reply.startswith("K"), (sent, reply)
    status = str(fields(mta.accepted[1])["X-Spam-Status"]).replace("\n", "")
    assert re.search(r"tests=\[AM\.PENPAL=-8\.000,", status), status
    with psycopg.connect(store_url, autocommit=True) as db:
        row = db.execute(
            "SELECT bspam_level FROM msgrcpt JOIN msgs USING (partition_tag, mail_id) "
            "WHERE message_id = '<reply-1@example.org>'"
        ).fetchone()
    assert row is not None and row[0] == pytest.approx(score_of(mta.accepted[1]), abs=0.001)


async def test_a_log_qsift_may_not_read_holds_the_message_back(
    tmp_path: Path, store_url: str, spamd: Spamd, caplog: pytest.LogCaptureFixture
) -> None:
    """The role qsift runs as was not granted the message log: Z, nothing delivered; the same message
    passes once the grant is made."""
    role = f"qsift_nolog{next(_databases)}"
    with psycopg.connect(store_url, autocommit=True) as db:
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        db.execute(sql.SQL("GRANT SELECT ON qsift_schema_version TO {}").format(sql.Identifier(role)))
        db.execute(
            sql.SQL("GRANT SELECT, INSERT, DELETE ON qsift_outcomes TO {}").format(sql.Identifier(role))
        )
    url = store_url.replace("postgres@", f"{role}@", 1)
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=settings(spamd, url)
        ) as daemon,
    ):
        held = await qmqp_send(daemon.qmqp, REPLY, ALICE.encode(), [BOB.encode()])
        assert mta.accepted == []
        with psycopg.connect(store_url, autocommit=True) as db:
            for table in ("maddr", "msgs", "msgrcpt"):
                db.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
                )
        passed = await qmqp_send(daemon.qmqp, REPLY, ALICE.encode(), [BOB.encode()])
    assert re.fullmatch(
        r"Z451 4\.3\.0 id=\S+ - cannot read the message log for pen pals: "
        r"PostgreSQL refused the pen pals lookup: permission denied for table maddr",
        held,
    ), held
    assert passed.startswith("K"), passed
    assert len(mta.accepted) == 1
