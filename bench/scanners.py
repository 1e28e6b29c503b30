"""Messages per second through `qsift scan` with clamd, with spamd, with both, beside clamdscan and spamc
run once per message on the same messages; and what clamd connection reuse gains.

    .venv/bin/python -m bench.scanners [--messages 200]

clamd runs on the test signature database in tests/data/clamav and spamd with Debian's rules, local tests
only, both started here on private sockets (tests/clamd_daemon.py, tests/spamd_daemon.py). The messages
are the SpamAssassin public corpus and rspamd's test messages from ../shared/corpus when it is there.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.clamd_daemon import running_clamd
from tests.spamd_daemon import running_spamd

from qsift.checks.clamd import ClamdScanner

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
QSIFT = str(Path(sys.executable).parent / "qsift")


def messages(count: int, directory: Path) -> list[Path]:
    sources = sorted((CORPUS / "spamassassin-public-corpus").rglob("*")) + sorted(
        (CORPUS / "rspamd").glob("*")
    )
    files = [p for p in sources if p.is_file() and p.stat().st_size < 400_000][:count]
    copies = []
    for index, source in enumerate(files):
        copy = directory / f"m{index:04d}.eml"
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    return copies


def timed(command: list[str], **kwargs: object) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=False, capture_output=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started


def per_message(files: list[Path], command: list[str]) -> float:
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as stdin:
            subprocess.run(command, stdin=stdin, capture_output=True, check=False)
    return time.perf_counter() - started


async def reuse(address: str, files: list[Path], sessions: int) -> float:
    scanner = ClamdScanner("clamd", address, sessions=sessions)
    bodies = [p.read_bytes() for p in files]
    started = time.perf_counter()
    for body in bodies:
        result = await scanner.scan(io.BytesIO(body), len(body))
        assert not result.error, result
    elapsed = time.perf_counter() - started
    await scanner.close()
    return elapsed


def line(name: str, count: int, seconds: float) -> None:
    print(f"  {name:<46} {seconds:6.2f} s  {count / seconds:7.1f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsift-bench-"))
    files = messages(args.messages, work)
    count = len(files)
    with running_clamd(work / "clamd", tcp=True) as clamd, running_spamd(max_children=2) as spamd:
        configs = {
            "clamd": f'[[virus.scanners]]\ntype = "clamd"\naddress = "{clamd.unix_address}"\n',
            "spamd": f'[spam]\ntype = "spamd"\naddress = "{spamd.unix_address}"\nmax_size = 400000\n',
        }
        configs["both"] = configs["clamd"] + configs["spamd"]
        print(f"{count} messages ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB), sequential")
        for name, text in configs.items():
            config = work / f"{name}.toml"
            config.write_text(text)
            line(
                f"qsift scan, {name}",
                count,
                timed([QSIFT, "scan", "--json", "--config", str(config), *map(str, files)]),
            )
        line(
            "clamdscan --stream, once per message",
            count,
            per_message(
                files, ["clamdscan", f"--config-file={clamd.config}", "--stream", "--no-summary", "-"]
            ),
        )
        line(
            "spamc -c, once per message",
            count,
            per_message(files, ["spamc", "-U", spamd.socket_path, "-c", "-s", "400000"]),
        )
        none = work / "none.toml"
        none.write_text("")
        line(
            "qsift scan, no scanner (decode and checks only)",
            count,
            timed([QSIFT, "scan", "--json", "--config", str(none), *map(str, files)]),
        )
        print("clamd connection reuse (ClamdScanner, sequential, in one process):")
        for address, label in ((clamd.unix_address, "unix socket"), (clamd.tcp_address, "TCP")):
            for sessions in (4, 0):
                seconds = asyncio.run(reuse(address, files, sessions))
                line(f"{label}, {'session reuse' if sessions else 'new connection per scan'}", count, seconds)


if __name__ == "__main__":
    main()
