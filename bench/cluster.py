"""The shared store's cost: one node on SQLite, one node on PostgreSQL, two nodes sharing one PostgreSQL.

    .venv/bin/python -m bench.cluster --rounds 5 --messages 300 --concurrency 8 --workers 2

Issue 13 asks that PostgreSQL cost at most 20 % of one node's throughput on the mail mix. Three setups,
each a real `qsift serve` tree (log_level 0, `--workers` workers per node, no scanners, every destiny
pass so every message reaches the sink) forwarding to a counting sink of its own (bench/sink.py):

- `sqlite`: one node, the outcome record in SQLite under its state_dir;
- `postgresql`: one node, `[store] url` on a private PostgreSQL cluster;
- `two nodes`: two nodes on one database of that cluster, the clients split between them (client i
  sends to node i mod 2, as qsift-queue spreads a queue's deliveries).

The cluster is tests/postgres_server.py's, with production-like durability: `fsync = on` and
`synchronous_commit = on` (PostgreSQL's defaults; the tests turn fsync off), its data directory on the
machine's disk, and pg_stat_statements loaded to count statements. Every node starts once and stays up;
then each round sends `--messages` fresh messages of bench/mail_mix.py (the shared corpus and generated
business mail with attachments) through each setup in turn, the order rotated from round to round, from
`--concurrency` QMQP clients (`--mix small`: bench/passthrough.py's 2-60 kB text messages instead, where
qsift's own work per message is least and the store's share the largest). Per setup and round it prints
messages/s, client latency p50/p95, CPU per message of qsift's process trees and of PostgreSQL's (the
postmaster and every backend, from /proc), and the statements PostgreSQL ran per message (each one round
trip: the workers use autocommit). Ratios are taken within a round, so a machine shared with other work
moves them less than the absolute figures.

The run is void unless every answer was K and each sink saw every message sent to its setup exactly once
(by the X-Bench-Id each message carries, not only by count).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from tests.harness import free_port, qmqp_send
from tests.postgres_server import PostgresServer, running_postgres

from bench.amavisd import procs
from bench.amavisd.qsift_daemon import DESTINIES
from bench.mail_mix import message_pool, stamped
from bench.passthrough import corpus
from qsift.store.pg_migrate import migrate

SENDER = b"a@example.org"
RECIPIENTS = [b"b@example.net"]
SETUPS = ("sqlite", "postgresql", "two nodes")
#: With --async-commit: one node on a database with `synchronous_commit = off`, which takes the wait for
#: the WAL's fsync out of each record's commit: the difference to "postgresql" is what that wait costs.
ASYNC_COMMIT = "pg async"
#: Each setup: its nodes, its database (None: SQLite), whether that database commits asynchronously.
PLANS = {
    "sqlite": (1, None, False),
    "postgresql": (1, "one", False),
    "two nodes": (2, "two", False),
    ASYNC_COMMIT: (1, "async", True),
}
#: As in production: PostgreSQL's defaults, which tests/postgres_server.py overrides for speed.
DURABLE = ("fsync=on", "synchronous_commit=on", "shared_preload_libraries=pg_stat_statements")


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int
    log: Path


@dataclass
class Setup:
    name: str
    nodes: list[Node]
    sink: subprocess.Popen[str]
    ids_file: Path
    database: str | None
    sent: list[str] = field(default_factory=list)


@dataclass
class Measure:
    setup: str
    round: int
    rate: float
    p50: float
    p95: float
    qsift_cpu: float
    pg_cpu: float
    statements: float
    #: Milliseconds the server spent executing the statements (pg_stat_statements), per message.
    executing: float
    top: list[tuple[str, float, float]]


def node_config(home: Path, port: int, sink_port: int, workers: int, url: str | None) -> str:
    text = (
        f'log_level = 0\nallow_root = true\nstate_dir = "{home}/state"\ntmp_dir = "{home}/tmp"\n'
        f"workers = {workers}\n"
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{sink_port}"\n'
        # Every category passes: the bench measures the store, and every message must reach the sink.
        "[destiny]\n" + "".join(f'{name} = "pass"\n' for name in DESTINIES)
    )
    if url is not None:
        text += f'[store]\nurl = "{url}"\n'
    return text


def start_node(workdir: Path, name: str, sink_port: int, workers: int, url: str | None) -> Node:
    home = workdir / name
    home.mkdir(parents=True)
    # qsift refuses state and temp directories that others may read.
    (home / "state").mkdir(mode=0o700)
    (home / "tmp").mkdir(mode=0o700)
    port = free_port()
    (home / "qsift.toml").write_text(node_config(home, port, sink_port, workers, url))
    log = home / "qsift.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "qsift"), "serve", "--config", str(home / "qsift.toml")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    return Node(process, port, log)


def start_sink(ids_file: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", "--ids", str(ids_file), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        raise SystemExit("the sink did not start")
    return sink, port


def wait_ready(nodes: list[Node], timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            if node.process.poll() is not None:
                raise SystemExit(f"qsift exited: {node.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", node.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"qsift not listening after {timeout:g} s") from None
                time.sleep(0.1)


@contextmanager
def running_setups(
    workdir: Path, server: PostgresServer, workers: int, names: tuple[str, ...]
) -> Iterator[dict[str, Setup]]:
    setups: dict[str, Setup] = {}
    try:
        for name in names:
            node_count, database, async_commit = PLANS[name]
            url = None
            if database is not None:
                url = server.create_database(database)
                with psycopg.connect(url, autocommit=True) as db:
                    migrate(db)  # `qsift store init`
                    if async_commit:
                        db.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
            ids_file = workdir / f"{database or 'sqlite'}.ids"
            sink, sink_port = start_sink(ids_file)
            setup = Setup(name, [], sink, ids_file, database)
            setups[name] = setup
            for number in range(node_count):
                setup.nodes.append(
                    start_node(workdir, f"{database or 'sqlite'}-{number}", sink_port, workers, url)
                )
        for setup in setups.values():
            wait_ready(setup.nodes)
        yield setups
    finally:
        for setup in setups.values():
            for node in setup.nodes:
                node.process.send_signal(signal.SIGTERM)
            for node in setup.nodes:
                try:
                    node.process.wait(30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
            setup.sink.send_signal(signal.SIGTERM)
            setup.sink.communicate(timeout=30)


async def send(setup: Setup, messages: list[bytes], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Every message through `setup` from `concurrency` clients, client i to node i mod the nodes."""
    queue: collections.deque[bytes] = collections.deque(messages)
    latencies: list[float] = []
    refused: list[str] = []

    async def client(port: int) -> None:
        while queue:
            message = queue.popleft()
            began = time.perf_counter()
            answer = await qmqp_send(port, message, SENDER, RECIPIENTS, timeout=120.0)
            latencies.append(time.perf_counter() - began)
            if not answer.startswith("K"):
                refused.append(answer)

    began = time.perf_counter()
    await asyncio.gather(*(client(setup.nodes[i % len(setup.nodes)].port) for i in range(concurrency)))
    return time.perf_counter() - began, latencies, refused


