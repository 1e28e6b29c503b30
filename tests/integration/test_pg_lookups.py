"""amavisd-new's lookup tables read by store/pg_lookups.py, against a real PostgreSQL (a private cluster,
tests/postgres_server.py): priority across key kinds, NULL falling through, booleans, wblist values, the
per-worker cache, a database that does not answer, and addresses built to break a statement."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from qsift.errors import StoreUnreachable
from qsift.model import Category
from qsift.store.amavisd_lookups import NOT_LISTED, FoundSettings, SenderListing
from qsift.store.pg_lookups import SqlLookups
from qsift.store.pg_migrate import migrate
from qsift.store.pg_worker import WorkerDatabase
from qsift.store.settings import StoreSettings
from tests.postgres_server import PostgresServer

_databases = itertools.count()
Db = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    url = postgres.create_database(f"lookups{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    return url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lookups(url: str, clock: Clock | None = None, ttl: float = 60.0) -> SqlLookups:
    settings = StoreSettings(url=url, connect_timeout=1.0, sql_lookups=True, sql_lookup_ttl=ttl)
    return SqlLookups(WorkerDatabase(settings), settings, clock or Clock())


def policy(db: Db, **columns: object) -> int:
    columns = columns or {"policy_name": "empty"}
    statement = sql.SQL("INSERT INTO policy ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))
    )
    row = db.execute(statement, list(columns.values())).fetchone()
    assert row is not None
    return int(row[0])


def user(db: Db, email: str, priority: int, policy_id: int) -> int:
    row = db.execute(
        "INSERT INTO users (email, priority, policy_id) VALUES (%s, %s, %s) RETURNING id",
        (email.encode(), priority, policy_id),
    ).fetchone()
    assert row is not None
    return int(row[0])


def listing(db: Db, rid: int, sender: str, priority: int, wb: str) -> None:
    row = db.execute("SELECT id FROM mailaddr WHERE email = %s", (sender.encode(),)).fetchone()
    if row is None:
        row = db.execute(
            "INSERT INTO mailaddr (email, priority) VALUES (%s, %s) RETURNING id", (sender.encode(), priority)
        ).fetchone()
    assert row is not None
    db.execute("INSERT INTO wblist (rid, sid, wb) VALUES (%s, %s, %s)", (rid, row[0], wb))


@pytest.fixture
def db(url: str) -> Iterator[Db]:
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


async def test_the_highest_priority_key_wins_across_key_kinds(url: str, db: Db) -> None:
    # README.lookups' recommended priorities, each row with its own kill level.
    for key, priority in [
        ("@.", 0),
        ("@.example.com", 2),
        ("@.sub.example.com", 3),
        ("@sub.example.com", 5),
        ("user@sub.example.com", 8),
        ("user+box@sub.example.com", 9),
    ]:
        user(db, key, priority, policy(db, spam_kill_level=float(priority)))
    found = lookups(url)
    try:
        results = await found.found(
            "",
            [
                "user+box@sub.example.com",
                "user+other@sub.example.com",
                "else@sub.example.com",
                "x@deep.sub.example.com",
                "x@example.com",
                "x@elsewhere.org",
            ],
            "+",
        )
    finally:
        await found.close()
    kill = {address: r.levels.get("kill_level") for address, r in results.items()}
    assert kill == {
        "user+box@sub.example.com": 9.0,
        "user+other@sub.example.com": 8.0,  # the extension cut by the delimiter
        "else@sub.example.com": 5.0,
        "x@deep.sub.example.com": 3.0,
        "x@example.com": 2.0,
        "x@elsewhere.org": 0.0,
    }
    assert found.round_trips == 1  # every recipient in one statement


async def test_null_falls_through_to_the_next_row_and_booleans_read_as_amavisd_reads_them(
    url: str, db: Db
) -> None:
    top = policy(db, spam_lover="Y", bypass_spam_checks=None, spam_tag2_level=None, message_size_limit=None)
    user(db, "user@example.com", 8, top)
    below = policy(
        db,
        spam_lover="N",
        virus_lover="n",
        banned_files_lover="x",  # any other character is true
        bad_header_lover=" ",
        unchecked_lover="0",
        bypass_spam_checks="T",
        bypass_virus_checks="F",
        spam_tag2_level=4.5,
        message_size_limit=1000,
    )
    user(db, "@example.com", 5, below)
    found = lookups(url)
    try:
        result = await found.found("a@b.example", ["user@example.com", "nobody@example.org"])
    finally:
        await found.close()
    settings = result["user@example.com"]
    assert settings.loves == {
        Category.SPAM: True,  # the higher row's Y, not the lower's N
        Category.VIRUS: False,
        Category.BANNED: True,
        Category.BAD_HEADER: False,
        Category.UNCHECKED: False,
    }
    assert settings.bypasses == {Category.SPAM: True, Category.VIRUS: False}
    assert settings.levels == {"tag2_level": 4.5}
    assert settings.message_size_limit == 1000
    assert settings.local is True
    assert result["nobody@example.org"].local is None  # no row: the TOML decides
    assert result["nobody@example.org"].loves == {}


async def test_the_catch_all_alone_does_not_make_a_recipient_local_unless_a_local_column_says(
    url: str, db: Db
) -> None:
    user(db, "@.", 0, policy(db))
    found = lookups(url)
    try:
        assert (await found.found("", ["x@example.org"]))["x@example.org"].local is None
        db.execute("ALTER TABLE users ADD COLUMN local char(1)")
        user(db, "@example.net", 5, policy(db))
        db.execute("UPDATE users SET local = 'N' WHERE email = '@example.net'::bytea")
        db.execute("UPDATE users SET local = 'Y' WHERE email = '@.'::bytea")
        result = await found.found("", ["x@example.net", "x@example.com"])
    finally:
        await found.close()
    assert result["x@example.net"].local is False
    assert result["x@example.com"].local is True


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # (sender key, priority, wb) for the one recipient
        ([("x@example.org", 9, "B")], SenderListing(blacklisted=True)),
        ([("x@example.org", 9, "W")], SenderListing(whitelisted=True)),
        ([("x@example.org", 9, "y")], SenderListing(whitelisted=True)),
        ([("x@example.org", 9, "odd")], SenderListing(whitelisted=True)),  # anything else
        ([("x@example.org", 9, "n ")], SenderListing(blacklisted=True)),
        ([("x@example.org", 9, " ")], NOT_LISTED),  # neutral, stops the search
        ([("x@example.org", 9, "-3.5")], SenderListing(score_boost=-3.5)),
        # the address (9) outranks the domain (5): its W decides
        ([("@example.org", 5, "B"), ("x@example.org", 9, "W")], SenderListing(whitelisted=True)),
        # a neutral address stops a blacklisted domain
        ([("@example.org", 5, "B"), ("x@example.org", 9, " ")], NOT_LISTED),
    ],
)
async def test_wblist_values(
    url: str,
    db: Db,
    rows: list[tuple[str, int, str]],
    expected: SenderListing,
) -> None:
    rid = user(db, "rcpt@example.com", 8, policy(db))
    for sender, priority, wb in rows:
        listing(db, rid, sender, priority, wb)
    found = lookups(url)
    try:
        result = await found.found("x@example.org", ["rcpt@example.com"])
    finally:
        await found.close()
    assert result["rcpt@example.com"].listing == expected


async def test_a_score_boost_goes_on_to_the_next_user_and_adds_up(url: str, db: Db) -> None:
    own = user(db, "rcpt@example.com", 8, policy(db))
    domain = user(db, "@example.com", 5, policy(db))
    catch_all = user(db, "@.", 0, policy(db))
    listing(db, own, "x@example.org", 9, "2")
    listing(db, domain, "@.example.org", 3, "1.5")
    listing(db, catch_all, "@.", 0, "B")
    found = lookups(url)
    try:
        result = await found.found("x@example.org", ["rcpt@example.com"])
    finally:
        await found.close()
    assert result["rcpt@example.com"].listing == SenderListing(blacklisted=True, score_boost=3.5)


async def test_lookups_are_cached_per_recipient_and_sender_until_the_ttl(url: str, db: Db) -> None:
    rid = user(db, "rcpt@example.com", 8, policy(db, spam_kill_level=3.0))
    listing(db, rid, "x@example.org", 9, "W")
    clock = Clock()
    found = lookups(url, clock, ttl=30.0)
    try:
        first = await found.found("x@example.org", ["rcpt@example.com"])
        again = await found.found("x@example.org", ["rcpt@example.com"])
        assert found.round_trips == 1
        assert again == first
        # Another sender: the settings are cached, only the lists are asked for.
        other = await found.found("y@example.org", ["rcpt@example.com"])
        assert found.round_trips == 2
        assert other["rcpt@example.com"].listing == NOT_LISTED
        assert other["rcpt@example.com"].levels == {"kill_level": 3.0}
        db.execute("UPDATE policy SET spam_kill_level = 9")
        clock.now += 29
        assert (await found.found("x@example.org", ["rcpt@example.com"])) == first
        clock.now += 2
        later = await found.found("x@example.org", ["rcpt@example.com"])
        assert later["rcpt@example.com"].levels == {"kill_level": 9.0}
        assert found.round_trips == 3
    finally:
        await found.close()


async def test_a_database_that_does_not_answer_fails_the_lookup_but_fresh_entries_still_answer(
    postgres: PostgresServer, url: str, db: Db
) -> None:
    user(db, "rcpt@example.com", 8, policy(db, spam_kill_level=3.0))
    db.close()
    found = lookups(url)
    try:
        cached = await found.found("", ["rcpt@example.com"])
        postgres.stop()
        try:
            assert (await found.found("", ["rcpt@example.com"])) == cached
            with pytest.raises(StoreUnreachable):
                await found.found("", ["other@example.com"])
        finally:
            postgres.start()
        # Back: the broken pooled connection is replaced without a restart, once the pool's reconnect
        # backoff (psycopg_pool: up to 10 s after a failed attempt) lets it try again.
        assert "other@example.com" in await _once_it_answers(found, "other@example.com")
    finally:
        await found.close()


async def _once_it_answers(found: SqlLookups, address: str, within: float = 20.0) -> dict[str, FoundSettings]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await found.found("", [address])
        except StoreUnreachable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_a_missing_table_fails_the_lookup(url: str, db: Db) -> None:
    db.execute("DROP TABLE wblist")
    found = lookups(url)
    try:
        with pytest.raises(StoreUnreachable, match="refused the lookup"):
            await found.found("", ["rcpt@example.com"])
    finally:
        await found.close()


HOSTILE = [
    "o'brien@example.com",
    "100%@example.com",
    "a_b@example.com",
    "back\\slash@example.com",
    '"quoted; DROP TABLE users; --"@example.com',
    "nul\0byte@example.com",
    "x" * 5000 + "@" + ".".join(["d"] * 200),
    "ünïcode@exämple.com",
    "",
    "no-at-sign",
    "@",
]


async def test_hostile_addresses_never_break_a_statement(url: str, db: Db) -> None:
    rid = user(db, "@example.com", 5, policy(db, spam_kill_level=1.0))
    listing(db, rid, "@.", 0, "B")
    found = lookups(url)
    try:
        result = await found.found(HOSTILE[0], HOSTILE, "+")
        assert set(result) == set(HOSTILE)
        for address in HOSTILE[:6]:
            assert result[address].levels == {"kill_level": 1.0}, address
            assert result[address].listing.blacklisted
        # % and _ are no wildcards: a key with them matches only itself.
        assert result["a_b@example.com"].user_ids == (rid,)
        for sender in HOSTILE:
            await found.found(sender, ["rcpt@example.com"])
    finally:
        await found.close()
    assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)
