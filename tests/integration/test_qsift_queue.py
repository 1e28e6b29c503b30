"""qsift-queue run as qmail-smtpd runs it (message on fd 0, envelope pipe on fd 1) against fake servers.

The program is spawned with os.posix_spawn so that each descriptor lands exactly where qmail.c puts
it (fd 0, fd 1, and fd 6, 4 or 2 for a custom error) without a pre-exec hook in a threaded process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from qsift.wire.client_context import ClientContext, find_fields, verify
from tests.fakes.qmail_qmqpc import run_qmail_qmqpc
from tests.fakes.qmqp_server import FakeQmqpServer, closed_port, unresponsive_port

QSIFT_QUEUE = shutil.which("qsift-queue", path=str(Path(sys.executable).parent))
MESSAGE = b"Received: from x\nSubject: hello\n\nbody\n"
ENVELOPE = b"Fsender@example.org\0Trcpt@example.net\0Tsecond@example.net\0\0"
RECIPIENTS = [b"rcpt@example.net", b"second@example.net"]
VIRUS = b"D554 5.7.0 rejected: VIRUS Eicar-Test-Signature"
MIB = 1 << 20
FAKE_CALLER = Path(__file__).parents[1] / "fakes" / "qmail_open.py"

# ru_maxrss of a child spawned straight from pytest includes pytest's own memory (vfork shares it until
# exec, and Linux keeps that peak across exec), so a small middleman spawns qsift-queue and reports.
MEASURE_MEMORY = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Run:
    code: int
    stderr: str
    #: What the program wrote on the custom-error pipe, if one was set up.
    custom: bytes | None
    seconds: float
    #: Peak resident memory of qsift-queue alone, if measured.
    maxrss_kib: int | None = None


def ns(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def request_bytes(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    return ns(ns(message) + ns(sender) + b"".join(ns(r) for r in recipients))


def run_queue(
    tmp_path: Path,
    env: Mapping[str, str],
    message: bytes | Path | int = MESSAGE,
    envelope: bytes = ENVELOPE,
    *,
    custom_fd: int | None = None,
    fsize_limit: int | None = None,
    measure_memory: bool = False,
    args: tuple[str, ...] = (),
    timeout: float = 60.0,
    program: Sequence[str] | None = None,
) -> Run:
    """Run qsift-queue (or `program`, the command that runs it) once with the envelope pipe on fd 1 and on
    fd 0 the message: bytes through a pipe, a file opened here, or a descriptor of the caller's (left
    open, its offset shared)."""
    assert QSIFT_QUEUE is not None, "qsift-queue is not installed next to the test interpreter"
    argv = [*(program or [QSIFT_QUEUE]), *args]
    if fsize_limit is not None:
        # RLIMIT_FSIZE makes the spool file's writes fail (EFBIG): a full disk without a full disk.
        limit = f"({fsize_limit}, {fsize_limit})"
        setlimit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, {limit}); "
        argv = [sys.executable, "-c", setlimit + "os.execv(sys.argv[1], sys.argv[1:])", *argv]
    rss_file = tmp_path / "maxrss"
    if measure_memory:
        argv = [sys.executable, "-c", MEASURE_MEMORY, str(rss_file), *argv]
    full_env = {"QMAILHOME": str(tmp_path / "no-qmail-home"), "TMPDIR": str(tmp_path), **env}
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(tempfile.TemporaryFile())
        fds: list[int] = []
        stack.callback(_close_all, fds)
        message_parent = None
        if isinstance(message, int):
            message_child = message
        elif isinstance(message, Path):
            message_child = os.open(message, os.O_RDONLY)
            fds.append(message_child)
        else:
            message_child, message_parent = os.pipe()
            fds.append(message_child)
        envelope_child, envelope_parent = os.pipe()
        fds.append(envelope_child)
        actions = [
            (os.POSIX_SPAWN_DUP2, message_child, 0),
            (os.POSIX_SPAWN_DUP2, envelope_child, 1),
            (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2),
        ]
        custom_parent = None
        if custom_fd is not None:
            custom_parent, custom_child = os.pipe()
            fds.append(custom_child)
            actions.append((os.POSIX_SPAWN_DUP2, custom_child, custom_fd))
        started = time.monotonic()
        pid = os.posix_spawn(argv[0], argv, full_env, file_actions=actions)
        for fd in fds:
            os.close(fd)
        fds.clear()
        writer = threading.Thread(
            target=_feed, args=(message_parent, message, envelope_parent, envelope), daemon=True
        )
        writer.start()
        custom_data: list[bytes] = []
        reader = None
        if custom_parent is not None:
            reader = threading.Thread(target=_drain, args=(custom_parent, custom_data), daemon=True)
            reader.start()
        status = _wait(pid, started + timeout)
        seconds = time.monotonic() - started
        writer.join(10)
        if reader is not None:
            reader.join(10)
        stderr.seek(0)
        return Run(
            code=os.waitstatus_to_exitcode(status),
            stderr=stderr.read().decode("utf-8", "replace"),
            custom=b"".join(custom_data) if custom_parent is not None else None,
            seconds=seconds,
            maxrss_kib=int(rss_file.read_text()) if measure_memory else None,
        )


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _feed(message_fd: int | None, message: bytes | Path | int, envelope_fd: int, envelope: bytes) -> None:
    # qmail.c's order: the whole message, close fd 0, then the envelope.
    with contextlib.suppress(BrokenPipeError):
        if message_fd is not None:
            assert isinstance(message, bytes)
            with os.fdopen(message_fd, "wb") as pipe:
                pipe.write(message)
    with contextlib.suppress(BrokenPipeError), os.fdopen(envelope_fd, "wb") as pipe:
        pipe.write(envelope)


def _drain(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as pipe:
        into.append(pipe.read())


def _wait(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.wait4(pid, 0)
            raise AssertionError("qsift-queue did not finish in time")
        time.sleep(0.005)


def servers_env(*entries: str, **extra: str) -> dict[str, str]:
    return {"QMQPSERVERS": ", ".join(entries), **extra}


@pytest.fixture
def server() -> Iterator[FakeQmqpServer]:
    with FakeQmqpServer() as fake:
        yield fake


@pytest.fixture
def backup() -> Iterator[FakeQmqpServer]:
    """A second server that answers K; listed with weight 0, so it is tried only after the first."""
    with FakeQmqpServer() as fake:
        yield fake


# --- the happy path and the request bytes ---------------------------------------------------------------


def test_k_answer_exits_0_and_sends_the_exact_request(tmp_path: Path, server: FakeQmqpServer) -> None:
    run = run_queue(tmp_path, servers_env(server.address))
    assert run.code == 0
    assert run.stderr == ""
    (received,) = server.requests
    assert received.raw == request_bytes(MESSAGE, b"sender@example.org", RECIPIENTS)


def test_message_from_a_regular_file_starts_at_its_offset(tmp_path: Path, server: FakeQmqpServer) -> None:
    path = tmp_path / "message"
    path.write_bytes(b"NOT-THIS\n" + MESSAGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        # The child shares this descriptor's offset, as it shares a caller's after an lseek.
        os.lseek(fd, 9, os.SEEK_SET)
        run = run_queue(tmp_path, servers_env(server.address), fd)
    finally:
        os.close(fd)
    assert run.code == 0
    assert server.requests[0].fields()[0] == MESSAGE


def test_same_bytes_as_stock_qmail_qmqpc(tmp_path: Path, server: FakeQmqpServer) -> None:
    message = b"From: a\n\n" + bytes(range(256)) * 10 + b"no final newline"
    envelope = b"F\0Tr1@x\0T#@[]\0Tprefix@host-@[]\0\0"
    stock = run_qmail_qmqpc("127.0.0.1", server.port, message, envelope)
    run = run_queue(tmp_path, servers_env(server.address), message, envelope)
    assert (stock.exit_code, run.code) == (0, 0)
    first, second = server.requests
    assert first.raw == stock.sent == second.raw


def test_control_file_is_used_when_qmqpservers_is_unset(tmp_path: Path, server: FakeQmqpServer) -> None:
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    (home / "control" / "qmqpservers").write_text(f"# the filter\n\n{server.address}   # local\n")
    run = run_queue(tmp_path, {"QMAILHOME": str(home), "QMQPSERVERS": " "})
    assert run.code == 0, run.stderr
    assert len(server.requests) == 1


# --- answers and failover ------------------------------------------------------------------------------


def test_d_answer_stops_with_31(tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer) -> None:
    server.answer = VIRUS
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"))
    assert run.code == 31
    assert f"qsift-queue: {server.address}: {VIRUS.decode()}" in run.stderr
    assert backup.settle() == 0


def test_z_answer_fails_over(tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer) -> None:
    server.answer = b"Z451 4.3.2 too busy, try later"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"))
    assert run.code == 0
    assert "Z451 4.3.2 too busy" in run.stderr
    assert len(server.requests) == len(backup.requests) == 1
    assert backup.requests[0].raw == server.requests[0].raw


def test_every_server_says_z_exits_71(tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer) -> None:
    server.answer = backup.answer = b"Zbusy"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"))
    assert run.code == 71
    assert run.stderr.count(": Zbusy") == 2


def test_refused_connect_fails_over(tmp_path: Path, backup: FakeQmqpServer) -> None:
    run = run_queue(tmp_path, servers_env(f"127.0.0.1:{closed_port()}", f"{backup.address} 0"))
    assert run.code == 0
    assert "cannot connect" in run.stderr
    assert len(backup.requests) == 1


def test_only_refused_connects_exit_73(tmp_path: Path) -> None:
    run = run_queue(tmp_path, servers_env(f"127.0.0.1:{closed_port()}"))
    assert run.code == 73


def test_last_error_wins(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = b"Zbusy"
    run = run_queue(tmp_path, servers_env(server.address, f"127.0.0.1:{closed_port()} 0"))
    assert run.code == 73


def test_connect_timeout_exits_72_and_fails_over(tmp_path: Path, backup: FakeQmqpServer) -> None:
    with unresponsive_port() as port:
        alone = run_queue(tmp_path, servers_env(f"127.0.0.1:{port}", QSIFT_CONNECT_TIMEOUT="0.3"))
        with_backup = run_queue(
            tmp_path, servers_env(f"127.0.0.1:{port}", f"{backup.address} 0", QSIFT_CONNECT_TIMEOUT="0.3")
        )
    assert alone.code == 72
    assert "connect timed out after 0.3 s" in alone.stderr
    assert alone.seconds < 5
    assert with_backup.code == 0
    assert len(backup.requests) == 1


def test_close_before_the_final_byte_fails_over(
    tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer
) -> None:
    # Bigger than the loopback socket buffers, so the server's early close breaks the client's send.
    path = tmp_path / "big"
    path.write_bytes(b"x" * (32 * MIB))
    server.mode = "close_early"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"), path)
    assert run.code == 0, run.stderr
    assert "sending failed" in run.stderr
    assert server.requests == []
    assert backup.requests[0].fields()[0] == path.read_bytes()


def test_stalled_send_times_out_and_fails_over(
    tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer
) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"y" * (32 * MIB))
    server.mode = "no_read"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0", QSIFT_TIMEOUT="1"), path)
    assert run.code == 0, run.stderr
    assert "sending failed: timed out" in run.stderr
    assert len(backup.requests) == 1
    assert run.seconds < 10


def test_no_answer_after_the_final_byte_is_not_resent(
    tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer
) -> None:
    server.mode = "close_after_request"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"))
    assert run.code == 74
    assert "connection closed without an answer; not resent elsewhere" in run.stderr
    assert len(server.requests) == 1
    assert server.requests[0].complete
    assert backup.settle() == 0


def test_late_answer_times_out_with_74_and_is_not_resent(
    tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer
) -> None:
    server.mode = "hang"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0", QSIFT_TIMEOUT="0.5"))
    assert run.code == 74
    assert "no answer within 0.5 s" in run.stderr
    assert run.seconds < 5
    assert backup.settle() == 0


def test_garbage_answer_is_74(tmp_path: Path, server: FakeQmqpServer, backup: FakeQmqpServer) -> None:
    server.mode = "raw"
    server.answer = b"HTTP/1.0 400 Bad Request\r\n\r\n"
    run = run_queue(tmp_path, servers_env(server.address, f"{backup.address} 0"))
    assert run.code == 74
    assert "bad answer" in run.stderr
    assert backup.settle() == 0


def test_weights_share_the_first_tries(tmp_path: Path) -> None:
    with FakeQmqpServer() as heavy, FakeQmqpServer() as light, FakeQmqpServer() as spare:
        env = servers_env(f"{heavy.address} 4", f"{light.address} 1", f"{spare.address} 0")
        codes = [run_queue(tmp_path, env).code for _ in range(30)]
        counts = heavy.settle(), light.settle(), spare.settle()
    assert codes == [0] * 30
    # Expected 24 and 6; 15 or fewer for the heavy server has a probability of about 2e-5.
    assert counts[0] + counts[1] == 30
    assert counts[0] >= 15
    assert counts[0] > counts[1]
    assert counts[2] == 0


# --- the envelope -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"Fsender@example.org\0Trcpt@exa",  # qmail-smtpd's databytes overflow: qmail_fail()
        b"Fsender@example.org\0Trcpt@example.net\0",
        b"Tsender@example.org\0\0",
        b"Fs\0Xr\0\0",
        b"Fs\0Tr\0\0junk",
    ],
)
def test_malformed_envelope_exits_91_without_connecting(
    tmp_path: Path, server: FakeQmqpServer, envelope: bytes
) -> None:
    run = run_queue(tmp_path, servers_env(server.address), envelope=envelope)
    assert run.code == 91
    assert "envelope format error" in run.stderr
    assert server.settle() == 0


# --- custom errors ----------------------------------------------------------------------------------------


def test_notqmail_custom_error_on_fd_6(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = VIRUS
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="notqmail"), custom_fd=6)
    assert run.code == 82
    assert run.custom == b"Drejected: VIRUS Eicar-Test-Signature (#5.7.0)"
    assert VIRUS.decode() in run.stderr


def test_notqmail_custom_error_for_z(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = b"Z451 4.3.2 too busy, try later"
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="notqmail"), custom_fd=6)
    assert run.code == 82
    assert run.custom == b"Ztoo busy, try later (#4.3.2)"


def test_custom_error_without_the_pipe_keeps_the_plain_code(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = VIRUS
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="notqmail"))
    assert run.code == 31


def test_no_custom_error_after_k_or_for_connection_failures(tmp_path: Path, server: FakeQmqpServer) -> None:
    accepted = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="notqmail"), custom_fd=6)
    assert (accepted.code, accepted.custom, accepted.stderr) == (0, b"", "")
    env = servers_env(f"127.0.0.1:{closed_port()}", QSIFT_CUSTOM_ERROR="notqmail")
    refused = run_queue(tmp_path, env, custom_fd=6)
    assert (refused.code, refused.custom) == (73, b"")


def test_simscan_custom_error_on_fd_4(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = VIRUS
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="simscan"), custom_fd=4)
    assert run.code == 82
    assert run.custom == b"Drejected: VIRUS Eicar-Test-Signature (#5.7.0)"


def test_indimail_custom_error_on_stderr_alone(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = VIRUS
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CUSTOM_ERROR="indimail"), custom_fd=2)
    assert run.code == 88
    # indimail's qmail.c reads the whole of fd 2 as the text, so nothing else may be written there.
    assert run.custom == b"Drejected: VIRUS Eicar-Test-Signature (#5.7.0)"


def test_indimail_error_fd(tmp_path: Path, server: FakeQmqpServer) -> None:
    server.answer = VIRUS
    env = servers_env(server.address, QSIFT_CUSTOM_ERROR="indimail", ERROR_FD="5")
    run = run_queue(tmp_path, env, custom_fd=5)
    assert (run.code, run.custom) == (88, b"Drejected: VIRUS Eicar-Test-Signature (#5.7.0)")
    assert VIRUS.decode() in run.stderr


REJECTED = "Drejected: VIRUS Eicar-Test-Signature (#5.7.0)"
PLAIN_REJECT = "Dmail server permanently rejected message (#5.3.0)"


@pytest.mark.parametrize(
    ("caller", "chosen", "reply", "extra"),
    [
        ("notqmail", "notqmail", REJECTED, {}),
        ("indimail", "indimail", REJECTED, {}),
        # The caller's read end of the error pipe at the number of qsift-queue's write end.
        ("indimail", "indimail", REJECTED, {"ERROR_FD": "9", "FAKE_READ_END_AT": "9"}),
        # A convention the caller does not have: the plain code, and the text stays out of the log.
        ("notqmail", "indimail", PLAIN_REJECT, {}),
        ("stock", "indimail", PLAIN_REJECT, {}),
        ("stock", "notqmail", PLAIN_REJECT, {}),
        ("indimail", "notqmail", "Dqq mail server permanently rejected message (#5.3.0)", {}),
        ("notqmail", "simscan", PLAIN_REJECT, {}),
    ],
)
def test_custom_error_as_each_qmail_reads_it(
    tmp_path: Path,
    server: FakeQmqpServer,
    caller: str,
    chosen: str,
    reply: str,
    extra: dict[str, str],
) -> None:
    """qsift-queue under each qmail's qmail_open(), its stderr qmail-smtpd's log pipe (as under multilog)."""
    assert QSIFT_QUEUE is not None
    server.answer = VIRUS
    (tmp_path / "message").write_bytes(MESSAGE)
    (tmp_path / "envelope").write_bytes(ENVELOPE)
    env = {"QMAILQUEUE": QSIFT_QUEUE, "TMPDIR": str(tmp_path), "QSIFT_CUSTOM_ERROR": chosen}
    result = subprocess.run(
        [sys.executable, str(FAKE_CALLER), caller, str(tmp_path / "message"), str(tmp_path / "envelope")],
        env={**env, **servers_env(server.address), **extra},
        capture_output=True,
        timeout=60,
        check=True,
    )
    log = result.stderr.decode()
    assert result.stdout.decode() == reply + "\n", log
    assert REJECTED not in log
    if caller != "indimail":
        # The reason for the postmaster, as qsift-queue's log line (under indimail fd 2 is the error pipe).
        assert f"qsift-queue: {server.address}: {VIRUS.decode()}" in log


# --- big messages and local failures ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pipe", "file"])
def test_20_mb_message_is_streamed_with_bounded_memory(
    tmp_path: Path, server: FakeQmqpServer, source: str
) -> None:
    big = os.urandom(MIB) * 20
    small = run_queue(tmp_path, servers_env(server.address), measure_memory=True)
    path = tmp_path / "big"
    if source == "file":
        path.write_bytes(big)
    run = run_queue(
        tmp_path, servers_env(server.address), path if source == "file" else big, measure_memory=True
    )
    assert run.code == 0, run.stderr
    received = server.requests[-1].fields()[0]
    assert hashlib.sha256(received).digest() == hashlib.sha256(big).digest()
    # Holding the message would cost 20 MiB more than a tiny one; streaming costs a few buffers.
    assert small.maxrss_kib is not None
    assert run.maxrss_kib is not None
    assert run.maxrss_kib - small.maxrss_kib < 8 * 1024, (small.maxrss_kib, run.maxrss_kib)
    assert list(tmp_path.glob("tmp*")) == []


def test_spool_write_failure_exits_53(tmp_path: Path, server: FakeQmqpServer) -> None:
    run = run_queue(tmp_path, servers_env(server.address), b"z" * (3 * MIB), fsize_limit=2 * MIB)
    assert run.code == 53
    assert "cannot write the temp file" in run.stderr
    assert server.settle() == 0


# --- configuration ----------------------------------------------------------------------------------------


def test_no_control_file_exits_55(tmp_path: Path) -> None:
    run = run_queue(tmp_path, {})
    assert run.code == 55
    assert "control/qmqpservers" in run.stderr


def test_control_file_without_servers_exits_55(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    (home / "control" / "qmqpservers").write_text("# nothing here\nbad:port\n")
    run = run_queue(tmp_path, {"QMAILHOME": str(home)})
    assert run.code == 55
    assert "bad port 'port'; skipped" in run.stderr
    assert "no usable QMQP server" in run.stderr


@pytest.mark.parametrize(
    "setting",
    [
        {"QSIFT_TIMEOUT": "soon"},
        {"QSIFT_TIMEOUT": "0"},
        {"QSIFT_CONNECT_TIMEOUT": "nan"},
        {"QSIFT_CONNECT_TIMEOUT": "inf"},
        {"QSIFT_CUSTOM_ERROR": "postfix"},
    ],
)
def test_bad_settings_exit_55_before_anything_is_sent(
    tmp_path: Path, server: FakeQmqpServer, setting: dict[str, str]
) -> None:
    run = run_queue(tmp_path, servers_env(server.address, **setting))
    assert run.code == 55
    assert server.settle() == 0


def test_arguments_are_refused(tmp_path: Path, server: FakeQmqpServer) -> None:
    assert run_queue(tmp_path, servers_env(server.address), args=("--verbose",)).code == 55
    helped = run_queue(tmp_path, servers_env(server.address), args=("--help",))
    assert helped.code == 55  # never 0: that means "queued"
    assert "Exit codes" in helped.stderr
    assert server.settle() == 0


# --- the client context field (QSIFT_CLIENT_KEY) ----------------------------------------------------------

#: What tcpserver, tcprules and an AUTH patch leave in qmail-smtpd's environment, which qsift-queue inherits.
CLIENT_ENV = {
    "TCPREMOTEIP": "192.0.2.7",
    "TCPREMOTEHOST": "mx.example.net",
    "RELAYCLIENT": "",
    "SMTPAUTHUSER": "alice",
    "TCPREMOTEINFO": "mallory",  # ident or MAIL FROM AUTH=: the client's word, never taken
}
ALICE = ClientContext(ip="192.0.2.7", host="mx.example.net", relay_client=True, auth_user="alice")


def client_key(tmp_path: Path) -> Path:
    path = tmp_path / "client.key"
    path.write_bytes(os.urandom(32))
    return path


def split_client_field(key: bytes, received: bytes) -> tuple[ClientContext | None, bytes]:
    """(what the first field vouches for, for the test envelope; the bytes after it); the field must lead."""
    start, end, value = find_fields(received[:4096])[0]
    assert start == 0
    context = verify(key, value, b"sender@example.org", RECIPIENTS, int(time.time()))
    return context, received[end:]


def test_the_client_field_leads_the_message_and_verifies(tmp_path: Path, server: FakeQmqpServer) -> None:
    key = client_key(tmp_path)
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CLIENT_KEY=str(key), **CLIENT_ENV))
    assert (run.code, run.stderr) == (0, "")
    (received,) = server.requests
    message, sender, recipients = received.fields()
    assert (sender, recipients) == (b"sender@example.org", RECIPIENTS)
    assert split_client_field(key.read_bytes(), message) == (ALICE, MESSAGE)
    assert len(find_fields(message)) == 1
    # The frame counts the field: the request is exactly QMQP's netstrings around the longer message.
    assert received.raw == request_bytes(message, sender, recipients)


@pytest.mark.parametrize("source", ["pipe", "file"])
def test_the_client_field_leads_a_message_over_1_mib(
    tmp_path: Path, server: FakeQmqpServer, source: str
) -> None:
    big = b"Subject: big\n\n" + os.urandom(MIB + 12345)
    path = tmp_path / "big"
    path.write_bytes(big)
    key = client_key(tmp_path)
    env = servers_env(server.address, QSIFT_CLIENT_KEY=str(key), TCPREMOTEIP="2001:db8::7")
    run = run_queue(tmp_path, env, big if source == "pipe" else path)
    assert (run.code, run.stderr) == (0, "")
    context, rest = split_client_field(key.read_bytes(), server.requests[0].fields()[0])
    assert context == ClientContext(ip="2001:db8::7")
    assert hashlib.sha256(rest).digest() == hashlib.sha256(big).digest()
    assert list(tmp_path.glob("tmp*")) == []


def test_a_field_the_client_wrote_stays_below_ours_and_fails(tmp_path: Path, server: FakeQmqpServer) -> None:
    forged = b"X-Qsift-Client: v1 t=1 ip= host= relay=1 auth=admin h=" + b"0" * 64 + b"\n" + MESSAGE
    key = client_key(tmp_path)
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CLIENT_KEY=str(key)), forged)
    assert run.code == 0, run.stderr
    message = server.requests[0].fields()[0]
    context, rest = split_client_field(key.read_bytes(), message)
    assert (context, rest) == (ClientContext(), forged)
    # The daemon cuts every one of them out and believes only the first: ours.
    (_, _, value) = find_fields(message)[1]
    assert verify(key.read_bytes(), value, b"sender@example.org", RECIPIENTS, int(time.time())) is None


def test_without_the_key_the_message_is_unchanged(tmp_path: Path, server: FakeQmqpServer) -> None:
    run = run_queue(tmp_path, servers_env(server.address, **CLIENT_ENV))
    assert (run.code, run.stderr) == (0, "")
    assert server.requests[0].raw == request_bytes(MESSAGE, b"sender@example.org", RECIPIENTS)


@pytest.mark.parametrize(
    ("make", "note"),
    [
        (lambda path: None, "cannot read the client key {path}: No such file or directory"),
        (lambda path: path.mkdir(), "cannot read the client key {path}: Is a directory"),
        (lambda path: path.write_bytes(b""), "the client key {path} is empty"),
    ],
)
def test_an_unusable_key_sends_the_message_unchanged_with_a_note(
    tmp_path: Path, server: FakeQmqpServer, make: Callable[[Path], object], note: str
) -> None:
    path = tmp_path / "client.key"
    make(path)
    run = run_queue(tmp_path, servers_env(server.address, QSIFT_CLIENT_KEY=str(path), **CLIENT_ENV))
    assert run.code == 0
    assert run.stderr == f"qsift-queue: {note.format(path=path)}; sent without the client context\n"
    assert server.requests[0].raw == request_bytes(MESSAGE, b"sender@example.org", RECIPIENTS)


@pytest.mark.parametrize(
    ("env", "note"),
    [
        # The setup before the keys were split: the variable's old name still works, with a word.
        (
            {"QSIFT_MARK_KEY": "{key}"},
            "QSIFT_MARK_KEY is read as QSIFT_CLIENT_KEY, its new name ({key}): rename it",
        ),
        # The client-side bypass is gone: the message goes to the filter, which knows its own mark.
        (
            {"QSIFT_CLIENT_KEY": "{key}", "QSIFT_ORIG_QUEUE": "/var/qmail/bin/qmail-queue.orig"},
            "QSIFT_ORIG_QUEUE is no longer used: qsift itself passes mail it marked unscanned",
        ),
    ],
)
def test_the_settings_of_the_old_bypass_say_what_became_of_them(
    tmp_path: Path, server: FakeQmqpServer, env: dict[str, str], note: str
) -> None:
    key = client_key(tmp_path)
    filled = {name: value.format(key=key) for name, value in env.items()}
    run = run_queue(tmp_path, servers_env(server.address, **filled, **CLIENT_ENV))
    assert (run.code, run.stderr) == (0, f"qsift-queue: {note.format(key=key)}\n")
    context, rest = split_client_field(key.read_bytes(), server.requests[0].fields()[0])
    assert (context, rest) == (ALICE, MESSAGE)


# --- the stock qmail-qmqpc model itself ---------------------------------------------------------------------


def test_qmail_qmqpc_model_exit_codes(server: FakeQmqpServer) -> None:
    assert run_qmail_qmqpc("127.0.0.1", server.port, MESSAGE, ENVELOPE).exit_code == 0
    server.answer = b"Zbusy"
    assert run_qmail_qmqpc("127.0.0.1", server.port, MESSAGE, ENVELOPE).exit_code == 71
    server.answer = b"Dno"
    assert run_qmail_qmqpc("127.0.0.1", server.port, MESSAGE, ENVELOPE).exit_code == 31
    server.mode = "close_after_request"
    assert run_qmail_qmqpc("127.0.0.1", server.port, MESSAGE, ENVELOPE).exit_code == 74
    assert run_qmail_qmqpc("127.0.0.1", closed_port(), MESSAGE, ENVELOPE).exit_code == 73
    assert run_qmail_qmqpc("127.0.0.1", server.port, MESSAGE, b"Fs\0Tr").exit_code == 91
    assert run_qmail_qmqpc("::1", server.port, MESSAGE, ENVELOPE) == (55, b"")
    # ip_scan ignores what follows the address: "127.0.0.1:10628" means port 628 to qmail-qmqpc.
    assert (
        run_qmail_qmqpc("127.0.0.1:1 # x", None, MESSAGE, ENVELOPE, port_default=server.port).exit_code == 74
    )
