"""The outcome record shared in PostgreSQL (issue 13): two qsift nodes on loopback, one private cluster
(tests/postgres_server.py), the fake MTA counting deliveries.

A retry that lands on the other node is answered from the record and not delivered again, by QMQP and
through real qsift-queue; with PostgreSQL stopped every answer is K or Z (never D, never a dropped
connection), and once it is back the same daemons pass mail again. A daemon whose database does not
answer, or is not at the latest schema, refuses to start in one line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from qsift.store.pg_migrate import migrate
from qsift.store.pg_schema import LATEST
from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import RunningDaemon, free_port, qmqp_send, running_daemon
from tests.integration.test_qsift_queue import QSIFT_QUEUE, run_queue, servers_env
from tests.integration.test_start_checks import start_until_ready_or_exit
from tests.integration.test_workers import config_text
from tests.postgres_server import PostgresServer

SENDER = b"alice@example.org"
RECIPIENTS = [b"bob@example.net", b"carol@example.net"]
MESSAGE = b"From: alice@example.org\nSubject: shared %d\n\nhello %d\n"
_databases = itertools.count()


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    """A fresh database at the latest schema (`qsift store init`)."""
    url = postgres.create_database(f"outcomes{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    return url


def store(url: str) -> dict[str, Any]:
    return {"store": {"url": url, "connect_timeout": 1.0}}


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, url: str, mta: FakeMta
) -> AsyncIterator[tuple[RunningDaemon, RunningDaemon]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    forward = f"smtp:[127.0.0.1]:{mta.port}"
    async with (
        running_daemon(tmp_path / "a", forward, protocols=("qmqp",), top=store(url)) as a,
        running_daemon(tmp_path / "b", forward, protocols=("qmqp",), top=store(url)) as b,
    ):
        yield a, b


def recorded(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM qsift_outcomes").fetchone()
    return int(row[0]) if row is not None else 0


async def test_a_message_delivered_by_one_node_is_answered_k_by_the_other(
    tmp_path: Path, store_url: str
) -> None:
    async with fake_mta() as mta, two_nodes(tmp_path, store_url, mta) as (a, b):
        first = await qmqp_send(a.qmqp, MESSAGE % (1, 1), SENDER, RECIPIENTS)
        again = await qmqp_send(b.qmqp, MESSAGE % (1, 1), SENDER, RECIPIENTS)
        other = await qmqp_send(b.qmqp, MESSAGE % (2, 2), SENDER, RECIPIENTS)
    assert first.startswith("K"), first
    assert again.startswith("K") and "already delivered" in again, again
    assert other.startswith("K") and "already" not in other, other
    assert len(mta.accepted) == 2
    assert recorded(store_url) == 4  # two messages, two recipients each


async def test_only_the_recipients_not_yet_delivered_go_out_from_the_other_node(
    tmp_path: Path, store_url: str
) -> None:
    async with fake_mta() as mta, two_nodes(tmp_path, store_url, mta) as (a, b):
        first = await qmqp_send(a.qmqp, MESSAGE % (3, 3), SENDER, RECIPIENTS[:1])
        wider = await qmqp_send(b.qmqp, MESSAGE % (3, 3), SENDER, RECIPIENTS)
    assert first.startswith("K") and wider.startswith("K"), (first, wider)
    assert [d.recipients for d in mta.accepted] == [RECIPIENTS[:1], RECIPIENTS[1:]]


@pytest.mark.skipif(QSIFT_QUEUE is None, reason="qsift-queue is not installed next to the interpreter")
async def test_qsift_queue_retry_after_node_a_forwarded_is_delivered_once(
    tmp_path: Path, store_url: str
) -> None:
    """The issue's case: the client gives up on node A after A forwarded (the downstream is slow to
    answer the dot), qmail retries, the retry lands on node B, which answers K from the record."""
    envelope = b"Falice@example.org\0Tbob@example.net\0\0"
    message = MESSAGE % (4, 4)
    async with fake_mta(Script(final_delay=1.5)) as mta, two_nodes(tmp_path, store_url, mta) as (a, b):
        gave_up = await asyncio.to_thread(
            run_queue, tmp_path, servers_env(f"127.0.0.1:{a.qmqp}", QSIFT_TIMEOUT="0.5"), message, envelope
        )
        deadline = time.monotonic() + 15
        while recorded(store_url) < 1:  # node A records at the downstream's 250
            assert time.monotonic() < deadline, "node A never recorded its delivery"
            await asyncio.sleep(0.05)
        retry = await asyncio.to_thread(
            run_queue, tmp_path, servers_env(f"127.0.0.1:{b.qmqp}"), message, envelope
        )
    assert gave_up.code == 74, gave_up.stderr  # no answer within the timeout: qmail tries again later
    assert retry.code == 0, retry.stderr
    assert len(mta.accepted) == 1


async def test_postgresql_stopped_and_restarted_under_load(
    tmp_path: Path, store_url: str, postgres: PostgresServer
) -> None:
    """A steady load of distinct messages, two recipients each, from 4 concurrent senders through two
    nodes; PostgreSQL stops (fast: in-flight statements fail) once 20 are delivered, with messages in
    flight, and starts again 3 s later, while the senders go on. A message answered Z goes to the back of
    its sender's queue, as qmail retries later; nobody restarts a daemon. Every answer is K or Z (never
    D, never a dropped connection), and in the end each recipient of each message was delivered exactly
    once: counted per message and recipient at the downstream, not only in total."""
    count, senders = 80, 4
    pending: collections.deque[int] = collections.deque(range(count))
    answers: dict[int, list[str]] = {n: [] for n in range(count)}
    in_flight_at_stop: set[int] = set()
    sending: set[int] = set()
    twenty_delivered = asyncio.Event()
    #: Z answers to sends begun after PostgreSQL was back: the pool's reconnect backoff.
    z_after_restart = 0
    down_since = up_at = 0.0
    began = time.monotonic()

    async def sender(nodes: tuple[RunningDaemon, RunningDaemon]) -> None:
        nonlocal z_after_restart
        while pending or sending:
            if not pending:  # the rest are in other senders' hands and may come back
                await asyncio.sleep(0.05)
                continue
            n = pending.popleft()
            sending.add(n)
            node = nodes[(n + len(answers[n])) % 2]  # a retry goes to the other node
            restarted = up_at > 0
            answer = await qmqp_send(node.qmqp, MESSAGE % (100 + n, n), SENDER, RECIPIENTS)
            sending.discard(n)
            answers[n].append(answer)
            if sum(tries[-1].startswith("K") for tries in answers.values() if tries) >= 20:
                twenty_delivered.set()
            if not answer.startswith("K"):
                z_after_restart += restarted
                pending.append(n)
                await asyncio.sleep(0.1)
            assert time.monotonic() - began < 60, {m: answers[m] for m in pending}

    async def outage() -> None:
        nonlocal down_since, up_at
        await twenty_delivered.wait()
        in_flight_at_stop.update(sending)
        down_since = time.monotonic()
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(postgres.start)
        up_at = time.monotonic()

    async with fake_mta() as mta, two_nodes(tmp_path, store_url, mta) as nodes:
        try:
            await asyncio.gather(outage(), *(sender(nodes) for _ in range(senders)))
        finally:
            with contextlib.suppress(RuntimeError):
                await asyncio.to_thread(postgres.start)  # the module's cluster is shared
    said = [answer for tries in answers.values() for answer in tries]
    assert all(answer[:1] in ("K", "Z") for answer in said), [a for a in said if a[:1] not in ("K", "Z")]
    refused = [answer for answer in said if answer.startswith("Z")]
    assert refused, "no message met the outage"
    assert all("cannot read the shared outcome record" in answer for answer in refused), refused
    assert all(tries[-1].startswith("K") for tries in answers.values())
    delivered = collections.Counter(
        (int(d.body.rsplit(b"hello ", 1)[1]), recipient) for d in mta.accepted for recipient in d.recipients
    )
    assert delivered == {(n, r): 1 for n in range(count) for r in RECIPIENTS}, [
        key for key, times in delivered.items() if times != 1
    ]
    first_try_z = sum(1 for tries in answers.values() if tries[0].startswith("Z"))
    print(
        f"\nPostgreSQL stop/start under load: {count} messages x {len(RECIPIENTS)} recipients from"
        f" {senders} senders through 2 nodes, {len(in_flight_at_stop)} in flight at the stop, down"
        f" {up_at - down_since:.1f} s; {len(refused)} answers Z ({first_try_z} messages"
        f" at their first try, {z_after_restart} after the restart), {len(said)} sends in all,"
        f" {time.monotonic() - began:.1f} s;"
        f" each of {len(delivered)} deliveries exactly once"
    )


def test_forked_workers_open_their_own_connections_and_say_ready(tmp_path: Path, store_url: str) -> None:
    """The parent's start check closes its connection before the fork; each worker says ready only after
    a round trip through its own pool."""
    code, log = serve(tmp_path, f'[store]\nurl = "{store_url}"\n')
    assert code is None, log
    assert "qsift ready" in log


async def test_a_record_that_cannot_be_written_after_the_forward_still_answers_k(
    tmp_path: Path, store_url: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL goes away while the downstream is taking the message: the downstream has it, so K is
    still the truth (a Z would make the retry a duplicate for sure); the log says it was not recorded."""
    async with fake_mta(Script(final_delay=1.0)) as mta, two_nodes(tmp_path, store_url, mta) as (a, _):
        sending = asyncio.create_task(qmqp_send(a.qmqp, MESSAGE % (5, 5), SENDER, RECIPIENTS[:1]))
        try:
            await asyncio.wait_for(mta.data_received.wait(), 10)
            await asyncio.to_thread(postgres.stop)
            answer = await sending
        finally:
            await asyncio.to_thread(postgres.start)
    assert answer.startswith("K"), answer
    assert len(mta.accepted) == 1
    assert "delivered but not recorded for dedupe" in caplog.text
    assert recorded(store_url) == 0


