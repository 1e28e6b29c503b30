"""The outcome record in SQLite vs PostgreSQL, quickly: round trips, CPU and latency per message.

    .venv/bin/python -m bench.outcome_store --messages 100

One qsift daemon in this process (tests/harness.py) forwarding to the fake MTA, QMQP messages sent one
after the other, first with the SQLite record under state_dir, then with `[store] url` on a private
PostgreSQL cluster (tests/postgres_server.py, fsync off: this measures the statements, not a disk).
Prints per message: the mean and p50/p99 latency, this process's CPU (daemon, client and fake MTA
together, so only the difference means anything), the CPU of the PostgreSQL backends serving the run, and
the statements sent to PostgreSQL (each one round trip, the pool's connection checks included).
Not a benchmark: docs/benchmarks.md measures throughput with `qsift serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.postgres_server import PostgresServer, running_postgres

from qsift.store.pg_migrate import migrate

MESSAGE = b"From: alice@example.org\nSubject: bench %d\n\n%s\n"
RECIPIENTS = [b"bob@example.net", b"carol@example.net"]


class RoundTrips:
    """Counts AsyncConnection.execute calls: in autocommit each is one round trip to the server."""

    def __init__(self) -> None:
        self.count = 0
        original = psycopg.AsyncConnection.execute

        async def counted(connection: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(connection, *args, **kwargs)

        psycopg.AsyncConnection.execute = counted  # type: ignore[method-assign,assignment]


async def run(
    messages: int, top: dict[str, Any], directory: Path, pg_cpu: Callable[[], float]
) -> dict[str, float]:
    latencies = []
    async with (
        fake_mta() as mta,
        running_daemon(directory, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
    ):
        body = b"x" * 4000
        await qmqp_send(daemon.qmqp, MESSAGE % (-1, body), b"alice@example.org", RECIPIENTS)  # warm up
        cpu, server = time.process_time(), pg_cpu()
        for n in range(messages):
            started = time.perf_counter()
            answer = await qmqp_send(daemon.qmqp, MESSAGE % (n, body), b"alice@example.org", RECIPIENTS)
            latencies.append(time.perf_counter() - started)
            assert answer.startswith("K"), answer
        cpu, server = time.process_time() - cpu, pg_cpu() - server
        assert len(mta.accepted) == messages + 1
    latencies.sort()
    return {
        "mean ms": 1000 * statistics.fmean(latencies),
        "p50 ms": 1000 * latencies[len(latencies) // 2],
        "p99 ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "CPU ms (this process)": 1000 * cpu / messages,
        "CPU ms (PostgreSQL)": 1000 * server / messages,
    }


def backend_cpu(server: PostgresServer, database: str) -> Callable[[], float]:
    """Seconds of CPU the backends connected to `database` have used so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def used() -> float:
        with psycopg.connect(server.url(), autocommit=True) as db:
            pids = [
                row[0]
                for row in db.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
            ]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    return used


async def main(messages: int) -> None:
    with tempfile.TemporaryDirectory() as scratch, running_postgres() as server:
        url = server.create_database("bench")
        with psycopg.connect(url, autocommit=True) as db:
            migrate(db)
        (Path(scratch) / "sqlite").mkdir()
        (Path(scratch) / "pg").mkdir()
        sqlite = await run(messages, {}, Path(scratch) / "sqlite", lambda: 0.0)
        trips = RoundTrips()
        postgres = await run(
            messages, {"store": {"url": url}}, Path(scratch) / "pg", backend_cpu(server, "bench")
        )
        # The count includes the warm-up message and the worker's start (schema check, first lookup).
        print(f"{messages} messages, 2 recipients each, sent one after the other")
        print(f"{'':24} {'SQLite':>10} {'PostgreSQL':>10}")
        for key in sqlite:
            print(f"{key:24} {sqlite[key]:10.2f} {postgres[key]:10.2f}")
        print(f"statements to PostgreSQL: {trips.count} for {messages + 1} messages and the start")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100)
    asyncio.run(main(parser.parse_args().messages))
