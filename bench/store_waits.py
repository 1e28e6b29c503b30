"""Where a message waits for the outcome record: the wall time of its two calls, SQLite vs PostgreSQL.

    .venv/bin/python -m bench.store_waits --messages 400 --concurrency 8 --mix small

One qsift daemon in this process (tests/harness.py, one worker, log_level 0) forwarding to the fake MTA,
`--concurrency` QMQP clients, first with the SQLite record under state_dir, then with `[store] url` on a
private PostgreSQL cluster with fsync on (tests/postgres_server.py). The record's `lookup` (before the
forward) and `record` (after the downstream's 250) are wrapped to time each call as the daemon's event
loop sees it: the statement, the pool, the commit's flush, and the wait for the loop and the GIL while
other messages are decoded in threads; inside the PostgreSQL calls, the wait for a pooled connection
(`pool getconn`) and each statement as psycopg awaits it (`statement`). bench/cluster.py measures
throughput with real `qsift serve` processes; this says where the difference goes. Clients, daemon and
fake MTA share one process, so the absolute figures are higher than a daemon's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.postgres_server import running_postgres

from bench.mail_mix import message_pool, stamped
from bench.passthrough import corpus
from qsift.store.outcomes import LocalOutcomes
from qsift.store.pg_migrate import migrate
from qsift.store.pg_outcomes import SharedOutcomes

#: Seconds each call took, by store and call.
Timings = dict[str, list[float]]


def timed(owner: Any, name: str, into: list[float]) -> None:
    """Replace `owner.name` (a coroutine method) with one that appends each call's wall time to `into`."""
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            into.append(time.perf_counter() - began)

    setattr(owner, name, wrapper)


async def run(messages: list[bytes], concurrency: int, directory: Path, top: dict[str, Any]) -> float:
    """Send every message from `concurrency` clients; messages per second."""
    async with (
        fake_mta() as mta,
        running_daemon(
            directory, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top={"log_level": 0, **top}
        ) as daemon,
    ):
        waiting = list(messages)

        async def client() -> None:
            while waiting:
                answer = await qmqp_send(
                    daemon.qmqp, waiting.pop(), b"a@example.org", [b"b@example.net"], timeout=120.0
                )
                assert answer.startswith("K"), answer

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        assert len(mta.accepted) == len(messages)
    return len(messages) / elapsed


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[int(len(ordered) * 0.95)]
    return (
        f"p50 {1000 * statistics.median(ordered):6.2f} ms, p95 {1000 * p95:6.2f} ms,"
        f" mean {1000 * statistics.fmean(ordered):6.2f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    timings: Timings = {}
    for store, owner in (("SQLite", LocalOutcomes), ("PostgreSQL", SharedOutcomes)):
        for call in ("lookup", "record"):
            timed(owner, call, timings.setdefault(f"{store} {call}", []))
    # Inside the PostgreSQL calls: the wait for a pooled connection, and the statement (send, the server's
    # work and commit, the answer) as psycopg awaits it.
    timed(psycopg_pool.AsyncConnectionPool, "getconn", timings.setdefault("  pool getconn", []))
    timed(psycopg.AsyncConnection, "execute", timings.setdefault("  statement", []))
    pool = (
        message_pool()
        if args.mix == "mail"
        else [(f"small/{i}", message) for i, message in enumerate(corpus(400))]
    )
    with (
        running_postgres(("fsync=on", "synchronous_commit=on")) as server,
        tempfile.TemporaryDirectory(dir="/var/tmp") as scratch,
    ):
        url = server.create_database("bench")
        with psycopg.connect(url, autocommit=True) as db:
            migrate(db)
        rates = {}
        shared = {"store": {"url": url, "max_connections": args.max_connections}}
        for store, top in (("SQLite", {}), ("PostgreSQL", shared)):
            (Path(scratch) / store).mkdir()
            messages = stamped(pool, args.messages, store)
            rates[store] = await run(messages, args.concurrency, Path(scratch) / store, top)
    print(
        f"{args.messages} messages ({args.mix} mix), {args.concurrency} concurrent QMQP clients, one daemon"
        f" in this process; PostgreSQL with fsync on, synchronous_commit"
        f" {'off' if args.async_commit else 'on'}, max_connections {args.max_connections}"
    )
    for store, rate in rates.items():
        print(f"{store:10} {rate:7.1f} msg/s")
    for name, seconds in timings.items():
        if not seconds:
            continue
        print(f"  {name:18} {len(seconds):5d} calls, {summary(seconds)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mix", choices=("mail", "small"), default="small")
    parser.add_argument("--max-connections", type=int, default=4, help="[store] max_connections (default 4)")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="the database with synchronous_commit = off: the record's commit no longer waits for the fsync",
    )
    asyncio.run(main(parser.parse_args()))
