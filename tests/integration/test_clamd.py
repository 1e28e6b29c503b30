"""ClamdScanner against a real clamd (tests/clamd_daemon.py) and against fake ones that hang or babble."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from qsift.checks.clamd import ClamdAddress, ClamdScanner, parse_address
from qsift.checks.scanners import VirusResult
from qsift.errors import ConfigError
from tests.clamd_daemon import ClamdDaemon, clamd_binary, running_clamd
from tests.harness import free_port

pytestmark = pytest.mark.skipif(
    clamd_binary() is None, reason="clamd is not installed (Debian: apt-get install clamav-daemon)"
)

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The test database is not signed, so clamd adds ".UNOFFICIAL" to every name in it.
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
CLAM_NAME = "ClamAV-Test-File.UNOFFICIAL"
TESTFILES = Path("/usr/share/clamav-testfiles")
# Every file of clamav-testfiles carries clam.exe; each one is caught (see tests/data/clamav/README.md).
TEST_FILE_NAMES = sorted(p.name for p in TESTFILES.iterdir()) if TESTFILES.is_dir() else []


def mail(body: str = "Hello, nothing to see here.\n", attachment: tuple[str, bytes] | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.net"
    message["Subject"] = "test"
    message.set_content(body)
    if attachment is not None:
        name, data = attachment
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes()


async def scan(scanner: ClamdScanner, message: bytes) -> VirusResult:
    return await scanner.scan(io.BytesIO(message), len(message))


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdDaemon]:
    with running_clamd(tmp_path_factory.mktemp("clamd"), tcp=True) as daemon:
        yield daemon


@pytest.fixture(params=["unix", "tcp"])
async def scanner(request: pytest.FixtureRequest, clamd: ClamdDaemon) -> AsyncIterator[ClamdScanner]:
    address = clamd.unix_address if request.param == "unix" else clamd.tcp_address
    client = ClamdScanner("clamav", address, timeout=30)
    yield client
    await client.close()


# --- the real clamd -------------------------------------------------------------------------------------


async def test_ping_gives_the_version(scanner: ClamdScanner) -> None:
    assert (await scanner.ping()).startswith("ClamAV 1.")


async def test_eicar_is_found_with_its_name(scanner: ClamdScanner) -> None:
    result = await scan(scanner, EICAR)
    assert result == VirusResult("clamav", names=(EICAR_NAME,))
    assert result.infected


async def test_eicar_in_a_mail_body_is_found(scanner: ClamdScanner) -> None:
    assert (await scan(scanner, mail(EICAR.decode() + "\n"))).names == (EICAR_NAME,)


async def test_clean_message_is_clean(scanner: ClamdScanner) -> None:
    result = await scan(scanner, mail())
    assert result == VirusResult("clamav")
    assert not result.infected


async def test_empty_message_is_clean(scanner: ClamdScanner) -> None:
    assert await scan(scanner, b"") == VirusResult("clamav")


async def test_small_chunks_make_the_same_stream(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.unix_address, chunk_size=7)
    try:
        assert (
            await scan(client, mail(attachment=("clam.exe", (TESTFILES / "clam.exe").read_bytes())))
        ).names
    finally:
        await client.close()


@pytest.mark.skipif(not TEST_FILE_NAMES, reason="clamav-testfiles is not installed")
@pytest.mark.parametrize("name", TEST_FILE_NAMES)
async def test_every_test_file_is_found_as_a_mail_attachment(scanner: ClamdScanner, name: str) -> None:
    message = mail("See the attachment.\n", ((name, (TESTFILES / name).read_bytes())))
    assert await scan(scanner, message) == VirusResult("clamav", names=(CLAM_NAME,))


async def test_a_message_is_read_from_where_the_file_is(clamd: ClamdDaemon, tmp_path: Path) -> None:
    # The caller hands over a spool file positioned at the message start, not necessarily offset 0.
    client = ClamdScanner("clamav", clamd.unix_address)
    spool = tmp_path / "spool"
    spool.write_bytes(b"junk before" + EICAR)
    try:
        with spool.open("rb") as message:
            message.seek(len(b"junk before"))
            assert (await client.scan(message, len(EICAR))).names == (EICAR_NAME,)
    finally:
        await client.close()


async def test_a_message_shorter_than_its_size_is_an_error(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.unix_address)
    result = await client.scan(io.BytesIO(b"short"), 100)
    assert result.error.startswith("message ended 95 bytes short")
    assert not result.names


# --- size limits ----------------------------------------------------------------------------------------


async def test_over_max_stream_is_unchecked_and_not_sent(tmp_path: Path) -> None:
    # No clamd listens there: a connection attempt would show as an error, not as "unchecked".
    client = ClamdScanner("clamav", f"unix:{tmp_path}/none.sock", max_stream=1000)
    result = await scan(client, mail("x" * 2000))
    assert result.unchecked.startswith("larger than StreamMaxLength (")
    assert not result.error and not result.names


async def test_clamd_refusing_the_stream_is_unchecked_not_clean(tmp_path: Path) -> None:
    # qsift's max_stream is wrong (clamd's StreamMaxLength is smaller): clamd cuts the stream and closes,
    # maybe while we are still writing.
    with running_clamd(tmp_path, stream_max_length=100_000) as small:
        client = ClamdScanner("clamav", small.unix_address, chunk_size=16 * 1024)
        for size in (100_001, 3_000_000):
            result = await scan(client, b"x" * size)
            assert "INSTREAM size limit exceeded" in result.unchecked, result
            assert not result.names and not result.error
        # The refused stream cost the session, not the scanner.
        assert await scan(client, EICAR) == VirusResult("clamav", names=(EICAR_NAME,))
        assert await scan(client, b"x" * 100_000) == VirusResult("clamav")
        await client.close()


# --- clamd down, hung, confused -------------------------------------------------------------------------


async def test_missing_socket_is_an_error(tmp_path: Path) -> None:
    client = ClamdScanner("clamav", f"unix:{tmp_path}/missing.sock")
    result = await scan(client, EICAR)
    assert result.error.startswith("cannot connect to clamd at unix:")
    assert not result.names
    assert await client.ping() == ""


async def test_refused_port_is_an_error() -> None:
    client = ClamdScanner("clamav", f"127.0.0.1:{free_port()}")
    result = await scan(client, EICAR)
    assert result.error.startswith("cannot connect to clamd at [127.0.0.1]:")
    assert await client.ping() == ""


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_clamd(path: Path, handler: Handler) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """A unix socket server running `handler` per connection; yields the connections it accepted."""
    accepted: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[object]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield accepted
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in accepted:
            writer.close()
        await server.wait_closed()


async def read_stream(reader: asyncio.StreamReader) -> bytes:
    """Read one zIDSESSION/zINSTREAM request up to its end marker, as clamd would."""
    data = b""
    while not data.endswith(b"\0\0\0\0"):
        more = await reader.read(65536)
        if not more:
            break
        data += more
    return data


async def test_hung_clamd_times_out_and_the_connection_is_dropped(tmp_path: Path) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_stream(reader)
        await reader.read()  # until the client gives up

    async with fake_clamd(tmp_path / "hung.sock", never_answer) as accepted:
        client = ClamdScanner("clamav", f"unix:{tmp_path}/hung.sock", timeout=0.5, connect_timeout=0.5)
        began = time.monotonic()
        result = await scan(client, EICAR)
        elapsed = time.monotonic() - began
        assert result.error.startswith("timed out after 0.5 s")
        assert 0.5 <= elapsed < 2.0
        assert not client._idle
        await scan(client, EICAR)
        assert len(accepted) == 2
        assert await client.ping() == ""


async def test_hung_clamd_that_never_reads_times_out(tmp_path: Path) -> None:
    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with fake_clamd(tmp_path / "full.sock", never_read):
        client = ClamdScanner("clamav", f"unix:{tmp_path}/full.sock", timeout=0.5)
        began = time.monotonic()
        result = await scan(client, b"x" * 5_000_000)
        assert result.error.startswith("timed out after 0.5 s")
        assert time.monotonic() - began < 2.0


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HELLO\0", "clamd: unexpected reply from clamd: 'HELLO'"),
        (b"UNKNOWN COMMAND\0", "clamd: UNKNOWN COMMAND (clamd too old for INSTREAM?)"),
        (b"2: stream: OK\0", "clamd answered request 2, expected 1"),
        (b"stream: OK\0stream: OK\0", "clamd sent more than one reply"),
        (b"x" * 5000, "clamd reply longer than 4096 bytes"),
        (b"stream: O", "clamd closed the connection without a reply"),
        (b"", "clamd closed the connection without a reply"),
    ],
)
async def test_garbage_reply_is_an_error(tmp_path: Path, answer: bytes, error: str) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_stream(reader)
        writer.write(answer)
        await writer.drain()

    async with fake_clamd(tmp_path / "babble.sock", babble) as accepted:
        client = ClamdScanner("clamav", f"unix:{tmp_path}/babble.sock")
        result = await scan(client, EICAR)
        assert result.error.startswith(error), result
        assert not result.names
        assert not client._idle
        # A fresh connection that broke is not retried: the message may be what broke clamd.
        assert len(accepted) == 1


async def test_clamd_closing_mid_stream_is_an_error(tmp_path: Path) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)

    async with fake_clamd(tmp_path / "hangup.sock", hang_up) as accepted:
        client = ClamdScanner("clamav", f"unix:{tmp_path}/hangup.sock", chunk_size=4096)
        result = await scan(client, b"x" * 5_000_000)
        assert result.error.startswith("connection to clamd lost"), result
        assert len(accepted) == 1


async def test_full_backlog_is_an_error(tmp_path: Path) -> None:
    # A clamd that stopped accepting (unix socket backlog full): connect() cannot complete. asyncio
    # takes the EAGAIN for "in progress" and the first send fails; either way an error, at once.
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(0)
        waiting = []
        for _ in range(4):
            queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            queued.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                queued.connect(str(path))
            waiting.append(queued)
        client = ClamdScanner("clamav", f"unix:{path}", connect_timeout=0.2, timeout=0.5)
        began = time.monotonic()
        result = await scan(client, EICAR)
        assert result.error, result
        assert not result.names
        assert time.monotonic() - began < 1.5
        for queued in waiting:
            queued.close()


# --- sessions -------------------------------------------------------------------------------------------


async def test_a_session_lost_in_use_is_retried_once_on_a_fresh_connection(tmp_path: Path) -> None:
    # The session passes the check before reuse, then clamd drops it on the next command: the race
    # between IdleTimeout and reuse. The second connection answers.
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_stream(reader)
        writer.write(b"1: stream: OK\0")
        await writer.drain()
        if len(accepted) == 1:
            await read_stream(reader)
            return
        await reader.read()

    async with fake_clamd(tmp_path / "flaky.sock", answer_once) as accepted:
        client = ClamdScanner("clamav", f"unix:{tmp_path}/flaky.sock")
        assert await scan(client, EICAR) == VirusResult("clamav")
        assert await scan(client, EICAR) == VirusResult("clamav")
        assert len(accepted) == 2
        await client.close()


async def test_a_session_lost_twice_is_an_error(tmp_path: Path) -> None:
    # Only the first connection ever answers; the retry's fresh connection fails too: no third try.
    async def answer_first_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_stream(reader)
        if len(accepted) == 1:
            writer.write(b"1: stream: OK\0")
            await writer.drain()
            await read_stream(reader)

    async with fake_clamd(tmp_path / "flaky.sock", answer_first_connection) as accepted:
        client = ClamdScanner("clamav", f"unix:{tmp_path}/flaky.sock")
        assert await scan(client, EICAR) == VirusResult("clamav")
        result = await scan(client, EICAR)
        assert result.error.startswith("clamd closed the connection without a reply")
        assert len(accepted) == 2
        assert not client._idle


async def test_a_session_carries_many_scans(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.unix_address, sessions=1)
    for _ in range(5):
        assert (await scan(client, EICAR)).names == (EICAR_NAME,)
        assert await scan(client, mail()) == VirusResult("clamav")
    assert len(client._idle) == 1
    assert client._idle[0].last_request == 10
    await client.close()
    assert not client._idle


async def test_no_sessions_kept_when_told_so(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.unix_address, sessions=0)
    assert (await scan(client, EICAR)).names == (EICAR_NAME,)
    assert not client._idle


async def test_clamd_restarted_between_two_scans(tmp_path: Path) -> None:
    with running_clamd(tmp_path) as daemon:
        client = ClamdScanner("clamav", daemon.unix_address)
        assert (await scan(client, EICAR)).names == (EICAR_NAME,)
        assert len(client._idle) == 1
        # Synchronous on purpose: the event loop does not run, so the session's EOF is not yet seen and
        # the scan below meets a dead session, the case a real restart gives.
        daemon.restart()
        assert (await scan(client, EICAR)).names == (EICAR_NAME,)
        assert len(client._idle) == 1
        await client.close()


async def test_session_closed_by_idle_timeout(tmp_path: Path) -> None:
    with running_clamd(tmp_path, idle_timeout=1) as daemon:
        client = ClamdScanner("clamav", daemon.unix_address)
        assert (await scan(client, mail())) == VirusResult("clamav")
        await asyncio.sleep(1.5)
        assert (await scan(client, EICAR)).names == (EICAR_NAME,)
        await client.close()


async def test_twenty_scans_at_once(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.tcp_address, sessions=4)
    clam = mail(attachment=("clam.exe", (TESTFILES / "clam.exe").read_bytes()))
    messages = [EICAR, mail(), clam, mail("x" * 300_000)] * 5
    results = await asyncio.gather(*(scan(client, m) for m in messages))
    expected = [(EICAR_NAME,), (), (CLAM_NAME,), ()] * 5
    assert [r.names for r in results] == expected
    assert not any(r.error for r in results)
    assert len(client._idle) == 4
    results = await asyncio.gather(*(scan(client, m) for m in messages))
    assert [r.names for r in results] == expected
    await client.close()


async def test_a_cancelled_scan_does_not_leave_its_session_for_reuse(clamd: ClamdDaemon) -> None:
    client = ClamdScanner("clamav", clamd.unix_address)
    task = asyncio.create_task(scan(client, b"x" * 20_000_000))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client._idle
    assert (await scan(client, EICAR)).names == (EICAR_NAME,)
    await client.close()


# --- addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("unix:/run/clamav/clamd.ctl", ClamdAddress(path="/run/clamav/clamd.ctl")),
        ("127.0.0.1:3310", ClamdAddress(host="127.0.0.1", port=3310)),
        ("localhost:3310", ClamdAddress(host="localhost", port=3310)),
        ("[::1]:3310", ClamdAddress(host="::1", port=3310)),
    ],
)
def test_address(address: str, parsed: ClamdAddress) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize(
    "address",
    [
        "unix:clamd.ctl",
        "[::1]",
        "[::1]3310",
        "::1:3310",
        ":3310",
        "host",
        "host:",
        "host:0",
        "host:65536",
        "h:x",
    ],
)
def test_bad_address(address: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(address)


def test_bad_chunk_size() -> None:
    with pytest.raises(ConfigError):
        ClamdScanner("clamav", "127.0.0.1:3310", chunk_size=0)
