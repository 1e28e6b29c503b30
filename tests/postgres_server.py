"""A real PostgreSQL for tests: a private cluster in a temp dir, on a unix socket there and a loopback port.

    with running_postgres() as server:
        url = server.create_database("mail")     # postgresql://postgres@127.0.0.1:PORT/mail

initdb makes the cluster (trust authentication, superuser `postgres`, fsync off: it is thrown away, unless
`settings` turn it on, as bench/cluster.py does for production-like figures), pg_ctl starts it and waits
until it accepts connections, and the block's end stops it and removes the directory (reference:
amavisd-sql.md §7). initdb refuses to run as root, so as root both run as the unprivileged `postgres` user
Debian's package creates (`nobody` without it), which is handed the directory.
pytest.skip is raised when Debian's postgresql package is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class PostgresServer:
    directory: Path
    port: int
    bin_dir: Path
    user: str | None
    #: More `name=value` server settings, after the defaults (a later -c wins): `fsync=on`, ...
    settings: tuple[str, ...] = ()

    @property
    def socket_dir(self) -> str:
        return str(self.directory)

    def url(self, database: str = "postgres") -> str:
        """The URL over the loopback port, as `[store] url` takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """The URL over the unix socket in the cluster's directory."""
        return f"postgresql://postgres@/{database}?host={self.directory}&port={self.port}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def pg_ctl(self, *arguments: str) -> None:
        _run(self, "pg_ctl", "-D", str(self.directory / "data"), *arguments)

    def start(self) -> None:
        options = f"-k {self.directory} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += "".join(f" -c {setting}" for setting in self.settings)
        self.pg_ctl("-l", str(self.directory / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def postmaster_pid(self) -> int:
        """The server's main process, parent of every backend (first line of postmaster.pid)."""
        return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])


def bin_dir() -> Path | None:
    """Debian's server binaries (not on PATH), the newest version installed."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda path: int(Path(path).parts[-3]))
    return Path(newest).parent


@contextlib.contextmanager
def running_postgres(settings: tuple[str, ...] = ()) -> Iterator[PostgresServer]:
    """A private cluster, started, until the block ends; then stopped and removed. `settings` are more
    `name=value` server settings (`fsync=on`)."""
    binaries = bin_dir()
    if binaries is None:
        pytest.skip("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="qsift-pg-"))
    server = PostgresServer(directory, _free_port(), binaries, _unprivileged_user(directory), settings)
    try:
        _run(server, "initdb", "-D", str(directory / "data"), "-U", "postgres", "-A", "trust")
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _unprivileged_user(directory: Path) -> str | None:
    """As root, the user the cluster runs as, given the directory; otherwise None (the invoking user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            return name
    pytest.skip("running as root with neither a postgres nor a nobody user for initdb")


def _run(server: PostgresServer, program: str, *arguments: str) -> None:
    command = [str(server.bin_dir / program), *arguments]
    if program == "initdb":
        command += ["-E", "UTF8", "--no-locale", "--no-sync"]
    user = server.user
    result = subprocess.run(
        command,
        user=user,
        group=pwd.getpwnam(user).pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd=server.directory,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        log = server.directory / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr}{result.stdout}\n{tail}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
