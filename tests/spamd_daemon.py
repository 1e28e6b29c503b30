"""A real SpamAssassin spamd for tests: started in the foreground, local tests only, stopped afterwards.

    with running_spamd() as spamd:
        SpamdScanner("sa", f"unix:{spamd.socket_path}")

spamd runs with `--local` (no DNS, no network rules), its own site config directory (Debian's .pre
files, which load the plugins, plus a local.cf turning off Bayes and the network tests), a unix socket
and a TCP port on 127.0.0.1, two children, and per-user prefs from `users/<name>/user_prefs` so a test
can see the `User:` header arrive (alice's required score is 2.5, everyone else's 5.0).

Debian's spamassassin package ships its rules in /usr/share/spamassassin (GTUBE is in 20_body_tests.cf,
scored 1000 in 50_scores.cf), so no sa-update is needed. With the rules sa-compile'd at install time
spamd answers PING about one second after it starts; without them, a few seconds more.

pytest.skip is raised when spamd is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: spamd needs only about a second with compiled rules, 10-20 s compiling them on a slow machine.
START_TIMEOUT = 60.0

LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass(frozen=True)
class Spamd:
    socket_path: str
    host: str
    port: int
    log_path: Path
    #: Seconds from starting the process to the first answered PING.
    start_seconds: float

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def spamd_path() -> str | None:
    return shutil.which("spamd") or next(iter(glob.glob("/usr/sbin/spamd")), None)


@contextlib.contextmanager
def running_spamd(*, max_children: int = 2, options: tuple[str, ...] = ()) -> Iterator[Spamd]:
    binary = spamd_path()
    if binary is None:
        pytest.skip("spamd is not installed (apt-get install spamassassin spamc)")
    # Not pytest's tmp_path: that is mode 0700 under root, and spamd drops to another user.
    workdir = Path(tempfile.mkdtemp(prefix="qsift-spamd-"))
    try:
        user = _prepare(workdir)
        port = _free_port()
        socket_path = str(workdir / "spamd.sock")
        log_path = workdir / "spamd.log"
        command = [
            binary,
            "--local",
            "--syslog=stderr",
            "--nouser-config",
            f"--virtual-config-dir={workdir}/users/%u",
            f"--max-children={max_children}",
            f"--siteconfigpath={workdir}/conf",
            f"--helper-home-dir={workdir}/home",
            f"--socketpath={socket_path}",
            f"--listen=127.0.0.1:{port}",
            f"--pidfile={workdir}/spamd.pid",
            *options,
        ]
        if user is not None:
            command.append(f"--username={user}")
        started = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir, start_new_session=True
            )
        try:
            _wait_for_pong(process, socket_path, log_path)
            yield Spamd(socket_path, "127.0.0.1", port, log_path, time.monotonic() - started)
        finally:
            stop_daemon(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _prepare(workdir: Path) -> str | None:
    """Write the config; when root, hand the directory to the user spamd will run as."""
    conf = workdir / "conf"
    conf.mkdir()
    for pre in glob.glob("/etc/spamassassin/*.pre"):
        shutil.copy(pre, conf)
    (conf / "local.cf").write_text(LOCAL_CF)
    (workdir / "home").mkdir()
    (workdir / "users" / "alice").mkdir(parents=True)
    (workdir / "users" / "alice" / "user_prefs").write_text("required_score 2.5\n")
    if os.geteuid() != 0:
        return None
    # spamd refuses to check mail as root; Debian's package creates debian-spamd.
    user = "debian-spamd"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        user = "nobody"
        entry = pwd.getpwnam(user)
    workdir.chmod(0o755)
    for path in [workdir, *workdir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return user


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_pong(process: subprocess.Popen[bytes], socket_path: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"spamd exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if ping(socket_path):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"spamd did not answer PING within {START_TIMEOUT:g}s:\n{log_path.read_text()[-3000:]}"
    )


def ping(socket_path: str) -> bool:
    """One blocking PING over the unix socket; True on PONG."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            sock.connect(socket_path)
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b" 0 PONG" in sock.recv(100)
    except OSError:
        return False


def stop_daemon(process: subprocess.Popen[bytes], wait: float = 10.0) -> None:
    """SIGTERM a daemon we started in its own session (it stops its children); its process group if it
    lingers past `wait` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    with contextlib.suppress(ProcessLookupError):
        # Children left behind by a killed parent are in the session spamd was started in.
        os.killpg(process.pid, signal.SIGTERM)
