"""Per-recipient settings and sender lists from amavisd-new's lookup tables, end to end: a real qsift daemon
with `[store] sql_lookups`, a private PostgreSQL (tests/postgres_server.py), a real spamd, the fake MTA.

A recipient whose wblist row whitelists the sender gets GTUBE while another is refused; a blacklisting row
or a score boost makes clean mail spam; SQL's kill level beats the TOML's; and a lookup PostgreSQL refuses
answers Z, until the table is back.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qsift.store.pg_migrate import migrate
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.integration.test_destinies import SENDER
from tests.integration.test_recipient_policy import CLEAN, header, send
from tests.postgres_server import PostgresServer
from tests.spamd_daemon import GTUBE, running_spamd, spamd_path

BOB, CAROL, DAVE = b"bob@example.net", b"carol@example.org", b"dave@example.org"
SPAM = (
    b"From: alice@example.org\nTo: bob@example.net\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n"
    b"Subject: offer\n\n" + GTUBE + b"\n"
)
_databases = itertools.count()
needs_spamd = pytest.mark.skipif(spamd_path() is None, reason="spamd is not installed (spamassassin)")


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    """A database at the latest schema, with bob whitelisting alice, carol blacklisting the sender's
    domain, dave adding 10 points to alice's mail, and dave's own kill level."""
    url = postgres.create_database(f"lookups_e2e{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
        db.execute("INSERT INTO policy (id, policy_name) VALUES (1, 'default')")
        db.execute("INSERT INTO policy (id, policy_name, spam_kill_level) VALUES (2, 'dave', 8.0)")
        db.execute(
            "INSERT INTO users (id, email, priority, policy_id) VALUES "
            "(1, 'bob@example.net'::bytea, 8, 1), (2, 'carol@example.org'::bytea, 8, 1), "
            "(3, 'dave@example.org'::bytea, 8, 2)"
        )
        db.execute(
            "INSERT INTO mailaddr (id, email, priority) VALUES "
            "(1, 'alice@example.org'::bytea, 8), (2, '@.example.org'::bytea, 3)"
        )
        db.execute("INSERT INTO wblist (rid, sid, wb) VALUES (1, 1, 'W'), (2, 2, 'B'), (3, 1, '10')")
    return url


def settings(url: str, **store: Any) -> dict[str, Any]:
    return {"store": {"url": url, "connect_timeout": 1.0, "sql_lookups": True, **store}}


@needs_spamd
async def test_a_whitelisting_row_lets_spam_through_to_its_recipient_alone(
    tmp_path: Path, store_url: str
) -> None:
    with running_spamd() as spamd:
        spam = {"type": "spamd", "address": spamd.unix_address}
        answer, mail, _ = await send(tmp_path, SPAM, [BOB, CAROL], spam=spam, **settings(store_url))
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, .*, but 1 REJECT", answer), answer
    assert [d.recipients for d in mail] == [[BOB]]
    got = header(mail[0])
    assert got["Subject"] == "offer"  # not spam for bob: no tag
    assert got.get("X-Spam-Flag") is None  # at most 0 for a whitelisted sender: under tag_level
    assert listed_in_the_log(store_url) == {("bob@example.net", "N", "Y"), ("carol@example.org", "Y", "N")}


@needs_spamd
async def test_a_blacklisting_row_or_a_score_boost_makes_clean_mail_spam(
    tmp_path: Path, store_url: str
) -> None:
    with running_spamd() as spamd:
        spam = {"type": "spamd", "address": spamd.unix_address}
        answer, mail, notices = await send(
            tmp_path, CLEAN, [BOB, CAROL, DAVE], spam=spam, **settings(store_url)
        )
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, .*, but 2 REJECT", answer), answer
    assert [d.recipients for d in mail] == [[BOB]]
    # carol: blacklisted, so spam at 64 points, over the DSN cutoff (10): no DSN for her.
    assert all(b"carol@example.org" not in n.body for n in notices)
    assert listed_in_the_log(store_url) == {
        ("bob@example.net", "N", "Y"),
        ("carol@example.org", "Y", "N"),
        ("dave@example.org", "N", "N"),  # a score boost is neither
    }


def listed_in_the_log(url: str) -> set[tuple[str, str, str]]:
    """The message log's (recipient, bl, wl) of every msgrcpt row (amavisd-new's columns)."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT convert_from(m.email, 'UTF8'), r.bl, r.wl FROM msgrcpt r JOIN maddr m ON m.id = r.rid"
        ).fetchall()
    return {(str(email), str(bl), str(wl)) for email, bl, wl in rows}


async def test_sql_settings_beat_the_toml_without_any_scanner(tmp_path: Path, store_url: str) -> None:
    # The TOML makes example.org's mail oversized at 10 bytes; dave's policy row says nothing about
    # size (NULL), so the TOML's limit stands for him, while carol's row lifts it (0: no limit).
    with psycopg.connect(store_url, autocommit=True) as db:
        db.execute("INSERT INTO policy (id, policy_name, message_size_limit) VALUES (3, 'big', 0)")
        db.execute("UPDATE users SET policy_id = 3 WHERE email = 'carol@example.org'::bytea")
        db.execute("DELETE FROM wblist WHERE rid = 2")  # carol's blacklisting is another test's
    policy = {"recipient": [{"match": ["example.org"], "message_size_limit": 10}]}
    answer, mail, _ = await send(
        tmp_path, CLEAN, [CAROL, DAVE], policy=policy, destiny={"oversized": "reject"}, **settings(store_url)
    )
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, .*, but 1 REJECT", answer), answer
    assert [d.recipients for d in mail] == [[CAROL]]


async def test_a_lookup_postgresql_refuses_answers_z_until_it_works_again(
    tmp_path: Path, store_url: str
) -> None:
    with psycopg.connect(store_url, autocommit=True) as db:
        db.execute("ALTER TABLE users RENAME TO users_away")
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=settings(store_url)
        ) as daemon,
    ):
        port = daemon.ports["qmqp"]
        answer = await qmqp_send(port, CLEAN, SENDER, [BOB])
        assert re.fullmatch(
            r"Z451 4\.3\.0 id=\S+ - cannot read the per-recipient settings from SQL: "
            r"PostgreSQL refused the lookup: .*users.*",
            answer,
        ), answer
        assert mta.deliveries == []
        with psycopg.connect(store_url, autocommit=True) as db:
            db.execute("ALTER TABLE users_away RENAME TO users")
        answer = await qmqp_send(port, CLEAN, SENDER, [BOB])
        assert answer.startswith("K250 2.0.0 Ok"), answer
        assert [d.recipients for d in mta.deliveries] == [[BOB]]
