"""Pass-through throughput and latency: QMQP clients -> qsift -> SMTP sink, beside clients -> sink.

    .venv/bin/python -m bench.passthrough --messages 2000 --concurrency 8
    .venv/bin/python -m bench.passthrough --mix corpus --messages 860 --concurrency 4

Starts a real `qsift serve` process (log_level 0) forwarding to a counting SMTP sink in a process of
its own (bench/sink.py), sends the same corpus of messages through it with N concurrent QMQP clients,
then sends the same messages straight to the sink with N concurrent SMTP clients (qsift's own SMTP
client: the forward path without the filter), and prints messages/s and p50/p99 latency for both, and
their ratio (`--idle-sessions 0`: qsift opens a connection per message, as the direct run does); then
the CPU time per message of qsift's process tree, of the sink and of the clients (from
/proc), and qsift's CPU per message as a multiple of the sink's.

The sink is bare asyncio and costs a fraction of a millisecond a message. Its cost is printed beside
qsift's because it decides what the ratio of rates means: the aiosmtpd sink used before cost several times
as much, so the direct run was bound by the sink and the ratio (0.55) hid much of qsift's cost
(issue 14). The run is void unless the sink counted every message exactly once.

`--mix synthetic` (the default) sends generated text of 2-60 kB; `--mix corpus` sends bench/mail_mix.py's
mix, the shared corpus and business mail with attachments (issue 14's target 4 names it), each message
stamped with a header of its own so none is answered from the outcome record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import free_port, qmqp_send

from bench.amavisd import procs
from bench.mail_mix import message_pool, stamped
from qsift.act.smtp_forward import SmtpTimeouts, forward_via_smtp, parse_forward_method
from qsift.model import Envelope, Recipient
from qsift.spool import MessageSpool


def bench_messages(mix: str, count: int, tag: str) -> list[bytes]:
    """`count` messages of the mix, distinct from those of another `tag`."""
    if mix == "corpus":
        return stamped(message_pool(), count, tag)
    return [m.replace(b"Subject: bench", b"Subject: " + tag.encode()) for m in corpus(count)]


def corpus(count: int) -> list[bytes]:
    sizes = [2_000, 5_000, 20_000, 60_000]
    return [
        b"From: a@example.org\nTo: b@example.net\nSubject: bench %d\nMessage-ID: <%d@bench>\n\n" % (i, i)
        + (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * (sizes[i % 4] // 58))
        for i in range(count)
    ]


async def run_clients(messages: list[bytes], concurrency: int, send: object) -> tuple[float, list[float]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            message = queue.get_nowait()
            started = time.perf_counter()
            await send(message)  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def own_cpu() -> float:
    """CPU seconds of this process: the clients."""
    times = os.times()
    return times.user + times.system


def cpu_counters(qsift: int, sink: int) -> dict[str, float]:
    return {"qsift": procs.cpu_seconds(qsift), "sink": procs.cpu_seconds(sink), "clients": own_cpu()}


def cpu_per_message(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds of CPU per message for each party, between two readings of `cpu_counters`."""
    return {who: (after[who] - before[who]) * 1000 / count for who in before}


def report(name: str, elapsed: float, latencies: list[float]) -> float:
    ordered = sorted(latencies)
    rate = len(ordered) / elapsed
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    print(f"{name:28s} {rate:8.1f} msg/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return rate


async def main_async(args: argparse.Namespace) -> None:
    sink_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", str(sink_port)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    workdir = Path(tempfile.mkdtemp(prefix="qsift-bench-"))
    qmqp_port = free_port()
    (workdir / "qsift.toml").write_text(
        f'log_level = 0\nallow_root = true\nstate_dir = "{workdir}/state"\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{sink_port}"\nidle_sessions = {args.idle_sessions}\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{qmqp_port}"\n'
    )
    qsift = subprocess.Popen(
        [str(Path(sys.executable).parent / "qsift"), "serve", "--config", str(workdir / "qsift.toml")],
        stderr=subprocess.DEVNULL,
    )
    messages = bench_messages(args.mix, args.messages, "bench")
    try:
        await _wait_port(qmqp_port)
        answers: list[str] = []

        async def via_qsift(message: bytes) -> None:
            answers.append(await qmqp_send(qmqp_port, message, b"a@example.org", [b"b@example.net"]))

        target = parse_forward_method(f"smtp:[127.0.0.1]:{sink_port}")
        envelope = Envelope("a@example.org", (Recipient("b@example.net"),))

        async def direct(message: bytes) -> None:
            with MessageSpool.from_bytes(message) as spool:
                result = await forward_via_smtp(
                    target, envelope, spool, helo_name="bench", timeouts=SmtpTimeouts()
                )
            assert result.all_accepted

        # Warm up with other messages: a repeat of a timed one would be answered from the outcome record.
        warmup = bench_messages(args.mix, 50, "warm-up")
        await run_clients(warmup, args.concurrency, via_qsift)
        before = cpu_counters(qsift.pid, sink.pid)
        elapsed_q, lat_q = await run_clients(messages, args.concurrency, via_qsift)
        middle = cpu_counters(qsift.pid, sink.pid)
        elapsed_d, lat_d = await run_clients(messages, args.concurrency, direct)
        after = cpu_counters(qsift.pid, sink.pid)
        workers = len(procs.children(qsift.pid))
        assert all(a.startswith("K") for a in answers), {a[:60] for a in answers if not a.startswith("K")}
    finally:
        qsift.send_signal(signal.SIGTERM)
        qsift.wait(30)
        sink.send_signal(signal.SIGTERM)
        counted, _ = sink.communicate(timeout=30)
    expected = len(warmup) + 2 * len(messages)
    if int(counted.strip() or -1) != expected:
        raise SystemExit(f"NOT A VALID RUN: the sink counted {counted.strip()} of {expected} messages")
    megabytes = sum(len(m) for m in messages) / 1e6
    what = "the corpus mix" if args.mix == "corpus" else "synthetic text, 2-60 kB"
    print(
        f"{len(messages)} messages ({what}, {megabytes:.1f} MB), {args.concurrency} concurrent clients,"
        f" one qsift process tree ({workers} worker(s))"
    )
    rate_q = report("QMQP -> qsift -> SMTP sink", elapsed_q, lat_q)
    rate_d = report("SMTP -> sink (direct)", elapsed_d, lat_d)
    print(f"qsift pass-through / direct: {rate_q / rate_d:.2f}")
    through = cpu_per_message(before, middle, len(messages))
    alone = cpu_per_message(middle, after, len(messages))
    print("CPU per message, ms:")
    print(
        f"  through qsift: qsift {through['qsift']:.2f}, sink {through['sink']:.2f},"
        f" clients {through['clients']:.2f}"
    )
    print(f"  direct:        sink {alone['sink']:.2f}, clients {alone['clients']:.2f}")
    if through["sink"] > 0:  # /proc counts in clock ticks: too few messages may read as none
        print(f"qsift's CPU per message / the sink's: {through['qsift'] / through['sink']:.1f}")


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("qsift did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--mix",
        choices=("synthetic", "corpus"),
        default="synthetic",
        help="synthetic: generated text of 2-60 kB; corpus: bench/mail_mix.py's corpus and business mail",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--idle-sessions", type=int, default=4, help="[forward] idle_sessions; 0: a connection per message"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
