"""qsift beside amavisd-new: same machine, same messages, same scanners, one run, ratios.

    .venv/bin/python -m bench.amavisd.compare --messages 300 --concurrency 4 --workers 4

Both filters run the same number of worker processes: qsift's `workers` is amavisd-new's `$max_servers`
(`--workers`, by default as many as clients). Left to its default (one per CPU), qsift ran 2 workers
beside amavisd-new's 4 children and the memory ratio compared unequal setups (issue 14); the report
states how many each side was given and how many were running after the load, and a mismatch makes the
run invalid.

Starts one real clamd (tests/clamd_daemon.py, the test signature database) and one real spamd
(tests/spamd_daemon.py, local tests only, as many children as clients), then for each filter in turn:
a counting SMTP sink in its own process (bench/sink.py, bare asyncio), the
filter with an SMTP listener on loopback forwarding to the sink, a warm-up, and the same N messages sent
by C concurrent SMTP clients (qsift's own client). It checks every message was accepted and the sink
counted them all, reads both filters' summary log lines to show what each made of the messages, and prints
messages/s, p50/p99 latency, CPU time and resident memory of each filter's process tree, with the ratios
qsift / amavisd-new. Figures on a small shared VM move by tens of percent from run to run.

amavisd-new embeds SpamAssassin (the master loads and compiles the rules, each child checks in-process);
qsift asks spamd. Both use the same SpamAssassin configuration (Debian's .pre files, no Bayes, no network
tests). Virus checks go to the same clamd socket: amavisd-new sends CONTSCAN of its decoded-parts
directory, qsift streams the whole message (INSTREAM) and lets clamd decode it. Must run as root: amavisd
drops to the `amavis` user, clamd runs as root to read amavisd's temp files.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.clamd_daemon import running_clamd
from tests.spamd_daemon import LOCAL_CF, running_spamd

from bench.amavisd import procs
from bench.amavisd.amavis import Amavisd
from bench.amavisd.qsift_daemon import Qsift
from bench.mail_mix import message_pool, stamped
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
    rss: int = 0
    pss: int = 0
    cpu: float = 0.0
    workers: int = 0
    #: Worker processes found running (children of the parent or master) after the measured load.
    worker_processes: int = 0
    categories: collections.Counter[str] = field(default_factory=collections.Counter)
    trouble: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, int(len(ordered) * fraction) - 1)] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def running_workers(daemon: Filter, timeout: float = 5.0) -> int:
    """How many children the daemon's parent has, given a moment to replace one that just retired
    (amavisd-new's children leave after `$max_requests` messages)."""
    assert daemon.process is not None
    deadline = time.monotonic() + timeout
    while True:
        found = len(procs.children(daemon.process.pid))
        if found == daemon.workers or time.monotonic() > deadline:
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
        [sys.executable, "-m", "bench.sink", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        raise SystemExit("the sink did not start")
    return sink, port


def stop_sink(sink: subprocess.Popen[str]) -> int:
    sink.send_signal(signal.SIGTERM)
    out, _ = sink.communicate(timeout=30)
    return int(out.strip())


def run_filter(
    name: str,
    make: object,
    warmup: list[bytes],
    messages: list[bytes],
    concurrency: int,
    extra_tree: int | None = None,
) -> tuple[Result, Filter]:
    """Start a sink and the filter (`make(port, sink_port)`), send warm-up and measured load, measure."""
    result = Result(name, expected=len(warmup) + len(messages))
    sink, sink_port = start_sink()
    port = free_port()
    daemon: Filter = make(port, sink_port)  # type: ignore[operator]
    daemon.start()
    try:
        started_in = wait_for_port(port, daemon)
        print(f"{name}: listening after {started_in:.1f} s", flush=True)
        refused = asyncio.run(send_all(port, warmup, concurrency, None))
        assert daemon.process is not None
        cpu_before = procs.cpu_seconds(daemon.process.pid)
        extra_before = procs.cpu_seconds(extra_tree) if extra_tree else 0.0
        refused += asyncio.run(send_all(port, messages, concurrency, result))
        result.cpu = procs.cpu_seconds(daemon.process.pid) - cpu_before
        if extra_tree:
            result.cpu += procs.cpu_seconds(extra_tree) - extra_before
        result.rss = procs.rss_bytes(daemon.process.pid)
        result.pss = procs.pss_bytes(daemon.process.pid)
        result.refused = refused
        result.workers = daemon.workers
        result.worker_processes = running_workers(daemon)
    finally:
        daemon.stop()
        result.sink_count = stop_sink(sink)
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


def print_report(
    args: argparse.Namespace, results: list[Result], memory: dict[str, int], pool_size: int
) -> None:
    q, a = results
    print()
    print(
        f"{args.messages} messages ({pool_size} distinct bodies: SpamAssassin public corpus, rspamd test mail"
        f" < 400 kB, generated business mail with attachments of 2-500 kB, a few up to 10 MB),"
        f" {args.concurrency} concurrent SMTP clients, {os.cpu_count()} CPUs"
    )
    print(
        f"worker processes: qsift workers = {q.workers} ({q.worker_processes} running after the load),"
        f" amavisd-new $max_servers = {a.workers} ({a.worker_processes} children running after the load)"
    )
    print(f"{'':34s} {'msg/s':>8s} {'p50 ms':>9s} {'p99 ms':>9s} {'CPU s':>7s} {'RSS':>9s} {'PSS':>9s}")
    for r, label in (
        (q, "qsift (+ spamd CPU)"),
        (a, "amavisd-new (SA embedded)"),
    ):
        print(
            f"{label:34s} {r.rate:8.1f} {r.p50:9.1f} {r.percentile(0.99):9.1f} {r.cpu:7.1f}"
            f" {mib(r.rss):>9s} {mib(r.pss):>9s}"
        )
    print(
        f"{'ratio qsift / amavisd-new':34s} {q.rate / a.rate:8.2f} {q.p50 / a.p50:9.2f}"
        f" {q.percentile(0.99) / a.percentile(0.99):9.2f} {q.cpu / a.cpu:7.2f}"
    )
    print()
    print("resident memory at the end (sum of each process tree's RSS; PSS splits shared pages):")
    for label, value in memory.items():
        print(f"  {label:44s} {mib(value):>9s}")
    print(
        f"  ratio (qsift + spamd) / amavisd-new: RSS {memory['qsift + spamd, RSS'] / a.rss:.2f},"
        f" PSS {memory['qsift + spamd, PSS'] / a.pss:.2f}"
    )
    print()
    for r in results:
        print(f"{r.name}: sink counted {r.sink_count} of {r.expected}; refused {len(r.refused)}")
        print(f"  summary lines: {dict(sorted(r.categories.items()))}")
        for line in r.trouble[:5]:
            print(f"  trouble: {line}")


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
    parser.add_argument("--warmup", type=int, default=0, help="default: 5 per client")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: amavisd drops to the amavis user and clamd must read its temp files")
    if shutil.which("amavisd", path="/usr/sbin") is None:
        raise SystemExit("amavisd-new is not installed (apt-get install amavisd-new)")
    workers = args.workers or args.concurrency
    pool = message_pool()
    messages = stamped(pool, args.messages, "run")
    warmup = stamped(pool[::-1], args.warmup or 5 * args.concurrency, "warmup")
    workdir = Path(tempfile.mkdtemp(prefix="qsift-amavis-"))
    workdir.chmod(0o755)
    site = workdir / "sa-site"  # amavisd's SpamAssassin: the same site config as the spamd helper writes
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site)
    (site / "local.cf").write_text(LOCAL_CF)
    site.chmod(0o755)
    try:
        with (
            running_clamd(workdir / "clamd", max_threads=max(4, args.concurrency)) as clamd,
            running_spamd(max_children=args.concurrency) as spamd,
        ):
            # The helper's socket directory is root's 0700; amavisd's children (user amavis) connect too.
            clamd.socket_path.parent.chmod(0o755)
            clamd.socket_path.chmod(0o666)
            spamd_pid = int((Path(spamd.socket_path).parent / "spamd.pid").read_text().split()[0])

            def make_qsift(port: int, sink_port: int) -> Qsift:
                return Qsift(
                    workdir,
                    port=port,
                    sink_port=sink_port,
                    clamd_socket=str(clamd.socket_path),
                    spamd_socket=spamd.socket_path,
                    concurrency=args.concurrency,
                    workers=workers,
                )

            def make_amavis(port: int, sink_port: int) -> Amavisd:
                return Amavisd(
                    workdir,
                    port=port,
                    sink_port=sink_port,
                    servers=workers,
                    clamd_socket=str(clamd.socket_path),
                    sa_site=site,
                )

            q, qsift = run_filter("qsift", make_qsift, warmup, messages, args.concurrency, spamd_pid)
            assert isinstance(qsift, Qsift)
            memory = {
                "qsift, RSS": q.rss,
                "spamd (qsift's spam scanner), RSS": procs.rss_bytes(spamd_pid),
            }
            memory["qsift + spamd, RSS"] = q.rss + memory["spamd (qsift's spam scanner), RSS"]
            memory["qsift + spamd, PSS"] = q.pss + procs.pss_bytes(spamd_pid)
            q.categories = categories(qsift.log, r"\b(?:Passed|Blocked) ([A-Z0-9-]+)")
            q.trouble = [
                line for line in qsift.log.read_text(errors="replace").splitlines() if "fail" in line.lower()
            ]

            a, amavis = run_filter("amavisd-new", make_amavis, warmup, messages, args.concurrency)
            assert isinstance(amavis, Amavisd)
            memory["amavisd-new (master + children), RSS"] = a.rss
            memory["amavisd-new (master + children), PSS"] = a.pss
            memory["clamd (shared by both), RSS"] = procs.rss_bytes(clamd.process.pid) if clamd.process else 0
            a.categories = categories(amavis.log, r"\b(?:Passed|Blocked) ([A-Z0-9-]+)[^,]* \{")
            a.trouble = [
                line for line in amavis.log.read_text(errors="replace").splitlines() if "FAILED" in line
            ]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(args, [q, a], memory, len(pool))
    problems = [
        f"{r.name}: {what}"
        for r in (q, a)
        for what in (
            [f"sink counted {r.sink_count}, expected {r.expected}"] if r.sink_count != r.expected else []
        )
        + ([f"{len(r.refused)} refused, e.g. {r.refused[0]}"] if r.refused else [])
        + ([f"{len(r.trouble)} scanner failures"] if r.trouble else [])
        + (
            [f"{r.worker_processes} worker processes running, {r.workers} configured"]
            if r.worker_processes != r.workers
            else []
        )
    ]
    if problems:
        raise SystemExit("NOT A VALID RUN: " + "; ".join(problems))
    if args.keep:
        print(f"logs and configs kept in {workdir}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
