"""Wall time of one `qsift-queue` run, as qmail-smtpd pays it for every message, beside bare Python's.

    .venv/bin/python -m bench.queue_startup --runs 200

Starts `qsift serve` with a maildir forward, then runs qsift-queue the way qmail-smtpd does (message on
fd 0, envelope on fd 1) N times in a row, and `python3 -c pass` N times, and prints the median and p90 of
each. The difference is what qsift-queue itself costs: imports, the QMQP exchange and the filter's work.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import free_port

MESSAGE = b"From: a@example.org\nTo: b@example.net\nSubject: startup\n\nhello\n"
ENVELOPE = b"Fa@example.org\0Tb@example.net\0\0"


def run_queue(binary: str, env: dict[str, str]) -> float:
    message_r, message_w = os.pipe()
    envelope_r, envelope_w = os.pipe()
    os.write(message_w, MESSAGE)
    os.close(message_w)
    os.write(envelope_w, ENVELOPE)
    os.close(envelope_w)
    started = time.perf_counter()
    # qmail-queue's interface: the message on fd 0, the envelope on fd 1.
    status = subprocess.call([binary], stdin=message_r, stdout=envelope_r, env=env)
    elapsed = time.perf_counter() - started
    os.close(message_r)
    os.close(envelope_r)
    assert status == 0, f"qsift-queue exited {status}"
    return elapsed


def run_python(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.check_call([sys.executable, "-c", "pass"], env=env)
    return time.perf_counter() - started


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
        f'log_level = 0\nstate_dir = "{workdir}/state"\n'
        f'[forward]\nmethod = "maildir:{workdir}/Maildir"\n'
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{port}"\n'
    )
    bindir = Path(sys.executable).parent
    daemon = subprocess.Popen(
        [str(bindir / "qsift"), "serve", "--config", str(workdir / "qsift.toml")], stderr=subprocess.PIPE
    )
    assert daemon.stderr is not None
    assert b"qsift ready" in daemon.stderr.readline()
    env = {**os.environ, "QMQPSERVERS": f"127.0.0.1:{port}"}
    try:
        for _ in range(10):  # warm the page cache and the bytecode cache
            run_queue(str(bindir / "qsift-queue"), env)
        queue = [run_queue(str(bindir / "qsift-queue"), env) for _ in range(args.runs)]
        python = [run_python(env) for _ in range(args.runs)]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    print(f"{args.runs} runs each, one message, QMQP to a local qsift with a maildir forward")
    q = describe("qsift-queue (whole exchange)", queue)
    p = describe("python3 -c pass", python)
    print(f"qsift-queue's own cost: {q - p:.1f} ms per message")


if __name__ == "__main__":
    main()
