"""Wall time of one `qsift-queue` run, as qmail-smtpd pays it for every message, beside bare Python's.

    .venv/bin/python -m bench.queue_startup --runs 200

Starts `qsift serve` with a maildir forward, then runs qsift-queue the way qmail-smtpd does (message on
fd 0, envelope on fd 1) N times, each run followed by `python3 -c pass`, and prints the median and p90 of
each. The difference is what qsift-queue itself costs: imports, the QMQP exchange and the filter's work.
It also times the same exchange from a client already running (tests/harness.py's `qmqp_send`, a
distinct message each time, interleaved with the qsift-queue runs), which splits that difference into
the daemon's share (filter, maildir delivery with its fsyncs, outcome record) and qsift-queue's start-up.

Every run, warm-up included, sends a message of its own (its own Message-ID and a counter in the body).
qsift answers an identical retry of a delivered message from its outcome record (duplicate protection,
`dedupe_window`) without filtering or forwarding it again; with the same message every time, every run
after the first measured that short cut instead of the exchange qmail-smtpd pays for (issue 14). The
script checks that the maildir holds one message per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import free_port, qmqp_send

ENVELOPE = b"Fa@example.org\0Tb@example.net\0\0"
WARMUP = 10


def message(number: int) -> bytes:
    """The `number`th message of the run: no two are byte-identical, so none is a retry."""
    return (
        b"From: a@example.org\nTo: b@example.net\nSubject: startup %d\n"
        b"Message-ID: <startup-%d.%d@bench.example.org>\n\nhello, message %d\n"
        % (number, os.getpid(), number, number)
    )


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children: on a shared machine, steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_queue(binary: str, env: dict[str, str], number: int, cpu: list[float]) -> float:
    message_r, message_w = os.pipe()
    envelope_r, envelope_w = os.pipe()
    os.write(message_w, message(number))
    os.close(message_w)
    os.write(envelope_w, ENVELOPE)
    os.close(envelope_w)
    started, used = time.perf_counter(), children_cpu()
    # qmail-queue's interface: the message on fd 0, the envelope on fd 1.
    status = subprocess.call([binary], stdin=message_r, stdout=envelope_r, env=env)
    elapsed = time.perf_counter() - started
    cpu.append(children_cpu() - used)
    os.close(message_r)
    os.close(envelope_r)
    assert status == 0, f"qsift-queue exited {status}"
    return elapsed


def run_in_process(port: int, number: int) -> float:
    """The same exchange from a client that is already running: the daemon's share alone."""
    started = time.perf_counter()
    answer = asyncio.run(qmqp_send(port, message(number), b"a@example.org", [b"b@example.net"]))
    elapsed = time.perf_counter() - started
    assert answer.startswith("K"), answer
    return elapsed


def run_python(env: dict[str, str], cpu: list[float]) -> float:
    started, used = time.perf_counter(), children_cpu()
    subprocess.check_call([sys.executable, "-c", "pass"], env=env)
    elapsed = time.perf_counter() - started
    cpu.append(children_cpu() - used)
    return elapsed


def wait_until_ready(daemon: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """The parent logs "qsift ready" once every worker serves; the workers' own lines may come first."""
    deadline = time.monotonic() + timeout
    while b"qsift ready" not in log.read_bytes():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise SystemExit(f"qsift did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def describe(name: str, times: list[float]) -> float:
    times.sort()
    median = statistics.median(times) * 1000
    p90 = times[int(len(times) * 0.9)] * 1000
    print(f"{name:<34} median {median:6.1f} ms   p90 {p90:6.1f} ms")
    return median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="qsift-bench-"))
    port = free_port()
    (workdir / "qsift.toml").write_text(
        f'log_level = 0\nallow_root = true\nstate_dir = "{workdir}/state"\n'
        f'[forward]\nmethod = "maildir:{workdir}/Maildir"\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n'
    )
    bindir = Path(sys.executable).parent
    log = workdir / "qsift.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(bindir / "qsift"), "serve", "--config", str(workdir / "qsift.toml")], stderr=out
        )
    wait_until_ready(daemon, log)
    env = {**os.environ, "QMQPSERVERS": f"127.0.0.1:{port}"}
    queue_binary = str(bindir / "qsift-queue")
    try:
        for number in range(WARMUP):  # warm the page cache and the bytecode cache
            run_queue(queue_binary, env, number, [])
        queue: list[float] = []
        exchange: list[float] = []
        queue_cpu: list[float] = []
        python: list[float] = []
        python_cpu: list[float] = []
        # Interleaved, so that the other work on a shared machine weighs on each alike.
        for number in range(args.runs):
            queue.append(run_queue(queue_binary, env, WARMUP + 2 * number, queue_cpu))
            exchange.append(run_in_process(port, WARMUP + 2 * number + 1))
            python.append(run_python(env, python_cpu))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    delivered = len(list((workdir / "Maildir" / "new").iterdir()))
    if delivered != WARMUP + 2 * args.runs:
        raise SystemExit(f"NOT A VALID RUN: {delivered} messages delivered for {WARMUP + 2 * args.runs} runs")
    print(f"{args.runs} runs each, a distinct message each run, QMQP to a local qsift with a maildir forward")
    q = describe("qsift-queue (whole exchange)", queue)
    p = describe("python3 -c pass", python)
    e = describe("the exchange alone, in-process", exchange)
    print(f"qsift-queue's own cost: {q - p:.1f} ms per message, of it the daemon's {e:.1f} ms")
    print(f"whole exchange / python3 -c pass: {q / p:.2f}")
    qc = describe("CPU of qsift-queue's process", queue_cpu)
    pc = describe("CPU of python3 -c pass", python_cpu)
    print(f"CPU, qsift-queue / python3 -c pass: {qc / pc:.2f}")


if __name__ == "__main__":
    main()
