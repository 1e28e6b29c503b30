"""A real clamd for tests, in the foreground, on the tiny signature database of tests/data/clamav.

    with running_clamd(tmp_path, tcp=True) as clamd:
        scanner = ClamdScanner("clamav", clamd.unix_address)

Everything clamd writes (socket, pid file, log, temporary files, the database copy) goes under the test's
tmp directory, so tests never touch a system clamd and can run side by side. Tests that need clamd are
skipped, with the reason, when it is not installed (Debian: clamav-daemon).

The helper talks to clamd with plain sockets rather than qsift's codec, so a bug in the codec cannot make
the daemon look ready.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATABASE = Path(__file__).parent / "data" / "clamav"
#: Debian installs clamd in /usr/sbin, which is not on a normal user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def clamd_binary() -> str | None:
    return shutil.which("clamd", path=_SEARCH_PATH)


def require_clamd() -> str:
    """The clamd path, or skip the test."""
    binary = clamd_binary()
    if binary is None:
        pytest.skip("clamd is not installed (Debian: apt-get install clamav-daemon)")
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ClamdDaemon:
    """One clamd process and its files; `start` and `stop` may be called again (to test a restart)."""

    directory: Path
    tcp: bool = False
    stream_max_length: int = 25 * 1024 * 1024
    idle_timeout: int = 30
    max_threads: int = 4
    start_timeout: float = 30.0
    binary: str = field(default_factory=require_clamd)
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    #: Seconds the last start took until PING answered.
    started_in: float = 0.0

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A unix socket path must fit in 108 bytes; pytest's tmp_path for a long test name does not.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="qsift-clamd-"))
        database = self.directory / "db"
        database.mkdir(exist_ok=True)
        for signatures in DATABASE.iterdir():
            if signatures.suffix in (".hdb", ".ndb"):
                shutil.copy(signatures, database / signatures.name)
        (self.directory / "tmp").mkdir(exist_ok=True)
        if self.tcp and self.port is None:
            self.port = _free_port()
        self.config.write_text(self._config_text())

    @property
    def socket_path(self) -> Path:
        return self._socket_dir / "clamd.sock"

    @property
    def config(self) -> Path:
        return self.directory / "clamd.conf"

    @property
    def log(self) -> Path:
        return self.directory / "clamd.log"

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        assert self.port is not None, "started without tcp=True"
        return f"127.0.0.1:{self.port}"

    def _config_text(self) -> str:
        lines = [
            "Foreground yes",
            f"LocalSocket {self.socket_path}",
            f"DatabaseDirectory {self.directory / 'db'}",
            f"TemporaryDirectory {self.directory / 'tmp'}",
            f"LogFile {self.log}",
            "LogTime yes",
            f"PidFile {self.directory / 'clamd.pid'}",
            f"User {_user()}",
            f"StreamMaxLength {self.stream_max_length}",
            f"MaxThreads {self.max_threads}",
            f"IdleTimeout {self.idle_timeout}",
            # No bytecode.cvd in the test database; without this clamd warns on every start.
            "Bytecode no",
        ]
        if self.port is not None:
            lines += [f"TCPSocket {self.port}", "TCPAddr 127.0.0.1"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        assert self.process is None, "already running"
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        began = time.monotonic()
        # A file, not a pipe: a pipe nobody reads would block clamd once full.
        self._output = (self.directory / "clamd.out").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--foreground", f"--config-file={self.config}"],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = began + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"clamd exited with status {self.process.returncode} while starting")
            if self._ping():
                self.started_in = time.monotonic() - began
                return
            time.sleep(0.05)
        self._fail(f"clamd did not answer PING within {self.start_timeout:g} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._output.close()

    def remove_socket_dir(self) -> None:
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(str(self.socket_path))
                probe.sendall(b"zPING\0")
                return probe.recv(16) == b"PONG\0"
        except OSError:
            return False

    def _fail(self, why: str) -> None:
        self.stop()
        output = (self.directory / "clamd.out").read_text(errors="replace")[-2000:]
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{why}\noutput: {output}\nlog: {log}")


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@contextlib.contextmanager
def running_clamd(
    directory: Path,
    *,
    tcp: bool = False,
    stream_max_length: int = 25 * 1024 * 1024,
    idle_timeout: int = 30,
    max_threads: int = 4,
) -> Iterator[ClamdDaemon]:
    """Start clamd under `directory`, wait until it answers PING, stop it (SIGTERM) afterwards."""
    daemon = ClamdDaemon(
        directory,
        tcp=tcp,
        stream_max_length=stream_max_length,
        idle_timeout=idle_timeout,
        max_threads=max_threads,
    )
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        daemon.remove_socket_dir()
