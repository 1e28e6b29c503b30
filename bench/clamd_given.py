"""clamd's CPU per message when it is given the whole message against the parts qsift decoded
(`[virus] scan = "message"` / `"parts"`), over the bench's message mix.

    .venv/bin/python -m bench.clamd_given [--rounds 2]

Each run gets a fresh clamd (tests/clamd_daemon.py, the test signature database), so no run finds the
messages in clamd's cache of clean files; the two ways alternate within a round. The parts are what qsift
sends: `decode_message(keep_leaves=True)`, and the whole message when the decoder left anything unread.
Every message is asked through qsift's own `ClamdScanner`, one after another on kept sessions, and each
run must find the same viruses.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
from pathlib import Path

from tests.clamd_daemon import running_clamd

from bench.amavisd.procs import cpu_seconds
from bench.mail_mix import message_pool
from qsift.checks.clamd import ClamdScanner
from qsift.decode.walk import decode_message


def units_of(raw: bytes, given: str) -> list[bytes]:
    if given == "message":
        return [raw]
    kept = decode_message(raw, keep_leaves=True).leaves
    assert kept is not None
    try:
        if not kept.complete or not kept.leaves:
            return [raw]
        units = []
        for leaf in kept.leaves:
            with leaf.open() as stream:
                units.append(stream.read())
        return units
    finally:
        kept.remove()


async def scan_all(address: str, messages: list[list[bytes]]) -> int:
    scanner = ClamdScanner("clamd", address, sessions=1)
    infected = 0
    try:
        for units in messages:
            found = False
            for unit in units:
                result = await scanner.scan(io.BytesIO(unit), len(unit))
                assert not result.error, result.error
                found = found or bool(result.infected)
            infected += found
    finally:
        await scanner.close()
    return infected


def run(given: str, messages: list[list[bytes]], workdir: Path) -> tuple[float, int]:
    with running_clamd(workdir) as clamd:
        assert clamd.process is not None
        before = cpu_seconds(clamd.process.pid)
        infected = asyncio.run(scan_all(clamd.unix_address, messages))
        spent = cpu_seconds(clamd.process.pid) - before
    return spent / len(messages) * 1000, infected


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pool = [raw for _, raw in message_pool(eicar=True)]
    prepared = {given: [units_of(raw, given) for raw in pool] for given in ("message", "parts")}
    parts = sum(len(units) for units in prepared["parts"])
    print(f"{len(pool)} messages, mean {sum(map(len, pool)) / len(pool) / 1000:.0f} kB; {parts} parts sent")
    spent: dict[str, list[float]] = {"message": [], "parts": []}
    found: dict[str, set[int]] = {"message": set(), "parts": set()}
    with tempfile.TemporaryDirectory(prefix="qsift-bench-clamd-") as directory:
        for round_number in range(args.rounds):
            order = ("message", "parts") if round_number % 2 == 0 else ("parts", "message")
            for given in order:
                ms, infected = run(given, prepared[given], Path(directory) / f"{given}-{round_number}")
                spent[given].append(ms)
                found[given].add(infected)
                print(
                    f"round {round_number + 1}: {given:8} clamd CPU {ms:.2f} ms a message, {infected} found"
                )
    assert found["message"] == found["parts"], found
    assert len(found["parts"]) == 1, found
    for given, values in spent.items():
        print(f"{given:8} median {statistics.median(values):.2f} ms ({min(values):.2f}-{max(values):.2f})")
    ratio = [p / m for p, m in zip(spent["parts"], spent["message"], strict=True)]
    print(f"parts / message: {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")


if __name__ == "__main__":
    main()
