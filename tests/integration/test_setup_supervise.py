"""What `qsift setup qmail` writes, run for real: the state directory made as its "Before starting" note
says, supervise starts qsift and multilog from the generated service directory (connected by a pipe, as
svscan connects a service and its log) and qsift stays up, qsift-queue run with the variables of the
generated tcprules line hands qsift a message, the fake MTA gets it, multilog writes the summary line,
and `svc -dx` stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsift.setup import site
from tests.fakes.mta import fake_mta
from tests.harness import free_port
from tests.integration.test_daemon_process import child_pids
from tests.unit.test_setup import parse_rule, rule_lines

BIN = Path(sys.executable).parent
QSIFT = BIN / "qsift"
QSIFT_QUEUE = BIN / "qsift-queue"
DAEMONTOOLS = ("supervise", "svc", "svstat", "multilog", "setuidgid")
MISSING = [tool for tool in DAEMONTOOLS if shutil.which(tool) is None]
MESSAGE = (
    b"From: alice@example.org\nTo: bob@example.net\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n"
    b"Message-ID: <setup-1@example.org>\nSubject: through supervise\n\nhello\n"
)
ENVELOPE = b"Falice@example.org\0Tbob@example.net\0\0"

pytestmark = [
    pytest.mark.skipif(
        bool(MISSING), reason=f"daemontools is not installed (Debian: daemontools); missing {MISSING}"
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="setuidgid calls setgroups(), which needs root even for one's own user"
    ),
]


def write_config(tmp_path: Path, qmqp_port: int, mta_port: int) -> Path:
    path = tmp_path / "qsift.toml"
    path.write_text(
        f'state_dir = "{tmp_path}/state"\ntmp_dir = "{tmp_path}"\nmyhostname = "qsift.test"\n'
        # setuidgid to the current user, root here: qsift refuses root unless told.
        f"allow_root = {'true' if os.geteuid() == 0 else 'false'}\n"
        f'[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:{qmqp_port}"\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{mta_port}"\n'
    )
    return path


def stop(process: subprocess.Popen[bytes], directory: Path) -> None:
    """svc -dx, then a bounded wait; past it, kill supervise and what it started."""
    if (directory / "supervise" / "control").exists():
        subprocess.run(["svc", "-dx", str(directory)], timeout=10, check=False)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in child_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def supervised(
    service: Path, errors: Path
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """supervise for the service and for its log, the service's fd 1 piped into the log's fd 0."""
    read_end, write_end = os.pipe()
    with errors.open("wb") as stderr:
        log = subprocess.Popen(["supervise", str(service / "log")], stdin=read_end, stderr=stderr)
        try:
            main = subprocess.Popen(["supervise", str(service)], stdout=write_end, stderr=stderr)
        except BaseException:
            stop(log, service / "log")
            raise
        finally:
            os.close(read_end)
            os.close(write_end)
    try:
        yield main, log
    finally:
        stop(main, service)
        stop(log, service / "log")


async def wait_for_port(port: int, main: subprocess.Popen[bytes], errors: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert main.poll() is None, errors.read_text()
        assert time.monotonic() < deadline, f"qsift did not listen within 30 s: {errors.read_text()}"
        await asyncio.sleep(0.1)


def run_queue_program(program: str, env: dict[str, str], message: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the QMAILQUEUE program as qmail-smtpd does: the message on fd 0, the envelope pipe on fd 1."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, ENVELOPE)
        os.close(write_end)
        with message.open("rb") as stdin:
            return subprocess.run(
                [program],
                stdin=stdin,
                stdout=read_end,
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
                check=False,
            )
    finally:
        os.close(read_end)


def make_state_dir_as_told(setup_output: str) -> Path:
    """Run the `install -d` command of setup's note for the state directory, as the postmaster would."""
    command = re.search(r"install -d -o (\S+) -g (\S+) -m ([0-7]+) (\S+)", " ".join(setup_output.split()))
    assert command is not None, setup_output
    owner, group, mode, path = command.groups()
    subprocess.run(["install", "-d", "-o", owner, "-g", group, "-m", mode, path], check=True, timeout=10)
    return Path(path)


def supervised_pid(service: Path) -> tuple[int, int] | None:
    """(pid, seconds up) as svstat reports them, or None while the service is not up."""
    status = subprocess.run(["svstat", str(service)], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r": up \(pid (\d+)\) (\d+) seconds", status.stdout)
    return (int(found[1]), int(found[2])) if found else None


