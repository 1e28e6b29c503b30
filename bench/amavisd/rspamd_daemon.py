"""Debian's rspamd in the foreground for the side-by-side: its stock rules, local checks only, on free ports.

Many sites would put rspamd, not SpamAssassin, beside a content filter (issue 14), so the bench also runs
qsift with rspamd beside amavisd-new with its embedded SpamAssassin. This starts the packaged rspamd on
/etc/rspamd with a local configuration directory of its own (`LOCAL_CONFDIR`): the scanner, controller and
proxy workers on free loopback ports, `count` scanner processes, and the modules that would ask the network
(DNS lists, SPF, DKIM, DMARC, fuzzy hashes, map updates) turned off, as spamd runs with `--local`. Without a
Redis server rspamd turns off Bayes and the other Redis-backed modules by itself.

What DNS the rest still asks (hfilter looks up the host names of the envelope sender, the From: and the
HELO) goes to a Knot DNS of its own on loopback (tests/dns_server.py) that serves the bench's envelope
domains, never to the machine's resolver: the bench sends nothing past loopback, and a resolver that does
not answer held some messages for a second each.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.dns_server import running_knot
from tests.spamd_daemon import stop_daemon

RSPAMD = "/usr/bin/rspamd"
#: The zones of the bench's envelope (bench/amavisd/compare.py: a@example.org to b@example.net, HELO
#: bench.example.org): hosts with addresses and mail exchangers, as a real sender's domain has.
BENCH_ZONES = {
    "example.org": "@ A 127.0.0.1\n@ MX 10 mail\nmail A 127.0.0.1\nbench A 127.0.0.1",
    "example.net": "@ A 127.0.0.1\n@ MX 10 mail\nmail A 127.0.0.1",
}
USER = "_rspamd"
#: Modules that would look something up on the network; spamd's `--local` leaves out the like.
NETWORK_MODULES = (
    "asn",
    "arc",
    "dcc",
    "dkim",
    "dmarc",
    "emails",
    "fuzzy_check",
    "mx_check",
    "phishing",
    "rbl",
    "rspamd_update",
    "spf",
    "surbl",
    "url_redirector",
)


@dataclass
class Rspamd:
    port: int
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def available() -> bool:
    return Path(RSPAMD).exists()


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            return b"pong" in connection.recv(4096)
    except OSError:
        return False


@contextlib.contextmanager
def running_rspamd(*, count: int, db: Path, start_timeout: float = 120.0) -> Iterator[Rspamd]:
    """rspamd with `count` scanner processes; `db` (its DBDIR) keeps the compiled Hyperscan cache from one
    start to the next, as an installed rspamd's /var/lib/rspamd does."""
    with running_knot(BENCH_ZONES) as dns:
        yield from _running_rspamd(count=count, db=db, start_timeout=start_timeout, nameserver=dns.address)


def _running_rspamd(*, count: int, db: Path, start_timeout: float, nameserver: str) -> Iterator[Rspamd]:
    workdir = Path(tempfile.mkdtemp(prefix="qsift-rspamd-"))
    try:
        port = free_port()
        local = workdir / "local"
        (local / "override.d").mkdir(parents=True)
        (local / "local.d").mkdir()
        for worker, bind in (
            ("worker-normal.inc", f"127.0.0.1:{port}"),
            ("worker-controller.inc", f"127.0.0.1:{free_port()}"),
            ("worker-proxy.inc", f"127.0.0.1:{free_port()}"),
        ):
            extra = f"count = {count};\n" if worker == "worker-normal.inc" else ""
            (local / "override.d" / worker).write_text(f'bind_socket = "{bind}";\n{extra}')
        # Logging at info writes several lines per message; amavisd-new and qsift run at log level 0.
        (local / "local.d" / "logging.inc").write_text('level = "warning";\n')
        (local / "local.d" / "options.inc").write_text(f'dns {{ nameserver = ["{nameserver}"]; }}\n')
        for module in NETWORK_MODULES:
            (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        for sub in ("run", "log"):
            (workdir / sub).mkdir()
        db.mkdir(exist_ok=True)
        entry = pwd.getpwnam(USER)
        for path in [workdir, *workdir.rglob("*"), db]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        workdir.chmod(0o755)
        log = workdir / "log" / "rspamd.log"
        process = subprocess.Popen(
            [
                RSPAMD,
                "-f",
                "-u",
                USER,
                "-g",
                USER,
                "-c",
                "/etc/rspamd/rspamd.conf",
                f"--var=LOCAL_CONFDIR={local}",
                f"--var=DBDIR={db}",
                f"--var=RUNDIR={workdir / 'run'}",
                f"--var=LOGDIR={workdir / 'log'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=(workdir / "rspamd.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + start_timeout
            while not _ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    output = (workdir / "rspamd.out").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"rspamd did not answer on port {port}: {output}")
                time.sleep(0.2)
            yield Rspamd(port, process.pid, log)
        finally:
            stop_daemon(process, wait=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def compile_rules(db: Path, *, settle: float = 5.0, timeout: float = 180.0) -> float:
    """Start rspamd once and let it compile its rules into `db` (Hyperscan), so that the measured runs load
    them as a restarted rspamd does, not compile them while measured; the seconds it took."""
    began = time.monotonic()
    with running_rspamd(count=1, db=db):
        seen, since = -1, time.monotonic()
        while time.monotonic() < began + timeout:
            compiled = len(list(db.glob("*.hs")))
            if compiled != seen:
                seen, since = compiled, time.monotonic()
            elif compiled and time.monotonic() - since > settle:
                break
            time.sleep(0.5)
    return time.monotonic() - began
