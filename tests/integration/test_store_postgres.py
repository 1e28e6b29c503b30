"""`qsift store init` against a real PostgreSQL (a private cluster, tests/postgres_server.py): it creates
every table, a second run changes nothing, amavisd-new's tables are the documented ones column for column,
and an empty URL or a database that does not answer is one line and exit 2."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from qsift import cli, config
from qsift.store.pg_migrate import Migrated, migrate
from qsift.store.pg_schema import LATEST, MIGRATIONS
from qsift.store.postgres import worker_pool
from tests.postgres_server import PostgresServer

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

# amavisd-new 2.13, README.sql-pg (reference: amavisd-sql.md §1.2, §1.1): (column, type, NOT NULL), in order.
DOCUMENTED: dict[str, list[tuple[str, str, bool]]] = {
    "maddr": [
        ("id", "integer", True),
        ("partition_tag", "integer", False),
        ("email", "bytea", True),
        ("domain", "character varying(255)", True),
    ],
    "msgs": [
        ("partition_tag", "integer", True),  # NOT NULL through the primary key
        ("mail_id", "bytea", True),
        ("secret_id", "bytea", False),
        ("am_id", "character varying(20)", True),
        ("time_num", "integer", True),
        ("time_iso", "timestamp with time zone", True),
        ("sid", "integer", True),
        ("policy", "character varying(255)", False),
        ("client_addr", "character varying(255)", False),
        ("size", "integer", True),
        ("originating", "character(1)", True),
        ("content", "character(1)", False),
        ("quar_type", "character(1)", False),
        ("quar_loc", "character varying(255)", False),
        ("dsn_sent", "character(1)", False),
        ("spam_level", "real", False),
        ("message_id", "character varying(255)", False),
        ("from_addr", "character varying(255)", False),
        ("subject", "character varying(255)", False),
        ("host", "character varying(255)", True),
    ],
    "msgrcpt": [
        ("partition_tag", "integer", True),
        ("mail_id", "bytea", True),
        ("rseqnum", "integer", True),
        ("rid", "integer", True),
        ("is_local", "character(1)", True),
        ("content", "character(1)", True),
        ("ds", "character(1)", True),
        ("rs", "character(1)", True),
        ("bl", "character(1)", False),
        ("wl", "character(1)", False),
        ("bspam_level", "real", False),
        ("smtp_resp", "character varying(255)", False),
    ],
    "quarantine": [
        ("partition_tag", "integer", True),
        ("mail_id", "bytea", True),
        ("chunk_ind", "integer", True),
        ("mail_text", "bytea", True),
    ],
    # The lookup tables (§1.1).
    "policy": [
        ("id", "integer", True),
        ("policy_name", "character varying(32)", False),
        ("virus_lover", "character(1)", False),
        ("spam_lover", "character(1)", False),
        ("unchecked_lover", "character(1)", False),
        ("banned_files_lover", "character(1)", False),
        ("bad_header_lover", "character(1)", False),
        ("bypass_virus_checks", "character(1)", False),
        ("bypass_spam_checks", "character(1)", False),
        ("bypass_banned_checks", "character(1)", False),
        ("bypass_header_checks", "character(1)", False),
        ("virus_quarantine_to", "character varying(64)", False),
        ("spam_quarantine_to", "character varying(64)", False),
        ("banned_quarantine_to", "character varying(64)", False),
        ("unchecked_quarantine_to", "character varying(64)", False),
        ("bad_header_quarantine_to", "character varying(64)", False),
        ("clean_quarantine_to", "character varying(64)", False),
        ("archive_quarantine_to", "character varying(64)", False),
        ("spam_tag_level", "real", False),
        ("spam_tag2_level", "real", False),
        ("spam_tag3_level", "real", False),
        ("spam_kill_level", "real", False),
        ("spam_dsn_cutoff_level", "real", False),
        ("spam_quarantine_cutoff_level", "real", False),
        ("addr_extension_virus", "character varying(64)", False),
        ("addr_extension_spam", "character varying(64)", False),
        ("addr_extension_banned", "character varying(64)", False),
        ("addr_extension_bad_header", "character varying(64)", False),
        ("warnvirusrecip", "character(1)", False),
        ("warnbannedrecip", "character(1)", False),
        ("warnbadhrecip", "character(1)", False),
        ("newvirus_admin", "character varying(64)", False),
        ("virus_admin", "character varying(64)", False),
        ("banned_admin", "character varying(64)", False),
        ("bad_header_admin", "character varying(64)", False),
        ("spam_admin", "character varying(64)", False),
        ("spam_subject_tag", "character varying(64)", False),
        ("spam_subject_tag2", "character varying(64)", False),
        ("spam_subject_tag3", "character varying(64)", False),
        ("message_size_limit", "integer", False),
        ("banned_rulenames", "character varying(64)", False),
        ("disclaimer_options", "character varying(64)", False),
        ("forward_method", "character varying(64)", False),
        ("sa_userconf", "character varying(64)", False),
        ("sa_username", "character varying(64)", False),
    ],
    "users": [
        ("id", "integer", True),
        ("priority", "integer", True),
        ("policy_id", "integer", True),
        ("email", "bytea", True),
        ("fullname", "character varying(255)", False),
    ],
    "mailaddr": [
        ("id", "integer", True),
        ("priority", "integer", True),
        ("email", "bytea", True),
    ],
    "wblist": [
        ("rid", "integer", True),
        ("sid", "integer", True),
        ("wb", "character varying(10)", True),
    ],
}

# The keys README.sql-pg declares: (table, name, p(rimary)/u(nique), columns). PostgreSQL folds a UNIQUE
# constraint on the primary key's columns into the primary key, which takes the UNIQUE's name (msgs,
# msgrcpt): README.sql-pg's DDL loaded verbatim gives the same.
DOCUMENTED_KEYS = {
    ("maddr", "maddr_pkey", "p", ("id",)),
    ("maddr", "part_email", "u", ("partition_tag", "email")),
    ("msgs", "msgs_partition_mail", "p", ("partition_tag", "mail_id")),
    ("msgrcpt", "msgrcpt_partition_mail_rseq", "p", ("partition_tag", "mail_id", "rseqnum")),
    ("quarantine", "quarantine_pkey", "p", ("partition_tag", "mail_id", "chunk_ind")),
    ("policy", "policy_pkey", "p", ("id",)),
    ("users", "users_pkey", "p", ("id",)),
    ("users", "users_email_key", "u", ("email",)),
    ("mailaddr", "mailaddr_pkey", "p", ("id",)),
    ("mailaddr", "mailaddr_email_key", "u", ("email",)),
    ("wblist", "wblist_pkey", "p", ("rid", "sid")),
}

# README.sql-pg's indexes, and the two on mail_id alone that §1.6 of the reference says are needed.
DOCUMENTED_INDEXES = {
    ("msgs", "msgs_idx_sid", ("sid",)),
    ("msgs", "msgs_idx_mess_id", ("message_id",)),
    ("msgs", "msgs_idx_time_iso", ("time_iso",)),
    ("msgs", "msgs_idx_time_num", ("time_num",)),
    ("msgrcpt", "msgrcpt_idx_mail_id", ("mail_id",)),
    ("msgrcpt", "msgrcpt_idx_rid", ("rid",)),
    ("msgs", "msgs_idx_mail_id", ("mail_id",)),
    ("quarantine", "quarantine_idx_mail_id", ("mail_id",)),
}

QSIFT_TABLES = {"qsift_schema_version", "qsift_outcomes", "qsift_quarantine", "qsift_release"}
_names = (f"mail{n}" for n in itertools.count())


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    """A new, empty database for each test, in the module's cluster."""
    return postgres.create_database(next(_names))


