"""SharedQuarantine's calls against a real cluster: the same answers as the local Quarantine gives."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import psycopg
import pytest

from qsift.errors import SpoolError, StoreUnreachable
from qsift.store.amavisd_forms import CHUNK_SIZE
from qsift.store.pg_migrate import migrate
from qsift.store.pg_quarantine import SharedQuarantine
from qsift.store.quarantine import KeptFacts
from qsift.store.settings import StoreSettings
from tests.postgres_server import PostgresServer

_databases = itertools.count()
# An address whose bytes are not UTF-8 (surrogateescape), as the protocol layers pass them on.
ODD = b"j\xf6rg@example.org".decode("utf-8", "surrogateescape")


@pytest.fixture
def shared(postgres: PostgresServer) -> Iterator[SharedQuarantine]:
    url = postgres.create_database(f"pgq{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    quarantine = SharedQuarantine(StoreSettings(url=url, connect_timeout=1.0), "node-a.example")
    yield quarantine
    quarantine.close()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 200, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 5])
def test_a_message_comes_back_byte_for_byte(shared: SharedQuarantine, size: int) -> None:
    message = bytes(n % 256 for n in range(size))
    pieces = [message[i : i + 1000] for i in range(0, len(message), 1000)]
    entry = shared.store("msg000000001", "virus", "INFECTED: Eicar", "", [ODD, "b@x.org"], pieces, 1e9)
    assert (entry.size, entry.file) == (size, "msg000000001")
    assert shared.read("msg000000001") == ("", (ODD, "b@x.org"), message)
    assert shared.get("msg000000001") == entry


@pytest.mark.parametrize(
    ("category", "recipient"),
    [("virus", "b@x.org\nX-Envelope-To: <thief@x.org>"), ("virus", "b@x.org\r"), ("../virus", "b@x.org")],
)
def test_a_line_break_in_an_address_or_a_bad_category_keeps_nothing(
    shared: SharedQuarantine, category: str, recipient: str
) -> None:
    """The same last line of defence as the local quarantine: the envelope fields written before the
    message cannot be forged."""
    with pytest.raises(ValueError, match=r"line break or NUL|invalid category"):
        shared.store("forged000001", category, "x", "a@x.org", [recipient], [b"m"], 1.0)
    assert shared.list() == []


def test_storing_again_replaces_the_copy_and_a_retry_finds_it(shared: SharedQuarantine) -> None:
    facts = KeptFacts(("D",), (True,), 7.5, "192.0.2.1")
    shared.store("retry0000001", "spam", "score 7.5", "a@x.org", ["b@x.org"], [b"one"], 100.0, "fp", facts)
    shared.store("retry0000001", "spam", "score 7.5", "a@x.org", ["b@x.org"], [b"two"], 101.0, "fp", facts)
    assert shared.read("retry0000001")[2] == b"two"
    earlier = shared.kept_before("fp", "a@x.org", 100.5)
    assert earlier is not None and earlier.mail_id == "retry0000001"
    assert shared.kept_before("fp", "other@x.org", 0) is None
    assert shared.kept_before("fp", "a@x.org", 102) is None
    assert [e.mail_id for e in shared.list(category="spam")] == ["retry0000001"]
    assert shared.list(category="virus") == []


def test_releases_are_recorded_once_per_recipient(shared: SharedQuarantine) -> None:
    shared.store("rel000000001", "banned", "x", "a@x.org", ["b@x.org", "c@x.org"], [b"m"], 1.0)
    shared.mark_released("rel000000001", ["c@x.org"])
    shared.mark_released("rel000000001", ["c@x.org", "b@x.org"])
    entry = shared.get("rel000000001")
    assert entry is not None and entry.released == ("c@x.org", "b@x.org")
    with pytest.raises(KeyError):
        shared.mark_released("nosuchid0001", ["b@x.org"])
    with pytest.raises(KeyError):
        shared.read("nosuchid0001")
    assert shared.get("nosuchid0001") is None


def test_purge_takes_every_row_of_what_is_old_and_nothing_else(shared: SharedQuarantine) -> None:
    shared.store("old000000001", "virus", "x", "a@x.org", ["b@x.org"], [b"m" * 40000], 10.0)
    shared.store("new000000001", "virus", "x", "a@x.org", ["b@x.org"], [b"m"], 1000.0)
    shared.mark_released("old000000001", ["b@x.org"])
    assert shared.purge(500.0) == 1
    assert [e.mail_id for e in shared.list()] == ["new000000001"]
    assert shared.purge(500.0) == 0


def test_one_node_purges_at_a_time(shared: SharedQuarantine) -> None:
    shared.store("old000000002", "virus", "x", "a@x.org", ["b@x.org"], [b"m"], 10.0)
    shared.list()  # opens the pool
    url = shared._pool.conninfo
    assert isinstance(url, str)
    with psycopg.connect(url, autocommit=True) as other_node:
        other_node.execute("SELECT pg_advisory_lock(%s)", (0x71737170,))  # another node is purging
        assert shared.purge(500.0) == 0
        assert [e.mail_id for e in shared.list()] == ["old000000002"]
    assert shared.purge(500.0) == 1  # its session ended, and the lock with it


def test_a_database_not_at_the_latest_schema_is_refused(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"pgq{next(_databases)}")
    quarantine = SharedQuarantine(StoreSettings(url=url, connect_timeout=1.0), "node-a.example")
    try:
        with pytest.raises(StoreUnreachable, match="qsift store init"):
            quarantine.list()
    finally:
        quarantine.close()


def test_postgresql_down_is_store_unreachable_and_passes_once_it_is_back(
    shared: SharedQuarantine, postgres: PostgresServer
) -> None:
    """StoreUnreachable is a SpoolError: the pipeline answers it Z, as a full disk (test_quarantine.py)."""
    shared.store("up0000000001", "virus", "x", "a@x.org", ["b@x.org"], [b"m"], 1.0)
    postgres.stop()
    try:
        with pytest.raises(SpoolError, match="PostgreSQL"):
            shared.store("down00000001", "virus", "x", "a@x.org", ["b@x.org"], [b"m"], 2.0)
    finally:
        postgres.start()
    deadline = time.monotonic() + 30
    while True:  # the pool reconnects in the background, with backoff
        try:
            shared.store("down00000001", "virus", "x", "a@x.org", ["b@x.org"], [b"m"], 2.0)
            break
        except StoreUnreachable:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert [e.mail_id for e in shared.list()] == ["down00000001", "up0000000001"]
