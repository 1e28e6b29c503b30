"""qsift beside amavisd-new: same machine, same messages, same scanners, interleaved rounds, ratios.

    .venv/bin/python -m bench.amavisd.compare --messages 300 --concurrency 4 --workers 2 --rounds 3 --spam off
    .venv/bin/python -m bench.amavisd.compare --messages 200 --concurrency 4 --workers 2 --rounds 3 --spam sa

Both filters run the same number of worker processes: qsift's `workers` is amavisd-new's `$max_servers`
(`--workers`, by default as many as clients). Left to its default (one per CPU), qsift ran 2 workers
beside amavisd-new's 4 children and the memory ratio compared unequal setups (issue 14); the report
states how many each side was given and how many were running after the load, and a mismatch makes the
run invalid.

Each round runs both filters, one after the other (qsift first in odd rounds, amavisd-new first in even
ones, so neither always gets the warmer machine). Every run has its own fresh clamd (tests/clamd_daemon.py,
the test signature database), so neither filter finds the other's messages in clamd's cache, and with
`--spam sa` qsift's own fresh spamd (tests/spamd_daemon.py, local tests only, as many children as workers),
with `--spam rspamd` its own fresh rspamd (bench/amavisd/rspamd_daemon.py) beside amavisd-new with
SpamAssassin; `--spam off` turns the spam checks off in both (amavisd-new then does not even load
SpamAssassin). Each run has a counting SMTP sink in its own process (bench/sink.py, bare asyncio,
`--tally`), the filter with an SMTP listener on loopback forwarding to the sink, a warm-up, and the same N
messages (bench/mail_mix.py: the corpus, business mail with attachments and 4 EICAR messages) sent by C
concurrent SMTP clients (qsift's own client). A run counts only if every message was accepted and counted
once at the sink and the sink saw a virus alert on every EICAR message. Measured per run: messages/s, CPU
seconds per message of the filter's process tree plus its scanners' (clamd; spamd or rspamd for qsift, whose
spam checks run there and not inside it), RSS and PSS (/proc/PID/smaps_rollup) of the filter's tree and of
its workers alone. Reported: each round's ratios qsift / amavisd-new, then their median (min-max) over the
rounds. Figures on a small shared VM move by tens of percent from run to run; the spread says how much.

amavisd-new embeds SpamAssassin (the master loads and compiles the rules, each child checks in-process);
qsift asks spamd. Both use the same SpamAssassin configuration (Debian's .pre files, no Bayes, no network
tests). Virus checks go to the same clamd socket: amavisd-new sends CONTSCAN of its decoded-parts
directory, qsift streams each part it decoded (INSTREAM, `[virus] scan = "parts"`): the same work; with
`--virus-scan message` qsift streams the whole message and lets clamd decode it. Must run as root: amavisd
drops to the `amavis` user, clamd runs as root to read amavisd's temp files.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.clamd_daemon import running_clamd
from tests.spamd_daemon import LOCAL_CF, running_spamd

from bench.amavisd import procs
from bench.amavisd.amavis import Amavisd
from bench.amavisd.qsift_daemon import Qsift
from bench.amavisd.rspamd_daemon import compile_rules, running_rspamd
from bench.mail_mix import carries_eicar, message_pool, stamped
from qsift.act.smtp_forward import SmtpTimeouts, forward_via_smtp, parse_forward_method
from qsift.model import Envelope, Recipient
from qsift.spool import MessageSpool

SENDER = "a@example.org"
RECIPIENT = "b@example.net"


class Filter(Protocol):
    process: subprocess.Popen[bytes] | None
    #: Worker processes configured: qsift's `workers`, amavisd-new's `$max_servers`.
    workers: int

    def start(self) -> None: ...
    def failed(self) -> str | None: ...
    def stop(self) -> None: ...


@dataclass
class Result:
    name: str
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    sink_count: int = 0
    expected: int = 0
    #: Messages sent (warm-up included) that carry EICAR, and what the sink saw in the headers.
    expected_viruses: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    rss: int = 0
    pss: int = 0
    workers_rss: int = 0
    workers_pss: int = 0
    #: CPU seconds of the filter's tree, and of its scanners (clamd, and spamd for qsift), under the load.
    cpu: float = 0.0
    scanner_cpu: float = 0.0
    #: Memory of scanners that belong to one filter only (qsift's spamd); clamd serves either alike.
    scanner_pss: int = 0
    workers: int = 0
    #: Worker processes found running (children of the parent or master) after the measured load.
    worker_processes: int = 0
    categories: collections.Counter[str] = field(default_factory=collections.Counter)
    trouble: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def cpu_ms_per_message(self) -> float:
        return (self.cpu + self.scanner_cpu) / len(self.latencies) * 1000

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, int(len(ordered) * fraction) - 1)] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000

    def problems(self) -> list[str]:
        found = []
        if self.sink_count != self.expected:
            found.append(f"sink counted {self.sink_count}, expected {self.expected}")
        if self.refused:
            found.append(f"{len(self.refused)} refused, e.g. {self.refused[0]}")
        # At least: the corpus holds a message with ClamAV's own test file besides the EICAR ones.
        if self.marks.get("virus", 0) < self.expected_viruses:
            found.append(
                f"{self.marks.get('virus')} virus alerts at the sink, {self.expected_viruses} EICAR sent"
            )
        if self.trouble:
            found.append(f"{len(self.trouble)} scanner failures, e.g. {self.trouble[0]}")
        if self.worker_processes != self.workers:
            found.append(f"{self.worker_processes} worker processes running, {self.workers} configured")
        return [f"{self.name}: {what}" for what in found]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def running_workers(daemon: Filter, timeout: float = 5.0) -> list[int]:
    """The daemon parent's children, given a moment to replace one that just retired
    (amavisd-new's children leave after `$max_requests` messages)."""
    assert daemon.process is not None
    deadline = time.monotonic() + timeout
    while True:
        found = procs.children(daemon.process.pid)
        if len(found) == daemon.workers or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def wait_for_port(port: int, daemon: Filter, timeout: float = 180.0) -> float:
    """Seconds until `port` accepts a connection; SystemExit if the daemon dies or the time runs out."""
    began = time.monotonic()
    while time.monotonic() < began + timeout:
        why = daemon.failed()
        if why is not None:
            raise SystemExit(why)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic() - began
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on port {port} after {timeout:g} s")


async def send_all(port: int, messages: list[bytes], concurrency: int, result: Result | None) -> list[str]:
    """Send every message with `concurrency` clients; fill `result`'s latencies; return the refusals."""
    target = parse_forward_method(f"smtp:[127.0.0.1]:{port}")
    envelope = Envelope(SENDER, (Recipient(RECIPIENT),))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    latencies: list[float] = []
    refused: list[str] = []

    async def client() -> None:
        while not queue.empty():
            message = queue.get_nowait()
            began = time.perf_counter()
            with MessageSpool.from_bytes(message) as spool:
                answer = await forward_via_smtp(
                    target, envelope, spool, helo_name="bench.example.org", timeouts=SmtpTimeouts()
                )
            latencies.append(time.perf_counter() - began)
            if not answer.all_accepted:
                refused.append(answer.per_recipient[0].reply.smtp_line())

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    if result is not None:
        result.elapsed = time.perf_counter() - began
        result.latencies = latencies
    return refused


def start_sink() -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", "--tally", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        raise SystemExit("the sink did not start")
    return sink, port


def stop_sink(sink: subprocess.Popen[str]) -> tuple[int, dict[str, int]]:
    """The number of messages the sink took, and how many headers bore each of its marks."""
    sink.send_signal(signal.SIGTERM)
    out, _ = sink.communicate(timeout=30)
    count, marks = out.strip().splitlines()
    return int(count), json.loads(marks)


def run_filter(
    name: str,
    make: Callable[[int, int], Filter],
    warmup: list[bytes],
    messages: list[bytes],
    concurrency: int,
    scanners: list[int],
) -> tuple[Result, Filter]:
    """Start a sink and the filter (`make(port, sink_port)`), send warm-up and measured load, measure.
    `scanners`: the pids of the scanner daemons whose CPU time counts with the filter's."""
    result = Result(
        name,
        expected=len(warmup) + len(messages),
        expected_viruses=sum(carries_eicar(message) for message in warmup + messages),
    )
    sink, sink_port = start_sink()
    port = free_port()
    daemon = make(port, sink_port)
    daemon.start()
    try:
        started_in = wait_for_port(port, daemon)
        print(f"  {name}: listening after {started_in:.1f} s", flush=True)
        refused = asyncio.run(send_all(port, warmup, concurrency, None))
        assert daemon.process is not None
        cpu_before = procs.cpu_seconds(daemon.process.pid)
        scanners_before = sum(procs.cpu_seconds(pid) for pid in scanners)
        refused += asyncio.run(send_all(port, messages, concurrency, result))
        result.cpu = procs.cpu_seconds(daemon.process.pid) - cpu_before
        result.scanner_cpu = sum(procs.cpu_seconds(pid) for pid in scanners) - scanners_before
        result.rss = procs.rss_bytes(daemon.process.pid)
        result.pss = procs.pss_bytes(daemon.process.pid)
        result.refused = refused
        result.workers = daemon.workers
        workers = running_workers(daemon)
        result.worker_processes = len(workers)
        result.workers_rss = sum(procs.rss_bytes(pid) for pid in workers)
        result.workers_pss = sum(procs.pss_bytes(pid) for pid in workers)
    finally:
        daemon.stop()
        result.sink_count, result.marks = stop_sink(sink)
    return result, daemon


def categories(log: Path, pattern: str) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = re.search(pattern, line)
        if match:
            found[match.group(1)] += 1
    return found


def mib(value: int) -> str:
    return f"{value / (1 << 20):.0f} MiB"


@dataclass
class Bench:
    """What every run of one invocation shares: the messages, the temporary directory, the settings."""

    args: argparse.Namespace
    workers: int
    workdir: Path
    sa_site: Path
    warmup: list[bytes]
    messages: list[bytes]

    @contextlib.contextmanager
    def clamd(self, label: str) -> Iterator[tuple[str, int]]:
        """A fresh clamd for one run: its socket path and pid."""
        with running_clamd(self.workdir / label, max_threads=max(4, self.args.concurrency)) as clamd:
            # The helper's socket directory is root's 0700; amavisd's children (user amavis) connect too.
            clamd.socket_path.parent.chmod(0o755)
            clamd.socket_path.chmod(0o666)
            assert clamd.process is not None
            yield str(clamd.socket_path), clamd.process.pid

    def run_qsift(self, label: str) -> Result:
        with contextlib.ExitStack() as stack:
            clamd_socket, clamd_pid = stack.enter_context(self.clamd(f"{label}-clamd"))
            spam: tuple[str, str] | None = None
            scanners = [clamd_pid]
            if self.args.spam == "sa":
                # As many SpamAssassin processes as amavisd-new has children that each embed one: fewer
                # than the clients, on two cores, cost spamd 6 % less CPU a message (75 ms against 80
                # with 4 children or 8 for 8 clients, no child spawned or killed under the load either way).
                spamd = stack.enter_context(running_spamd(max_children=self.workers))
                spam = ("spamd", f"unix:{spamd.socket_path}")
                scanners.append(int((Path(spamd.socket_path).parent / "spamd.pid").read_text().split()[0]))
            elif self.args.spam == "rspamd":
                # As many scanner processes as spamd gets children: one per worker.
                rspamd = stack.enter_context(
                    running_rspamd(count=self.workers, db=self.workdir / "rspamd-db")
                )
                spam = ("rspamd", f"127.0.0.1:{rspamd.port}")
                scanners.append(rspamd.pid)
            home = self.workdir / label
            home.mkdir()

            def make(port: int, sink_port: int) -> Filter:
                return Qsift(
                    home,
                    port=port,
                    sink_port=sink_port,
                    clamd_socket=clamd_socket,
                    spam=spam,
                    concurrency=self.args.concurrency,
                    workers=self.workers,
                    virus_scan=self.args.virus_scan,
                )

            result, qsift = run_filter(
                "qsift", make, self.warmup, self.messages, self.args.concurrency, scanners
            )
            if spam is not None:
                result.scanner_pss = procs.pss_bytes(scanners[1])
        assert isinstance(qsift, Qsift)
        summary = r"\b(?:Passed|Blocked) ([A-Z0-9-]+)"
        result.categories = categories(qsift.log, summary)
        # Not the summary lines: a random mail_id may spell "fail" (rMTQDZLFaILl did).
        result.trouble = [
            line
            for line in qsift.log.read_text(errors="replace").splitlines()
            if "fail" in line.lower() and not re.search(summary, line)
        ]
        return result

    def run_amavisd(self, label: str) -> Result:
        with self.clamd(f"{label}-clamd") as (clamd_socket, clamd_pid):
            home = self.workdir / label
            home.mkdir()
            home.chmod(0o755)

            def make(port: int, sink_port: int) -> Filter:
                return Amavisd(
                    home,
                    port=port,
                    sink_port=sink_port,
                    servers=self.workers,
                    clamd_socket=clamd_socket,
                    sa_site=self.sa_site,
                    spam=self.args.spam != "off",
                )

            result, amavis = run_filter(
                "amavisd-new", make, self.warmup, self.messages, self.args.concurrency, [clamd_pid]
            )
        assert isinstance(amavis, Amavisd)
        result.categories = categories(amavis.log, r"\b(?:Passed|Blocked) ([A-Z0-9-]+)[^,]* \{")
        result.trouble = [
            line for line in amavis.log.read_text(errors="replace").splitlines() if "FAILED" in line
        ]
        return result


def print_run(r: Result) -> None:
    print(
        f"  {r.name:12s} {r.rate:7.1f} msg/s  p50 {r.p50:7.1f} ms  p99 {r.percentile(0.99):7.1f} ms"
        f"  CPU {r.cpu:6.1f} s + scanners {r.scanner_cpu:6.1f} s = {r.cpu_ms_per_message:6.1f} ms/msg"
        f"  tree RSS {mib(r.rss)} PSS {mib(r.pss)}  workers ({r.worker_processes}) RSS {mib(r.workers_rss)}"
        f" PSS {mib(r.workers_pss)}" + (f"  spam scanner PSS {mib(r.scanner_pss)}" if r.scanner_pss else "")
    )
    print(
        f"  {'':12s} sink: {r.sink_count} of {r.expected}, headers {r.marks}"
        f" ({r.expected_viruses} EICAR sent); summary lines {dict(sorted(r.categories.items()))}"
    )


#: Each ratio qsift / amavisd-new: its label and how it is taken from the two results.
RATIOS: dict[str, Callable[[Result, Result], float]] = {
    "msgs/s": lambda q, a: q.rate / a.rate,
    "CPU per msg (with scanners)": lambda q, a: q.cpu_ms_per_message / a.cpu_ms_per_message,
    "workers' PSS": lambda q, a: q.workers_pss / a.workers_pss,
    "workers' RSS": lambda q, a: q.workers_rss / a.workers_rss,
    "tree PSS (qsift + its spam scanner)": lambda q, a: (q.pss + q.scanner_pss) / a.pss,
}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="qsift's workers and amavisd-new's $max_servers, the same for both; default: --concurrency",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both filters")
    parser.add_argument(
        "--spam",
        choices=("off", "sa", "rspamd"),
        default="sa",
        help="off: no spam checks in either; sa: SpamAssassin (embedded in amavisd-new, spamd for qsift);"
        " rspamd: qsift with rspamd beside amavisd-new with SpamAssassin",
    )
    parser.add_argument(
        "--mix",
        choices=("corpus",),
        default="corpus",
        help="corpus: the public corpus, business mail with attachments and 4 EICAR (bench/mail_mix.py)",
    )
    parser.add_argument(
        "--virus-scan",
        choices=("parts", "message"),
        default="parts",
        help="what qsift gives clamd ([virus] scan): parts, the same work as amavisd-new's CONTSCAN of its"
        " parts directory (default), or the whole message for clamd to decode",
    )
    parser.add_argument("--warmup", type=int, default=0, help="default: 5 per client")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: amavisd drops to the amavis user and clamd must read its temp files")
    if shutil.which("amavisd", path="/usr/sbin") is None:
        raise SystemExit("amavisd-new is not installed (apt-get install amavisd-new)")
    workers = args.workers or args.concurrency
    pool = message_pool(eicar=True)
    workdir = Path(tempfile.mkdtemp(prefix="qsift-amavis-"))
    workdir.chmod(0o755)
    site = workdir / "sa-site"  # amavisd's SpamAssassin: the same site config as the spamd helper writes
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site)
    (site / "local.cf").write_text(LOCAL_CF)
    site.chmod(0o755)
    bench = Bench(
        args,
        workers,
        workdir,
        site,
        warmup=stamped(pool[::-1], args.warmup or 5 * args.concurrency, "warmup"),
        messages=stamped(pool, args.messages, "run"),
    )
    spam = {
        "off": "spam checks off",
        "sa": "SpamAssassin (amavisd-new embedded, qsift + spamd)",
        "rspamd": "amavisd-new with SpamAssassin embedded, qsift + rspamd",
    }[args.spam]
    print(
        f"{args.messages} messages of {len(pool)} distinct bodies ({args.mix} mix), {spam}, {workers} workers"
        f" each, {args.concurrency} concurrent SMTP clients, {args.rounds} rounds, {os.cpu_count()} CPUs,"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    rounds: list[tuple[Result, Result]] = []
    problems: list[str] = []
    try:
        if args.spam == "rspamd":
            print(f"rspamd compiled its rules in {compile_rules(workdir / 'rspamd-db'):.0f} s", flush=True)
        for number in range(1, args.rounds + 1):
            qsift_first = number % 2 == 1
            print(f"round {number} ({'qsift' if qsift_first else 'amavisd-new'} first)", flush=True)
            if qsift_first:
                q = bench.run_qsift(f"r{number}-qsift")
                a = bench.run_amavisd(f"r{number}-amavisd")
            else:
                a = bench.run_amavisd(f"r{number}-amavisd")
                q = bench.run_qsift(f"r{number}-qsift")
            for result in (q, a):
                print_run(result)
                problems += [f"round {number}, {what}" for what in result.problems()]
            if q.marks.get("virus") != a.marks.get("virus"):
                problems.append(
                    f"round {number}: virus alerts differ, qsift {q.marks.get('virus')},"
                    f" amavisd-new {a.marks.get('virus')}"
                )
            if q.marks.get("spam") != a.marks.get("spam"):
                print(
                    f"  note: spam flags differ, qsift {q.marks.get('spam')},"
                    f" amavisd-new {a.marks.get('spam')}"
                )
            print(
                "  ratios qsift / amavisd-new: "
                + ", ".join(f"{label} {ratio(q, a):.2f}" for label, ratio in RATIOS.items()),
                flush=True,
            )
            rounds.append((q, a))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"over {len(rounds)} rounds, ratio qsift / amavisd-new, median (min-max):")
    for label, ratio in RATIOS.items():
        print(f"  {label:30s} {spread([ratio(q, a) for q, a in rounds])}")
    for index, name in ((0, "qsift"), (1, "amavisd-new")):
        results = [pair[index] for pair in rounds]
        print(
            f"  {name}: msgs/s {spread([r.rate for r in results])},"
            f" CPU ms/msg {spread([r.cpu_ms_per_message for r in results])},"
            f" workers' PSS MiB {spread([r.workers_pss / (1 << 20) for r in results])},"
            f" workers' RSS MiB {spread([r.workers_rss / (1 << 20) for r in results])}"
        )
    if problems:
        raise SystemExit("NOT A VALID RUN: " + "; ".join(problems))
    if args.keep:
        print(f"logs and configs kept in {workdir}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
