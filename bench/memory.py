"""Memory of `qsift serve` under the attachment mix: RSS and PSS of the parent and of each worker.

    .venv/bin/python -m bench.memory --workers 2 4 --messages 10000 --at 1000 --concurrency 8

For each worker count, a fresh `qsift serve` (log_level 0, max_requests 0 so the workers measured at rest
are the ones measured at the end; every destiny pass, no scanner) forwarding to the counting bare-asyncio
sink of bench/sink.py, fed the mix of bench/mail_mix.py (the shared corpus and generated business mail with
attachments of 2-500 kB, one in 25 generated messages with one more of 1-10 MB) by C concurrent QMQP
clients. RSS and PSS (/proc/PID/smaps_rollup) of every process are read right after start, after each
`--at` count and at the end; PSS is the figure that splits the pages a fork shares copy-on-write, so the
sum of the workers' PSS is what they cost the machine together.

The run is void unless every message was accepted, counted once by the sink and logged once, and the worker
pids stayed the same throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.mail_mix import message_pool, stamped
from bench.workers import (
    ALL_PASS,
    SETTLE,
    SOAK_BATCH,
    memory,
    mib,
    peak_rss,
    run_problems,
    running_qsift,
    running_sink,
    send_all,
)


@dataclass
class Reading:
    label: str
    #: (RSS, PSS) in bytes of the parent, then of each worker.
    processes: list[tuple[int, int]]


@dataclass
class Run:
    workers: int
    count: int
    readings: list[Reading] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    per_worker: list[int] = field(default_factory=list)
    rate: float = 0.0


def measure(
    home: Path,
    pool: list[tuple[str, bytes]],
    workers: int,
    count: int,
    at: list[int],
    concurrency: int,
    problems: list[str],
) -> Run:
    run = Run(workers, count)
    label = f"workers={workers}"
    with (
        running_sink() as sink,
        running_qsift(home, workers=workers, sink_port=sink.port, sections=ALL_PASS) as server,
    ):
        parent, pids = server.process.pid, server.worker_pids()
        offset = server.log_size()

        def reading(name: str) -> None:
            time.sleep(SETTLE)
            run.readings.append(Reading(name, [memory(pid) for pid in (parent, *pids)]))

        reading("after start")
        refused: list[str] = []
        elapsed, sent = 0.0, 0
        for stop in [*sorted(n for n in at if n < count), count]:
            for start in range(sent, stop, SOAK_BATCH):
                batch = stamped(pool, min(SOAK_BATCH, stop - start), "memory", start)
                seconds, _, bad = asyncio.run(send_all(server.port, batch, concurrency))
                elapsed += seconds
                refused += bad
            sent = stop
            if server.worker_pids() != pids:
                raise SystemExit(f"{label}: workers {pids} became {server.worker_pids()}: readings void")
            reading(f"after {stop} messages")
            print(f"  {label}: {stop} messages", flush=True)
        run.rate = count / elapsed if elapsed else 0.0
        run.peaks = [peak_rss(pid) for pid in pids]
        per_pid, other = server.summaries(offset, count)
        run.per_worker = [per_pid.get(pid, 0) for pid in pids]
    problems.extend(run_problems(label, count, per_pid, other, refused, sink.count))
    return run


def print_run(run: Run) -> None:
    print(
        f"\nworkers = {run.workers}: {run.count} messages at {run.rate:.1f} msg/s; messages per worker"
        f" {' / '.join(map(str, run.per_worker))}; MiB, RSS / PSS"
    )
    names = " | ".join(f"worker {n} RSS / PSS" for n in range(1, run.workers + 1))
    print(f"| when | parent RSS / PSS | {names} | workers' PSS total | worker RSS max |")
    print("|---" * (run.workers + 4) + "|")
    for reading in run.readings:
        parent, *workers = reading.processes
        cells = " | ".join(f"{mib(rss)} / {mib(pss)}" for rss, pss in workers)
        total = sum(pss for _, pss in workers)
        print(
            f"| {reading.label} | {mib(parent[0])} / {mib(parent[1])} | {cells} | {mib(total)}"
            f" | {mib(max(rss for rss, _ in workers))} |"
        )
    print(f"Peak RSS (VmHWM) of the workers: {' / '.join(mib(p) for p in run.peaks)} MiB.")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--at", type=int, nargs="*", default=[1000], help="extra reading after N messages")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pool = message_pool()
    workdir = Path(tempfile.mkdtemp(prefix="qsift-memory-"))
    problems: list[str] = []
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(pool)} messages in the pool", flush=True)
    try:
        runs = [
            measure(
                workdir / f"w{workers}", pool, workers, args.messages, args.at, args.concurrency, problems
            )
            for workers in args.workers
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for run in runs:
        print_run(run)
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        raise SystemExit("NOT A VALID RUN")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