async def assert_stays_up(service: Path, pid: int, seconds: int, errors: Path) -> None:
    """The same qsift process has been up for `seconds`: supervise restarts a dead one within a second,
    so a refused start shows as a new pid and an uptime that never grows."""
    deadline = time.monotonic() + seconds + 30
    while True:
        status = supervised_pid(service)
        assert status is not None and status[0] == pid, f"qsift restarted: {status}; {errors.read_text()}"
        if status[1] >= seconds:
            return
        assert time.monotonic() < deadline, f"svstat: {status}"
        await asyncio.sleep(0.2)


async def test_the_generated_service_runs_under_supervise(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    async with fake_mta() as mta:
        port = free_port()
        config = write_config(tmp_path, port, mta.port)
        setup_args = [
            *("setup", "qmail", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
            *("--service-dir", str(tmp_path / "service"), "--qmail-home", str(tmp_path / "qmail")),
            *("--user", me, "--log-user", me, "--log-dir", str(tmp_path / "log")),
        ]
        setup = subprocess.run(
            [str(QSIFT), *setup_args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "no QMQP listener" not in setup.stdout
        assert make_state_dir_as_told(setup.stdout) == tmp_path / "state"
        service = tmp_path / "service" / "qsift"
        rules = rule_lines((service / "tcp.smtp.qsift").read_text())
        address, allowed, variables = parse_rule(rules[-1])
        assert (address, allowed) == ("", True)
        assert variables["QMAILQUEUE"] == str(QSIFT_QUEUE)
        errors = tmp_path / "supervise.err"
        message = tmp_path / "message"
        message.write_bytes(MESSAGE)
        with supervised(service, errors) as (main, _):
            await wait_for_port(port, main, errors)
            status = supervised_pid(service)
            assert status is not None, errors.read_text()
            env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "QMAILHOME": str(tmp_path / "qmail")}
            result = await asyncio.to_thread(
                run_queue_program, variables["QMAILQUEUE"], {**env, **variables}, message
            )
            assert result.returncode == 0, result.stderr.decode()  # 0: qsift answered K
            assert len(mta.accepted) == 1
            assert mta.accepted[0].recipients == [b"bob@example.net"]
            assert b"Subject: through supervise\r\n" in mta.accepted[0].body
            current = tmp_path / "log" / "current"
            summary = re.compile(
                r"^@[0-9a-f]{24} qsift\[\d+\]: Passed CLEAN.* <alice@example\.org> -> <bob@example\.net>",
                re.MULTILINE,
            )
            deadline = time.monotonic() + 20
            while not (current.exists() and summary.search(current.read_text(errors="replace"))):
                assert time.monotonic() < deadline, current.read_text() if current.exists() else "no current"
                await asyncio.sleep(0.1)
            await assert_stays_up(service, status[0], 3, errors)
        assert main.returncode == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def runs_as_nobody(program: str) -> bool:
    """Whether another user can run qsift-queue: `--help` prints the usage and exits 55 once it runs."""
    run = subprocess.run(
        ["setuidgid", "nobody", program, "--help"], capture_output=True, timeout=60, check=False
    )
    return run.returncode == 55


def test_the_note_on_qsift_queue_says_what_running_it_as_another_user_finds() -> None:
    """The installed qsift-queue (on this image its Python is under /root, closed to others), then one in
    a venv of the system's Python that others can read, then the same closed by one directory."""
    assert (site.others_cannot_run(str(QSIFT_QUEUE)) == []) == runs_as_nobody(str(QSIFT_QUEUE))
    system = "/usr/bin/python3"
    if (
        not os.path.exists(system)
        or subprocess.run(
            [system, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"], check=False
        ).returncode
    ):
        pytest.skip("no system Python 3.11+ to make a venv that others can read")
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # tmp_path's parents are closed to others
    try:
        base.chmod(0o755)
        venv = base / "opt"
        subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        (site_packages,) = venv.glob("lib/python3*/site-packages")
        shutil.copytree(
            Path(site.__file__).parents[1],
            site_packages / "qsift",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        program = venv / "bin" / "qsift-queue"
        program.write_text(
            f"#!{venv}/bin/python\nimport sys\nfrom qsift.queue_client.main import main\nsys.exit(main())\n"
        )
        program.chmod(0o755)
        assert site.others_cannot_run(str(program)) == []
        assert runs_as_nobody(str(program))
        (venv / "lib").chmod(0o700)
        assert site.others_cannot_run(str(program)) == [f"{venv}/lib is mode 0700"]
        assert not runs_as_nobody(str(program))
    finally:
        shutil.rmtree(base)