def bench_id(message: bytes) -> str:
    return message.split(b"\n", 1)[0].split()[1].decode()


def statements(
    server: PostgresServer, database: str | None
) -> tuple[int, float, list[tuple[str, float, float]]]:
    """Statements run in `database` since the last reset (0 for none), the milliseconds the server spent
    executing them, and each statement's calls and mean milliseconds, the busiest first."""
    if database is None:
        return 0, 0.0, []
    with psycopg.connect(server.url(), autocommit=True) as db:
        rows = db.execute(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) ORDER BY calls DESC",
            (database,),
        ).fetchall()
    return (
        sum(int(calls) for _, calls, _ in rows),
        sum(float(spent) for _, _, spent in rows),
        [(str(query), float(calls), float(spent) / max(1, int(calls))) for query, calls, spent in rows],
    )


def reset_statements(server: PostgresServer) -> None:
    with psycopg.connect(server.url(), autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        db.execute("SELECT pg_stat_statements_reset()")


def measure(
    setup: Setup, server: PostgresServer, messages: list[bytes], concurrency: int, number: int
) -> Measure:
    reset_statements(server)
    postmaster = server.postmaster_pid()
    qsift_before = sum(procs.cpu_seconds(node.process.pid) for node in setup.nodes)
    pg_before = procs.cpu_seconds(postmaster)
    elapsed, latencies, refused = asyncio.run(send(setup, messages, concurrency))
    qsift_cpu = sum(procs.cpu_seconds(node.process.pid) for node in setup.nodes) - qsift_before
    pg_cpu = procs.cpu_seconds(postmaster) - pg_before
    setup.sent += [bench_id(message) for message in messages]
    if refused:
        raise SystemExit(f"NOT A VALID RUN: {setup.name}: {len(refused)} not K, e.g. {refused[0]}")
    count, executing, top = statements(server, setup.database)
    ordered = sorted(latencies)
    sent = len(messages)
    return Measure(
        setup.name,
        number,
        sent / elapsed,
        statistics.median(ordered) * 1000,
        ordered[max(0, int(sent * 0.95) - 1)] * 1000,
        qsift_cpu * 1000 / sent,
        pg_cpu * 1000 / sent,
        count / sent,
        executing / sent,
        [(query, calls / sent, mean) for query, calls, mean in top[:4]],
    )


def check_exactly_once(setups: dict[str, Setup]) -> list[str]:
    problems = []
    for setup in setups.values():
        arrived = collections.Counter(setup.ids_file.read_text().split())
        sent = collections.Counter(setup.sent)
        twice = [name for name, times in arrived.items() if times > 1]
        missing = sorted(set(sent) - set(arrived))
        stray = sorted(set(arrived) - set(sent))
        print(
            f"{setup.name}: sent {len(setup.sent)}, the sink took {sum(arrived.values())}:"
            f" {len(sent)} distinct, {len(twice)} twice, {len(missing)} missing, {len(stray)} not sent"
        )
        if twice or missing or stray or sum(sent.values()) != len(sent):
            problems.append(f"{setup.name}: twice {twice[:3]}, missing {missing[:3]}, not sent {stray[:3]}")
    return problems


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(results: list[Measure], args: argparse.Namespace, pool_size: int, names: tuple[str, ...]) -> None:
    print()
    print(
        f"{args.rounds} rounds x {args.messages} messages per setup ({pool_size} distinct bodies: "
        + (
            "the shared corpus and generated mail with attachments"
            if args.mix == "mail"
            else "text messages of 2-60 kB"
        )
        + f"), {args.concurrency} QMQP clients, {args.workers}"
        f" workers per node, no scanners, PostgreSQL fsync on, synchronous_commit on"
        f" (but for {ASYNC_COMMIT!r}),"
        f" {os.cpu_count()} CPUs"
    )
    print(
        f"{'round':>5} {'setup':10} {'msg/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'qsift CPU ms':>12}"
        f" {'PG CPU ms':>9} {'statements':>10}"
    )
    for r in results:
        print(
            f"{r.round:5d} {r.setup:10} {r.rate:7.1f} {r.p50:8.1f} {r.p95:8.1f} {r.qsift_cpu:12.2f}"
            f" {r.pg_cpu:9.2f} {r.statements:10.2f}"
        )
    by_round: dict[int, dict[str, Measure]] = collections.defaultdict(dict)
    for r in results:
        by_round[r.round][r.setup] = r
    print()
    print("median (min-max) over the rounds; ratios within each round, against sqlite:")
    for name in names:
        mine = [r for r in results if r.setup == name]
        rounds = [by_round[r.round] for r in mine]
        print(
            f"  {name:10} msg/s {spread([r.rate for r in mine])}, p50 {spread([r.p50 for r in mine])} ms,"
            f" p95 {spread([r.p95 for r in mine])} ms, qsift CPU {spread([r.qsift_cpu for r in mine])} ms,"
            f" PG CPU {spread([r.pg_cpu for r in mine])} ms,"
            f" statements {spread([r.statements for r in mine])},"
            f" executing them {spread([r.executing for r in mine])} ms"
        )
        if name != "sqlite":
            print(
                f"  {'':10} throughput / sqlite {spread([b[name].rate / b['sqlite'].rate for b in rounds])},"
                f" p50 / sqlite {spread([b[name].p50 / b['sqlite'].p50 for b in rounds])},"
                f" qsift + PG CPU / sqlite's qsift CPU"
                f" {spread([(b[name].qsift_cpu + b[name].pg_cpu) / b['sqlite'].qsift_cpu for b in rounds])}"
            )
    print()
    print("statements per message and the server's mean time executing one, last round:")
    for name in names[1:]:
        for query, calls, mean in by_round[max(by_round)][name].top:
            print(f"  {name:10} {calls:5.2f} {mean:6.3f} ms  {' '.join(query.split())[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=300, help="per setup and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="per node")
    parser.add_argument("--warmup", type=int, default=0, help="per setup; default: 5 per client")
    parser.add_argument(
        "--mix",
        choices=("mail", "small"),
        default="mail",
        help="mail: bench/mail_mix.py (the corpus and mail with attachments); small: bench/passthrough.py's"
        " 2-60 kB text messages",
    )
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help=f"add {ASYNC_COMMIT!r}: one node on a database with synchronous_commit = off (a profile of the"
        " commit's fsync wait, not a recommended setting)",
    )
    args = parser.parse_args()
    names = SETUPS + ((ASYNC_COMMIT,) if args.async_commit else ())
    # The small mix shows the store's cost where qsift's own work per message is least.
    pool = (
        message_pool()
        if args.mix == "mail"
        else [(f"small/{i}", message) for i, message in enumerate(corpus(400))]
    )
    results: list[Measure] = []
    # On the machine's disk, so that fsync waits for it (a tmpfs would make fsync free).
    workdir = Path(tempfile.mkdtemp(prefix="qsift-cluster-", dir="/var/tmp"))
    workdir.chmod(0o755)
    try:
        with ExitStack() as stack:
            server = stack.enter_context(running_postgres(DURABLE))
            setups = stack.enter_context(running_setups(workdir, server, args.workers, names))
            for name, setup in setups.items():
                warmup = stamped(
                    pool[::-1], args.warmup or 5 * args.concurrency, f"warm-{name.replace(' ', '')}"
                )
                measure(setup, server, warmup, args.concurrency, 0)
            for number in range(1, args.rounds + 1):
                turn = number % len(names)
                order = names[turn:] + names[:turn]
                for name in order:
                    messages = stamped(
                        pool, args.messages, f"{name.replace(' ', '')}-{number}", start=number * args.messages
                    )
                    results.append(measure(setups[name], server, messages, args.concurrency, number))
                    print(f"round {number} {name}: {results[-1].rate:.1f} msg/s", flush=True)
        problems = check_exactly_once(setups)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, len(pool), names)
    if problems:
        raise SystemExit("NOT A VALID RUN: " + "; ".join(problems))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