def test_the_daemon_refuses_to_start_on_an_old_schema(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database(f"empty{next(_databases)}")
    code, log = serve(tmp_path, f'[store]\nurl = "{url}"\n')
    assert code == 2, log
    assert "qsift ready" not in log
    refusal = [line for line in log.splitlines() if line.startswith("qsift: cannot start:")]
    assert refusal == [
        f"qsift: cannot start: the database's schema is at version 0, not {LATEST}: run `qsift store init`"
    ], log


def test_the_daemon_refuses_to_start_when_postgresql_does_not_answer(
    tmp_path: Path,
) -> None:
    code, log = serve(tmp_path, f'[store]\nurl = "postgresql://postgres@127.0.0.1:{free_port()}/mail"\n')
    assert code == 2, log
    refusal = [line for line in log.splitlines() if line.startswith("qsift: cannot start:")]
    assert len(refusal) == 1, log
    assert "cannot use PostgreSQL ([store] url, database mail): " in refusal[0], log
    assert "refused" in refusal[0], log


def serve(tmp_path: Path, extra: str) -> tuple[int | None, str]:
    state = tmp_path / "state"
    config_file = tmp_path / "qsift.toml"
    text = config_text(state, f"smtp:[127.0.0.1]:{free_port()}", free_port())
    config_file.write_text(text + extra)
    return start_until_ready_or_exit(config_file, tmp_path / "log", timeout=30)


async def test_the_shared_record_keeps_the_first_delivery_and_is_purged_by_one_node_at_a_time(
    store_url: str,
) -> None:
    from qsift.store.pg_outcomes import SharedOutcomes
    from qsift.store.pg_worker import WorkerDatabase
    from qsift.store.settings import StoreSettings

    record = SharedOutcomes(WorkerDatabase(StoreSettings(url=store_url, connect_timeout=1.0)))
    try:
        await record.record(["k1", "k2"], "first", "250 ok", 100.0)
        await record.record(["k2", "k3"], "second", "250 ok", 200.0)
        found = await record.lookup(["k1", "k2", "k3", "k4"], 0.0)
        assert {key: (r.mail_id, r.created) for key, r in found.items()} == {
            "k1": ("first", 100.0),
            "k2": ("first", 100.0),
            "k3": ("second", 200.0),
        }
        assert set(await record.lookup(["k1", "k3"], 150.0)) == {"k3"}
        with psycopg.connect(store_url, autocommit=True) as other_node:
            other_node.execute("SELECT pg_advisory_lock(%s)", (0x71736F70,))
            assert await record.purge(150.0) == 0  # the other node is purging
            # Unlocked before the connection goes: a closing backend lets go of its locks a little later.
            other_node.execute("SELECT pg_advisory_unlock(%s)", (0x71736F70,))
        assert await record.purge(150.0) == 2
        assert set(await record.lookup(["k1", "k2", "k3"], 0.0)) == {"k3"}
    finally:
        await record.close()


async def test_a_database_turned_read_only_means_try_later_until_it_takes_writes_again(
    tmp_path: Path, store_url: str, postgres: PostgresServer
) -> None:
    """As after a failover that left the URL on a standby: the workers' connections go, and a new one to
    a read-only server is refused (target_session_attrs), so nothing is forwarded whose record would be
    refused."""
    database = store_url.rsplit("/", 1)[1]
    read_only = sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}")
    async with fake_mta() as mta, two_nodes(tmp_path, store_url, mta) as (a, _):
        before = await qmqp_send(a.qmqp, MESSAGE % (6, 6), SENDER, RECIPIENTS[:1])
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(read_only.format(sql.Identifier(database), sql.SQL("on")))
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
            )
            refused = await qmqp_send(a.qmqp, MESSAGE % (7, 7), SENDER, RECIPIENTS[:1])
            admin.execute(read_only.format(sql.Identifier(database), sql.SQL("off")))
        deadline = time.monotonic() + 30
        while not (again := await qmqp_send(a.qmqp, MESSAGE % (7, 7), SENDER, RECIPIENTS[:1])).startswith(
            "K"
        ):
            assert again.startswith("Z") and time.monotonic() < deadline, again
            await asyncio.sleep(0.2)
    assert before.startswith("K"), before
    assert refused.startswith("Z") and "cannot read the shared outcome record" in refused, refused
    assert len(mta.accepted) == 2
    assert recorded(store_url) == 2


def test_the_daemon_refuses_to_start_on_a_read_only_database(tmp_path: Path, store_url: str) -> None:
    database = store_url.rsplit("/", 1)[1]
    with psycopg.connect(store_url, autocommit=True) as db:
        db.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(database)
            )
        )
    code, log = serve(tmp_path, f'[store]\nurl = "{store_url}"\n')
    assert code == 2, log
    refusal = [line for line in log.splitlines() if line.startswith("qsift: cannot start:")]
    assert refusal == [
        "qsift: cannot start: the database is read-only (a standby?): point [store] url at the primary"
    ], log