def init(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    path = tmp_path / "qsift.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[store]\nurl = "{url}"\nconnect_timeout = 2\n')
    code = cli.main(["store", "init", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {str(name) for (name,) in rows}


def columns(db: psycopg.Connection[TupleRow], table: str) -> list[tuple[str, str, bool]]:
    rows = db.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [(str(name), str(kind), bool(not_null)) for name, kind, not_null in rows]


def keys(db: psycopg.Connection[TupleRow]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    rows = db.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype, "
        "array(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i) "
        "FROM pg_constraint c WHERE c.contype IN ('p', 'u') AND c.conrelid::regclass::text = ANY(%s)",
        (list(DOCUMENTED),),
    ).fetchall()
    return {(str(table), str(name), str(kind), tuple(columns)) for table, name, kind, columns in rows}


def indexes(db: psycopg.Connection[TupleRow]) -> set[tuple[str, str, tuple[str, ...]]]:
    """The indexes that back no key, with their columns."""
    rows = db.execute(
        "SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, "
        "array(SELECT attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o) "
        "FROM pg_index i WHERE NOT i.indisprimary AND NOT i.indisunique "
        "AND i.indrelid::regclass::text = ANY(%s)",
        (list(DOCUMENTED),),
    ).fetchall()
    return {(str(table), str(name), tuple(names)) for table, name, names in rows}


def test_init_on_an_empty_database_creates_every_table(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tables(url) == set()
    code, out, err = init(url, tmp_path, capsys)
    assert (code, err) == (0, [])
    assert out == [
        f"schema upgraded from an empty database to version {LATEST} "
        "(1: amavisd-new's maddr, msgs, msgrcpt and quarantine; qsift_outcomes; "
        "2: qsift_quarantine and qsift_release, the shared quarantine's own facts; "
        "3: amavisd-new's lookup tables policy, users, mailaddr and wblist)"
    ]
    assert tables(url) == set(DOCUMENTED) | QSIFT_TABLES
    with psycopg.connect(url) as db:
        versions = db.execute("SELECT version FROM qsift_schema_version ORDER BY version").fetchall()
        assert versions == [(migration.version,) for migration in MIGRATIONS]


def test_init_twice_changes_nothing_the_second_time(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(url, tmp_path, capsys)[0] == 0
    with psycopg.connect(url) as db:
        before = {table: columns(db, table) for table in tables(url)}, keys(db), indexes(db)
    assert init(url, tmp_path, capsys) == (0, [f"schema up to date (version {LATEST})"], [])
    with psycopg.connect(url) as db:
        after = {table: columns(db, table) for table in tables(url)}, keys(db), indexes(db)
        assert db.execute("SELECT count(*) FROM qsift_schema_version").fetchone() == (LATEST,)
    assert after == before


def test_amavisd_tables_are_the_documented_ones_column_for_column(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(url, tmp_path, capsys)[0] == 0
    with psycopg.connect(url) as db:
        for table, documented in DOCUMENTED.items():
            assert columns(db, table) == documented, table
        assert keys(db) == DOCUMENTED_KEYS
        assert indexes(db) == DOCUMENTED_INDEXES


def test_a_quarantined_body_round_trips_in_chunks_as_amavisd_reads_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes in, bytes out: the bytea columns take what amavisd-new's statements bind (§2.2, §1.5)."""
    assert init(url, tmp_path, capsys)[0] == 0
    body = bytes(range(256)) * 100  # 25600 bytes: two chunks
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    with psycopg.connect(url) as db:
        db.cursor().executemany(
            "INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text) VALUES (0, %s, %s, %s)",
            [(b"abcdefghijkl", n, chunk) for n, chunk in enumerate(chunks, 1)],
        )
        stored = db.execute(
            "SELECT string_agg(mail_text, ''::bytea ORDER BY chunk_ind) FROM quarantine WHERE mail_id = %s",
            (b"abcdefghijkl",),
        ).fetchone()
    assert stored == (body,)


def test_init_takes_over_an_amavisd_database_as_it_is(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(url) as db:
        db.execute(
            "CREATE TABLE maddr (id serial PRIMARY KEY, partition_tag integer DEFAULT 0, "
            "email bytea NOT NULL, domain varchar(255) NOT NULL, "
            "CONSTRAINT part_email UNIQUE (partition_tag, email))"
        )
        db.execute("INSERT INTO maddr (email, domain) VALUES ('\\x61406578'::bytea, 'test.example')")
    code, _, err = init(url, tmp_path, capsys)
    assert (code, err) == (0, [])
    with psycopg.connect(url) as db:
        assert db.execute("SELECT count(*) FROM maddr").fetchone() == (1,)
    assert tables(url) == set(DOCUMENTED) | QSIFT_TABLES


def test_two_nodes_running_init_at_once_apply_each_migration_once(url: str) -> None:
    results: list[Migrated] = []
    start = threading.Barrier(2)

    def node() -> None:
        with psycopg.connect(url, autocommit=True) as db:
            start.wait()
            results.append(migrate(db))

    threads = [threading.Thread(target=node) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The two may take turns, migration by migration; each is applied by one of them.
    applied = sorted(step.version for result in results for step in result.applied)
    assert applied == [migration.version for migration in MIGRATIONS]
    assert {result.after for result in results} == {LATEST}


def test_a_failed_migration_leaves_the_database_as_it_was(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(url) as db:
        db.execute("CREATE TABLE qsift_outcomes (something_else integer)")
    code, out, err = init(url, tmp_path, capsys)
    assert (code, out) == (1, [])
    assert len(err) == 1
    assert err[0].startswith("qsift: migration to version 1 failed, the database stays at version 0: ")
    assert 'relation "qsift_outcomes" already exists' in err[0]
    assert tables(url) == {"qsift_outcomes"}


def test_a_schema_newer_than_this_qsift_is_refused(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(url, tmp_path, capsys)[0] == 0
    with psycopg.connect(url) as db:
        db.execute(
            "INSERT INTO qsift_schema_version (version, summary) VALUES (%s, 'from the future')",
            (LATEST + 1,),
        )
    code, _, err = init(url, tmp_path, capsys)
    assert code == 1
    assert err == [
        f"qsift: the database's schema is at version {LATEST + 1}, newer than this qsift's {LATEST}: "
        "upgrade qsift"
    ]


def test_init_over_the_unix_socket(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    postgres.create_database("over_socket")
    assert init(postgres.socket_url("over_socket"), tmp_path, capsys)[0] == 0
    assert tables(postgres.url("over_socket")) >= QSIFT_TABLES


def test_an_unreachable_database_is_one_line_and_exit_2(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"postgresql://postgres@/mail?host={tmp_path}&port={postgres.port}"
    code, out, err = init(closed, tmp_path, capsys)
    assert (code, out, len(err)) == (2, [], 1)
    assert err[0].startswith(
        "qsift: cannot use PostgreSQL ([store] url, database mail): connection to server"
    )
    code, out, err = init(postgres.url("no_such_database"), tmp_path, capsys)
    assert (code, out) == (2, [])
    assert err == [
        "qsift: cannot use PostgreSQL ([store] url, database no_such_database): connection to server at "
        f'"127.0.0.1", port {postgres.port} failed: FATAL:  database "no_such_database" does not exist'
    ]


def test_an_empty_url_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init("", tmp_path, capsys)
    assert (code, out) == (2, [])
    assert err == ["qsift: [store] url is empty: the state stays in SQLite, nothing to set up"]


def test_a_bad_url_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init("postgresql://db.example:5432", tmp_path, capsys)
    assert (code, out, len(err)) == (2, [], 1)
    assert err[0].startswith("qsift: configuration error: ")
    assert "[store] url: 'postgresql://db.example:5432' names no database" in err[0]


async def test_a_worker_pool_opens_after_the_fork_and_serves(url: str) -> None:
    settings = config.loads(f'[store]\nurl = "{url}"\nmax_connections = 2\n').store
    pool = worker_pool(settings)
    await pool.open(wait=True)
    try:
        async with pool.connection() as db:
            row = await (await db.execute("SELECT 1")).fetchone()
        assert row == (1,)
        assert pool.max_size == 2
    finally:
        await pool.close()
