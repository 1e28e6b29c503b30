"""Worker processes: throughput of `qsift serve` with workers = 1 and workers = 2, and each worker's memory.

    .venv/bin/python -m bench.workers --messages 2000 --concurrency 8 --soak 10000

For each path, pass-through (QMQP clients -> qsift -> SMTP sink, no scanner) and clamd-only (the same with
`[[virus.scanners]] type = "clamd"`, a real clamd on the test signature database tests/data/clamav, a fresh
one per run so neither run finds the messages in clamd's cache of clean files), a real `qsift serve` with
workers = 1 and then one with workers = 2, each fresh (its own state_dir, so its own outcome record) with
its own counting SMTP sink in another process (bench/sink.py). Each server gets warm-up messages, then the
same N messages (bench.passthrough's corpus, 2-60 kB) from C concurrent QMQP clients; it prints messages/s,
p50/p99 latency, CPU use of each party (and of anything else on the machine meanwhile) and how many messages
each worker took (from the pids on the summary lines, which log_level 0 writes), and the ratio
workers=2 / workers=1 per path.

Then memory: a fresh workers = 2 pass-through server, RSS and PSS (/proc/PID/smaps_rollup) of the parent and
of each worker at rest (after start-up, before any traffic), half-way through and after `--soak` messages.
The soak sends the mix of bench/mail_mix.py (the shared corpus and generated business mail with attachments
of 2-500 kB, a few up to 10 MB), not the 2-60 kB text of the timed runs: a filter's memory goes on decoding
attachments, opening archives and spooling large bodies, which small messages never ask for (issue 14).
Every category's destiny is pass, so every message reaches the sink whatever the checks make of it.

Every server runs with log_level 0, max_servers 64 (never throttles C clients) and max_requests 0 (workers
are never recycled, so the soak's workers are the ones measured at rest; the script checks the pids did not
change). Clients, sink, clamd and qsift share the machine's CPUs: on two cores the ratio says what a second
worker buys on such a machine, not how qsift would scale on an idle many-core one. Warm-up, timed and soak
messages differ from each other, so none is answered from the outcome record as an identical retry.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.clamd_daemon import running_clamd
from tests.harness import free_port, qmqp_send
from tests.integration.test_daemon_process import child_pids

from bench.amavisd import procs
from bench.amavisd.qsift_daemon import DESTINIES
from bench.mail_mix import message_pool, stamped
from bench.passthrough import corpus, run_clients

QSIFT = str(Path(sys.executable).parent / "qsift")
SENDER = b"a@example.org"
RECIPIENT = b"b@example.net"
MAX_SERVERS = 64
#: Seconds: one QMQP exchange, a process's start, its stop, and the pause before a memory reading.
SEND_TIMEOUT = 60.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SETTLE = 1.0
#: Soak messages are stamped and sent this many at a time, so the client never holds all of them.
SOAK_BATCH = 200
#: Every category passes (as in bench/amavisd): the soak measures memory, not policy.
ALL_PASS = "[destiny]\n" + "".join(f'{name} = "pass"\n' for name in DESTINIES)
SUMMARY = re.compile(r"^qsift\[(\d+)\]: (?:Passed|Blocked) ")


def relabel(messages: list[bytes], tag: bytes) -> list[bytes]:
    """The corpus under another name: warm-up and soak messages must not be byte-identical to the timed
    ones, or qsift would answer them from its outcome record instead of filtering them."""
    return [m.replace(b"bench ", tag + b" ", 1).replace(b"@bench>", b"@" + tag + b">", 1) for m in messages]


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM, then SIGKILL past `timeout`; whether it came to that."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            return True
    return False


@dataclass
class Sink:
    process: subprocess.Popen[str]
    port: int
    #: What the sink said it accepted, once stopped; None if it could not say.
    count: int | None = None


@contextlib.contextmanager
def running_sink() -> Iterator[Sink]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", str(port)], stdout=subprocess.PIPE, text=True
    )
    sink = Sink(process, port)
    try:
        assert process.stdout is not None
        # select first: readline alone would wait for ever on a sink that hangs before "ready".
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        if not ready or process.stdout.readline().strip() != "ready":
            raise SystemExit("the SMTP sink did not start")
        yield sink
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=STOP_TIMEOUT)
            sink.count = int(out.strip())
        except (subprocess.TimeoutExpired, ValueError):
            process.kill()
            process.wait(5)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def worker_pids(self) -> list[int]:
        # No [metrics] is configured, so every child of the parent is a worker.
        return sorted(child_pids(self.process.pid))

    def log_lines(self, offset: int = 0) -> list[str]:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace").splitlines()

    def log_size(self) -> int:
        return self.log.stat().st_size

    def summaries(self, offset: int, expected: int) -> tuple[collections.Counter[int], list[str]]:
        """Summary lines per pid since `offset`, once there are `expected` of them (the log is written by
        a thread, after the answer), and every other line there."""
        deadline = time.monotonic() + 10
        while True:
            per_pid: collections.Counter[int] = collections.Counter()
            other = []
            for line in self.log_lines(offset):
                match = SUMMARY.match(line)
                if match:
                    per_pid[int(match.group(1))] += 1
                elif line.strip():
                    other.append(line)
            if sum(per_pid.values()) >= expected or time.monotonic() > deadline:
                return per_pid, other
            time.sleep(0.05)


@contextlib.contextmanager
def running_qsift(
    home: Path, *, workers: int, sink_port: int, sections: str = "", command: tuple[str, ...] = (QSIFT,)
) -> Iterator[Server]:
    """A `qsift serve` with a QMQP listener forwarding to the sink; `sections` is TOML appended to its
    configuration (scanners, destinies); `command` runs in place of the `qsift` program, given the same
    arguments."""
    home.mkdir(parents=True)
    (home / "tmp").mkdir()
    port = free_port()
    config = home / "qsift.toml"
    config.write_text(
        f'log_level = 0\nallow_root = true\nstate_dir = "{home}/state"\ntmp_dir = "{home}/tmp"\n'
        f"workers = {workers}\nmax_servers = {MAX_SERVERS}\nmax_requests = 0\n"
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{sink_port}"\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n' + sections
    )
    log = home / "qsift.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    server = Server(process, port, log)
    known_workers: set[int] = set()
    try:
        # The parent says "qsift ready" once every worker serves; the port alone could be one worker's.
        deadline = time.monotonic() + START_TIMEOUT
        while not any("qsift ready" in line for line in server.log_lines()):
            if process.poll() is not None:
                raise SystemExit(f"qsift exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"qsift not ready after {START_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        while len(server.worker_pids()) != workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"expected {workers} worker(s), found {server.worker_pids()}")
            time.sleep(0.05)
        known_workers.update(server.worker_pids())
        yield server
    finally:
        known_workers.update(server.worker_pids())
        if stop_process(process):
            # A parent killed after its stop timeout leaves its workers behind: end those still running
            # with this configuration (a pid alone may have been reused since).
            for pid in known_workers:
                with contextlib.suppress(OSError):
                    if str(config).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)


async def send_all(
    port: int, messages: list[bytes], concurrency: int
) -> tuple[float, list[float], list[str]]:
    answers: list[str] = []

    async def send(message: bytes) -> None:
        answers.append(await asyncio.wait_for(qmqp_send(port, message, SENDER, [RECIPIENT]), SEND_TIMEOUT))

    elapsed, latencies = await run_clients(messages, concurrency, send)
    return elapsed, latencies, [a for a in answers if not a.startswith("K")]


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle: what our processes did not use of it was someone
    else's (on a shared machine, a test suite running beside the bench shows here)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Run:
    path: str
    workers: int
    count: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    per_worker: list[int] = field(default_factory=list)
    #: CPU seconds over the timed run: qsift's tree, clamd, the clients (this process) and the sink.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99(self) -> float:
        # The same rank as bench/passthrough.py, so the two scripts' figures compare.
        ordered = sorted(self.latencies)
        return ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000

    def cpu_percent(self, who: str) -> float:
        return 100 * self.cpu.get(who, 0.0) / self.elapsed

    def others_percent(self) -> float:
        ours = sum(seconds for who, seconds in self.cpu.items() if who != "machine")
        return 100 * (self.cpu.get("machine", 0.0) - ours) / self.elapsed


def throughput(
    path: str,
    workers: int,
    home: Path,
    warmup: list[bytes],
    messages: list[bytes],
    concurrency: int,
    problems: list[str],
    *,
    scanners: str = "",
    clamd_pid: int = 0,
) -> Run:
    run = Run(path, workers, len(messages))
    label = f"{path}, workers = {workers}"
    with (
        running_sink() as sink,
        running_qsift(home, workers=workers, sink_port=sink.port, sections=scanners) as server,
    ):
        pids = server.worker_pids()
        _, _, refused = asyncio.run(send_all(server.port, warmup, concurrency))
        server.summaries(0, len(warmup))  # the warm-up's lines are out before the timed run's offset
        offset = server.log_size()
        counters: dict[str, Callable[[], float]] = {
            "qsift": lambda: procs.cpu_seconds(server.process.pid),
            "clients": own_cpu,
            "sink": lambda: procs.cpu_seconds(sink.process.pid),
            "machine": machine_busy,
        }
        if clamd_pid:
            counters["clamd"] = lambda: procs.cpu_seconds(clamd_pid)
        before = {who: read() for who, read in counters.items()}
        run.elapsed, run.latencies, more_refused = asyncio.run(send_all(server.port, messages, concurrency))
        run.cpu = {who: read() - before[who] for who, read in counters.items()}
        refused += more_refused
        per_pid, other = server.summaries(offset, len(messages))
        run.per_worker = [per_pid.get(pid, 0) for pid in pids]
        if server.worker_pids() != pids:
            problems.append(f"{label}: workers {pids} became {server.worker_pids()} during the run")
        if set(per_pid) - set(pids):
            problems.append(f"{label}: summary lines from pids {sorted(set(per_pid) - set(pids))}")
        if sum(per_pid.values()) != len(messages):
            problems.append(f"{label}: {sum(per_pid.values())} summary lines for {len(messages)} messages")
        problems.extend(f"{label}: log: {line}" for line in other[:5])
    if refused:
        problems.append(f"{label}: {len(refused)} not accepted, e.g. {refused[0][:100]!r}")
    if sink.count != len(warmup) + len(messages):
        problems.append(f"{label}: the sink counted {sink.count} of {len(warmup) + len(messages)}")
    print(
        f"  {label:32s} {run.rate:7.1f} msg/s  p50 {run.p50:6.2f} ms  p99 {run.p99:6.2f} ms"
        f"  per worker {' / '.join(map(str, run.per_worker))}",
        flush=True,
    )
    return run


def memory(pid: int) -> tuple[int, int]:
    """RSS and PSS of one process, in bytes (PSS splits the pages a fork shares copy-on-write)."""
    values = procs.smaps_rollup(pid)
    return values["Rss"], values["Pss"]


def peak_rss(pid: int) -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0


@dataclass
class Soak:
    count: int
    #: (label, [(RSS, PSS) of the parent, then of each worker])
    readings: list[tuple[str, list[tuple[int, int]]]] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    per_worker: list[int] = field(default_factory=list)
    rate: float = 0.0


def soak(
    home: Path, pool: list[tuple[str, bytes]], count: int, concurrency: int, problems: list[str]
) -> Soak:
    result = Soak(count)
    label = "soak"
    with (
        running_sink() as sink,
        running_qsift(home, workers=2, sink_port=sink.port, sections=ALL_PASS) as server,
    ):
        parent, pids = server.process.pid, server.worker_pids()
        offset = server.log_size()  # past the start-up lines (which scanners, "qsift ready")

        def reading(name: str) -> None:
            time.sleep(SETTLE)  # messages answered, log thread and freed buffers done
            result.readings.append((name, [memory(pid) for pid in (parent, *pids)]))

        reading("at rest (after start-up, before traffic)")
        half = count // 2
        refused: list[str] = []
        elapsed = 0.0
        for first, end, name in (
            (0, half, f"after {half} messages"),
            (half, count, f"after {count} messages"),
        ):
            for start in range(first, end, SOAK_BATCH):
                batch = stamped(pool, min(SOAK_BATCH, end - start), "soak", start)
                seconds, _, bad = asyncio.run(send_all(server.port, batch, concurrency))
                elapsed += seconds
                refused += bad
            if server.worker_pids() != pids:
                raise SystemExit(
                    f"{label}: workers {pids} became {server.worker_pids()}: memory readings void"
                )
            reading(name)
        result.rate = count / elapsed if elapsed else 0.0
        result.peaks = [peak_rss(pid) for pid in pids]
        per_pid, other = server.summaries(offset, count)
        result.per_worker = [per_pid.get(pid, 0) for pid in pids]
    problems.extend(run_problems(label, count, per_pid, other, refused, sink.count))
    return result


def run_problems(
    label: str, count: int, per_pid: dict[int, int], other: list[str], refused: list[str], counted: int | None
) -> list[str]:
    """What makes a load run's memory readings void: a summary line per message that is not there, a log
    line that is not a summary, a message not accepted, or the sink not counting every message once."""
    problems = []
    if sum(per_pid.values()) != count:
        problems.append(f"{label}: {sum(per_pid.values())} summary lines for {count} messages")
    problems.extend(f"{label}: log: {line}" for line in other[:5])
    if refused:
        problems.append(f"{label}: {len(refused)} not accepted, e.g. {refused[0][:100]!r}")
    if counted != count:
        problems.append(f"{label}: the sink counted {counted} of {count}")
    return problems


def mib(value: float) -> str:
    return f"{value / (1 << 20):.1f}"


def print_report(args: argparse.Namespace, runs: list[Run], memory_run: Soak, warmup: int) -> None:
    print()
    print("```sh")
    print(f".venv/bin/python -m bench.workers {' '.join(sys.argv[1:])}")
    print("```")
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"{args.messages} messages (2-60 kB) from {args.concurrency} concurrent QMQP clients after "
        f"{warmup} warm-up messages per server; log_level 0, max_servers {MAX_SERVERS}, max_requests 0. "
        "CPU % is of one core, over the timed run; clients, sink, clamd and qsift share the machine;"
        " 'not ours' is what anything else on it used meanwhile (near 0 on an otherwise idle machine)."
    )
    print()
    print(
        "| path | workers | msg/s | p50 | p99 | CPU % qsift | CPU % clamd | CPU % clients + sink"
        " | CPU % not ours | messages per worker |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in dict.fromkeys(run.path for run in runs):
        pair = [run for run in runs if run.path == path]
        for run in pair:
            print(
                f"| {path} | {run.workers} | {run.rate:.1f} | {run.p50:.2f} ms | {run.p99:.2f} ms"
                f" | {run.cpu_percent('qsift'):.0f} | {run.cpu_percent('clamd'):.0f}"
                f" | {run.cpu_percent('clients') + run.cpu_percent('sink'):.0f} | {run.others_percent():.0f}"
                f" | {' / '.join(map(str, run.per_worker))} |"
            )
        if len(pair) == 2:
            one, two = pair
            print(
                f"| {path}: ratio 2 / 1 | | {two.rate / one.rate:.2f} | {two.p50 / one.p50:.2f}"
                f" | {two.p99 / one.p99:.2f} | | | | | |"
            )
    print()
    print(
        f"Memory, MiB (RSS / PSS from /proc/PID/smaps_rollup), workers = 2, pass-through, {memory_run.count}"
        " soak messages (the shared corpus and generated mail with attachments of 2-500 kB, a few up to"
        f" 10 MB) at {memory_run.rate:.1f} msg/s; max_requests = 0: no worker was recycled during the"
        f" soak (same pids throughout); messages per worker {' / '.join(map(str, memory_run.per_worker))}."
    )
    print()
    print(
        "| when | parent RSS | parent PSS | worker 1 RSS | worker 1 PSS | worker 2 RSS | worker 2 PSS"
        " | PSS total |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, values in memory_run.readings:
        cells = " | ".join(f"{mib(rss)} | {mib(pss)}" for rss, pss in values)
        print(f"| {name} | {cells} | {mib(sum(pss for _, pss in values))} |")
    print()
    print(
        f"Peak RSS (VmHWM) of the workers after the soak: {' / '.join(mib(p) for p in memory_run.peaks)} MiB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--soak", type=int, default=10000)
    parser.add_argument(
        "--warmup", type=int, default=0, help="per server; default: 10 per client, at least 50"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args()
    # SIGTERM ends the bench as Ctrl-C does, through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    warmup_count = args.warmup or max(50, 10 * args.concurrency)
    messages = corpus(args.messages)
    warmup = relabel(corpus(warmup_count), b"warmup")
    soak_pool = message_pool()
    workdir = Path(tempfile.mkdtemp(prefix="qsift-workers-"))
    problems: list[str] = []
    runs: list[Run] = []
    finished = False
    try:
        print(
            f"{len(messages)} messages, {args.concurrency} clients, {warmup_count} warm-up per server",
            flush=True,
        )
        for workers in (1, 2):
            runs.append(
                throughput(
                    "pass-through",
                    workers,
                    workdir / f"pass-w{workers}",
                    warmup,
                    messages,
                    args.concurrency,
                    problems,
                )
            )
        for workers in (1, 2):
            # A clamd of its own for each run: clamd caches the hashes of what it found clean, so a second
            # run of the same messages through the same clamd is mostly cache hits (about a third of the
            # clamd CPU per message of the first run), which would flatter whichever run comes second.
            # Threads enough that no scan waits inside clamd for one.
            with running_clamd(
                workdir / f"clamd-w{workers}-clamd", max_threads=max(4, args.concurrency)
            ) as clamd:
                assert clamd.process is not None
                runs.append(
                    throughput(
                        "clamd-only",
                        workers,
                        workdir / f"clamd-w{workers}",
                        warmup,
                        messages,
                        args.concurrency,
                        problems,
                        scanners=f'[[virus.scanners]]\ntype = "clamd"\naddress = "{clamd.unix_address}"\n',
                        clamd_pid=clamd.process.pid,
                    )
                )
        print(f"  soak: {args.soak} messages through workers = 2, pass-through", flush=True)
        memory_run = soak(workdir / "soak", soak_pool, args.soak, args.concurrency, problems)
        finished = True
    finally:
        if args.keep or not finished:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(args, runs, memory_run, warmup_count)
    if problems:
        print()
        for problem in problems:
            print(f"problem: {problem}")
        raise SystemExit("NOT A VALID RUN")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
