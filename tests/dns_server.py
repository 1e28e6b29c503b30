"""A real DNS server for tests: Knot DNS (knotd) serving the test's own zones on a private loopback port.

    with running_knot({"example.test": ZONE_TEXT}) as server:
        resolver = Resolver(DnsSettings(nameservers=(server.address,)))

A zone is given as its records, one per line, relative to the zone's origin (`@`, `mail`, ...); the SOA
and NS records are added. TXT strings longer than 255 octets must be split by the test
(`txt_strings` does it), as in a real zone file. For a DNS timeout, `silent_nameserver()` is a
loopback port that takes questions and never answers.

knotd runs in the foreground as the invoking user, with its run and database directories in the test's
temporary directory; it is stopped afterwards. pytest.skip is raised when knotd is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 20.0
KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"

ZONE_HEAD = """\
$ORIGIN {origin}.
$TTL 300
@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300
@ NS ns.{origin}.
ns A 127.0.0.1
"""


@dataclass(frozen=True)
class DnsServer:
    host: str
    port: int
    directory: Path

    @property
    def address(self) -> str:
        """As `[dns] nameservers` takes it."""
        return f"{self.host}:{self.port}"


def txt_strings(text: str) -> str:
    """A TXT record's value as zone-file strings of at most 255 octets each."""
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS answers on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def _config(directory: Path, port: int, zones: Mapping[str, str]) -> str:
    lines = [
        "server:",
        f"    listen: 127.0.0.1@{port}",
        f"    rundir: {directory / 'run'}",
        "log:",
        "  - target: stderr",
        "    any: warning",
        "database:",
        f"    storage: {directory / 'db'}",
        "template:",
        "  - id: default",
        f"    storage: {directory / 'zones'}",
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    zonefile-load: whole",
        "    journal-content: none",
        "zone:",
    ]
    lines += [f"  - domain: {name}" for name in zones]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_knot(zones: Mapping[str, str]) -> Iterator[DnsServer]:
    """knotd serving `zones` (origin to records) on a free loopback port, until the block ends."""
    if not os.path.exists(KNOTD):
        pytest.skip("knotd (Debian package knot) is not installed")
    directory = Path(tempfile.mkdtemp(prefix="qsift-knot-"))
    port = free_udp_tcp_port()
    zones = {"ready.test": "", **zones}
    for sub in ("run", "db", "zones"):
        (directory / sub).mkdir()
    for origin, records in zones.items():
        text = ZONE_HEAD.format(origin=origin) + records + "\n"
        (directory / "zones" / f"{origin}.zone").write_text(text)
    (directory / "knot.conf").write_text(_config(directory, port, zones))
    log = (directory / "knotd.log").open("wb")
    process = subprocess.Popen(
        [KNOTD, "-c", str(directory / "knot.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_ready(port, process, directory)
        yield DnsServer("127.0.0.1", port, directory)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(port: int, process: subprocess.Popen[bytes], directory: Path) -> None:
    """Until the SOA of ready.test is served over UDP."""
    import dns.exception
    import dns.message
    import dns.query

    deadline = time.monotonic() + START_TIMEOUT
    question = dns.message.make_query("ready.test.", "SOA")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"knotd exited: {(directory / 'knotd.log').read_text()}")
        with contextlib.suppress(OSError, dns.exception.Timeout):
            dns.query.udp(question, "127.0.0.1", port=port, timeout=0.2)
            return
        time.sleep(0.05)
    raise RuntimeError(f"knotd did not answer in {START_TIMEOUT} s: {(directory / 'knotd.log').read_text()}")


@contextlib.contextmanager
def silent_nameserver() -> Iterator[str]:
    """`127.0.0.1:PORT`, where a UDP socket takes every question and answers none: a timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{udp.getsockname()[1]}"
