"""SpamdScanner against a real spamd, RspamdScanner against a real rspamd, both against broken fakes.

The real daemons run with local tests only (spamd --local; rspamd with no Lua rules, no modules and its
resolver pointed at 127.0.0.1), so nothing leaves the machine. Each is skipped when not installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from qsift.checks.scanners import SpamEnvelope, SpamScanner
from qsift.checks.spam import RspamdScanner, SpamdScanner
from qsift.errors import ConfigError
from tests.spamd_daemon import GTUBE, Spamd, running_spamd, stop_daemon

HEAD = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: %s\r\n"
GTUBE_MAIL = HEAD % b"test" + b"\r\nThis is the GTUBE, the\r\n\r\n" + GTUBE + b"\r\n\r\nGeneric Test.\r\n"
NOTE_MAIL = (
    HEAD % b"lunch"
    + b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <note-1@example.org>\r\n"
    + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    + b"Hi Bob,\r\n\r\nShall we have lunch on Thursday at noon? The usual place.\r\n\r\nAlice\r\n"
)


async def check(scanner: SpamScanner, mail: bytes, user: str | None = None) -> object:
    return await scanner.check(io.BytesIO(mail), len(mail), user=user)


# --- a real spamd -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spamd() -> Iterator[Spamd]:
    with running_spamd() as daemon:
        yield daemon


@pytest.fixture(params=["unix", "tcp"])
def spamd_scanner(request: pytest.FixtureRequest, spamd: Spamd) -> SpamdScanner:
    address = spamd.unix_address if request.param == "unix" else spamd.tcp_address
    return SpamdScanner("sa", address, timeout=30.0)


async def test_gtube_is_spam(spamd_scanner: SpamdScanner) -> None:
    result = await spamd_scanner.check(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL))
    assert not result.error
    assert result.score is not None and result.score >= 1000
    assert result.required == 5.0
    assert "GTUBE" in result.rules
    assert result.scanner == "sa"


async def test_a_plain_note_is_not_spam(spamd_scanner: SpamdScanner) -> None:
    result = await spamd_scanner.check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL))
    assert not result.error
    assert result.score is not None and result.required is not None
    assert result.score < result.required
    assert "GTUBE" not in result.rules


async def test_ping(spamd_scanner: SpamdScanner) -> None:
    assert await spamd_scanner.ping() == "PONG"


async def test_user_is_passed_through(spamd: Spamd) -> None:
    # The daemon helper gives alice her own user_prefs with required_score 2.5.
    scanner = SpamdScanner("sa", spamd.unix_address)
    alice = await scanner.check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL), user="alice")
    nobody = await scanner.check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL), user="carol")
    assert (alice.required, nobody.required) == (2.5, 5.0)
    assert "for alice:" in spamd.log()


async def test_a_message_near_the_size_limit_streams(spamd: Spamd) -> None:
    body = b"".join(b"line %06d of a long and boring newsletter\r\n" % i for i in range(9000))
    mail = NOTE_MAIL + body
    scanner = SpamdScanner("sa", spamd.unix_address, max_size=len(mail))
    result = await scanner.check(io.BytesIO(mail), len(mail))
    assert not result.error and result.score is not None


async def test_concurrent_checks_beyond_the_children(spamd: Spamd) -> None:
    scanner = SpamdScanner("sa", spamd.tcp_address)
    results = await asyncio.gather(
        *(scanner.check(io.BytesIO(m), len(m)) for m in [GTUBE_MAIL, NOTE_MAIL] * 3)
    )
    assert [("GTUBE" in r.rules, bool(r.error)) for r in results] == [(True, False), (False, False)] * 3


async def test_oversize_is_skipped_without_connecting(spamd: Spamd) -> None:
    before = spamd.log().count("connection from") + spamd.log().count("got connection")
    scanner = SpamdScanner("sa", spamd.tcp_address, max_size=len(GTUBE_MAIL) - 1)
    result = await scanner.check(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL))
    assert result.skipped == f"larger than {len(GTUBE_MAIL) - 1} bytes"
    assert (result.score, result.error) == (None, "")
    assert spamd.log().count("connection from") + spamd.log().count("got connection") == before


def _with_attachments(text: bytes, attachment: bytes) -> bytes:
    """A business-like message: `text` as its body and a large PDF-like attachment, after it and before."""
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    pdf = (
        b'Content-Type: application/pdf; name="order.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="order.pdf"\r\n\r\n' + encoded
    )
    return (
        HEAD % b"order"
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
        + b"--=_b\r\n"
        + pdf
        + b"\r\n--=_b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        + text
        + b"\r\n--=_b\r\n"
        + pdf
        + b"\r\n--=_b--\r\n"
    )


async def test_a_slimmed_copy_is_checked_when_the_message_is_too_large(spamd: Spamd) -> None:
    mail = _with_attachments(b"Please see the GTUBE:\r\n" + GTUBE + b"\r\n", os.urandom(600_000))
    slim = SpamdScanner("sa", spamd.unix_address, max_size=400 * 1024, slim=True, attachment_head=2048)
    result = await slim.check(io.BytesIO(mail), len(mail))
    assert not result.error and result.score is not None and result.score >= 1000
    assert "GTUBE" in result.rules
    assert len(slim.sample(io.BytesIO(mail), len(mail))) < 10_000
    whole = SpamdScanner("sa", spamd.unix_address, max_size=400 * 1024)
    assert (await whole.check(io.BytesIO(mail), len(mail))).skipped


async def test_a_slimmed_copy_scores_as_the_whole_message(spamd: Spamd) -> None:
    mail = _with_attachments(b"Hi Bob,\r\n\r\nthe order as promised.\r\n\r\nAlice\r\n", os.urandom(200_000))
    whole = await SpamdScanner("sa", spamd.unix_address, max_size=len(mail)).check(
        io.BytesIO(mail), len(mail)
    )
    slimmed = await SpamdScanner("sa", spamd.unix_address, slim=True).check(io.BytesIO(mail), len(mail))
    assert not whole.error and not slimmed.error
    assert (slimmed.score, slimmed.rules) == (whole.score, whole.rules)


async def test_a_slimmed_copy_cut_at_max_size(spamd: Spamd) -> None:
    mail = NOTE_MAIL + b"".join(b"line %06d of a long and boring newsletter\r\n" % i for i in range(20_000))
    scanner = SpamdScanner("sa", spamd.unix_address, max_size=100_000, slim=True)
    assert scanner.sample(io.BytesIO(mail), len(mail)) == mail[:100_000]
    result = await scanner.check(io.BytesIO(mail), len(mail))
    assert not result.error and result.score is not None


class _Unreadable(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError("disk gone")


@pytest.mark.parametrize("size", [100, 10_000_000])
async def test_a_slimmed_copy_of_an_unreadable_message_is_an_error(size: int) -> None:
    scanner = SpamdScanner("sa", f"127.0.0.1:{_closed_port()}", slim=True)
    result = await scanner.check(_Unreadable(), size)
    assert result.error.startswith("cannot read the message: disk gone")


async def test_a_bad_user_name_is_an_error_not_a_header(spamd: Spamd) -> None:
    result = await SpamdScanner("sa", spamd.unix_address).check(
        io.BytesIO(NOTE_MAIL), len(NOTE_MAIL), user="x\r\nContent-length: 0"
    )
    assert "user name" in result.error and result.score is None


@pytest.mark.parametrize("slim", [False, True])
async def test_spamd_reads_the_envelope_sender_as_a_return_path(spamd: Spamd, slim: bool) -> None:
    # As amavisd-new gives it to SpamAssassin: its rules on the envelope sender fire only with it.
    scanner = SpamdScanner("sa", spamd.unix_address, slim=slim)
    plain = await scanner.check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL))
    told = await scanner.check(
        io.BytesIO(NOTE_MAIL), len(NOTE_MAIL), envelope=SpamEnvelope(sender="mallory@elsewhere.example")
    )
    assert not plain.error and not told.error
    assert (
        "HEADER_FROM_DIFFERENT_DOMAINS" in told.rules and "HEADER_FROM_DIFFERENT_DOMAINS" not in plain.rules
    )


@pytest.mark.parametrize(
    "sender", ["x@elsewhere.example\r\nX-Spam-Flag: NO", "x@elsewhere.example\n", "\x00@a", "a" * 999]
)
async def test_a_sender_that_would_end_its_line_is_not_passed_on(spamd: Spamd, sender: str) -> None:
    scanner = SpamdScanner("sa", spamd.unix_address, slim=True)
    plain = await scanner.check(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL))
    told = await scanner.check(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL), envelope=SpamEnvelope(sender=sender))
    assert not told.error and told.rules == plain.rules


def test_the_return_path_takes_the_line_end_of_the_message() -> None:
    from qsift.checks.spam import _return_path

    assert _return_path("", b"From: a\r\n\r\nx") == b"Return-Path: <>\r\n"
    assert _return_path("a@b", b"From: a\n\nx") == b"Return-Path: <a@b>\n"


@pytest.mark.parametrize("slim", [False, True])
async def test_a_message_shorter_than_its_size_is_an_error(spamd: Spamd, slim: bool) -> None:
    started = time.monotonic()
    scanner = SpamdScanner("sa", spamd.unix_address, slim=slim)
    result = await scanner.check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL) + 10)
    assert "ended 10 bytes before" in result.error
    assert time.monotonic() - started < 5


# --- spamd down, hanging, confused --------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", [SpamdScanner, RspamdScanner])
async def test_daemon_down(kind: type[SpamdScanner | RspamdScanner], tmp_path: Path) -> None:
    for address in (f"127.0.0.1:{_closed_port()}", f"unix:{tmp_path}/none.sock"):
        result = await check(kind("s", address, connect_timeout=2.0), GTUBE_MAIL)
        assert isinstance(result.error, str) and "cannot connect" in result.error  # type: ignore[attr-defined]
        assert address.removeprefix("unix:") in result.error  # type: ignore[attr-defined]


async def test_ping_when_down() -> None:
    assert await SpamdScanner("sa", f"127.0.0.1:{_closed_port()}").ping() == ""


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 running `handler` per connection; yields its host:port."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # to EOF (spamd's half-close) or forever (rspamd)
    await asyncio.sleep(3600)


def answer(reply: bytes, *, drain: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if drain:  # read the message too, so closing sends FIN, not RST
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(1 << 20), 2)

    return handler


@pytest.mark.parametrize("kind", [SpamdScanner, RspamdScanner])
async def test_a_hanging_daemon_is_an_error_within_the_timeout(
    kind: type[SpamdScanner | RspamdScanner],
) -> None:
    async with fake_server(hang) as address:
        started = time.monotonic()
        result = await check(kind("s", address, timeout=0.5), GTUBE_MAIL)
    assert "no reply within 0.5s" in result.error  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2


async def test_ping_to_a_hanging_daemon() -> None:
    async with fake_server(hang) as address:
        assert await SpamdScanner("sa", address, timeout=0.3).ping() == ""


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nhello", "status line"),
        (
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 9.0 / 5.0\r\n\r\nGTU",
            "Content-length said 5",
        ),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n", "Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "no Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 6\r\nSpam: True ; 9 / 5\r\n\r\nA B,C\n", "rule name"),
        (b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n", "spamd answered 76 Bad header"),
        (b"", "ended before the status line"),
    ],
)
async def test_garbage_from_spamd_is_an_error(reply: bytes, error: str) -> None:
    async with fake_server(answer(reply)) as address:
        result = await SpamdScanner("sa", address, timeout=5).check(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL))
    assert error in result.error
    assert (result.score, result.rules) == (None, ())


async def test_pong_from_a_fake_that_fails() -> None:
    async with fake_server(answer(b"SPAMD/1.5 76 Bad\r\n")) as address:
        assert await SpamdScanner("sa", address).ping() == ""


async def test_a_daemon_that_closes_mid_message() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    mail = NOTE_MAIL + b"x" * 4_000_000
    async with fake_server(close_at_once) as address:
        result = await SpamdScanner("sa", address, max_size=len(mail)).check(io.BytesIO(mail), len(mail))
    assert "connection lost" in result.error or "ended before" in result.error


async def test_what_spamd_reads_from_us() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # returns only because the client half-closed
        writer.write(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: False ; 0.5 / 5.0\r\n\r\nA,B\r\n")

    async with fake_server(record) as address:
        result = await SpamdScanner("sa", address).check(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL), user="bob")
    assert received == [
        b"SYMBOLS SPAMC/1.5\r\nUser: bob\r\nContent-length: %d\r\n\r\n" % len(NOTE_MAIL) + NOTE_MAIL
    ]
    assert (result.score, result.required, result.rules, result.error) == (0.5, 5.0, ("A", "B"), "")


@pytest.mark.parametrize(
    "address",
    ["", "unix:relative.sock", "[::1", "[::1]x", "::1", "host:0", "host:99999", "host:http", "a:1:2"],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ConfigError):
        SpamdScanner("sa", address)


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("localhost", "localhost:783"),
        ("[::1]:783", "[::1]:783"),
        ("[::1]", "[::1]:783"),
        ("127.0.0.1:1783", "127.0.0.1:1783"),
        ("unix:/run/spamd.sock", "unix:/run/spamd.sock"),
    ],
)
def test_addresses(address: str, shown: str) -> None:
    assert str(SpamdScanner("sa", address).address) == shown


def test_rspamd_default_port() -> None:
    assert str(RspamdScanner("rs", "localhost").address) == "localhost:11333"


# --- rspamd: fakes written to docs.rspamd.com's reply format ------------------------------------------


def http(status: bytes, body: bytes, *, chunk: bool = False) -> bytes:
    if chunk:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
        )
        return b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (status, framed)
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body)


REJECT_JSON = (
    b'{"is_skipped":false,"score":16.5,"required_score":15,"action":"reject","symbols":{"GTUBE":{"name":'
    b'"GTUBE","score":0},"R_DKIM_NA":{"name":"R_DKIM_NA","score":0}},"messages":{"smtp_message":"Spam!"}}'
)


@pytest.mark.parametrize("chunk", [False, True])
async def test_rspamd_fake_reply(chunk: bool) -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head + await reader.readexactly(len(GTUBE_MAIL)))
        writer.write(http(b"200 OK", REJECT_JSON, chunk=chunk))
        await writer.drain()
        await asyncio.sleep(3600)  # a reply framed by its length or chunks needs no EOF

    async with fake_server(record) as address:
        scanner = RspamdScanner("rs", address, timeout=5)
        result, reply = await scanner.analyse(
            io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL), sender="", recipients=["bob@example.org"], ip="192.0.2.1"
        )
    assert (result.score, result.required, result.rules, result.error) == (
        16.5,
        15.0,
        ("GTUBE", "R_DKIM_NA"),
        "",
    )
    assert reply is not None and (reply.action, reply.smtp_message) == ("reject", "Spam!")
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    assert b"\r\nContent-Length: %d\r\n" % len(GTUBE_MAIL) in head + b"\r\n"
    assert b"\r\nFrom: <>" in head and b"\r\nRcpt: bob@example.org" in head and b"\r\nIP: 192.0.2.1" in head
    assert body == GTUBE_MAIL


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (http(b"200 OK", b"<html>"), "not JSON"),
        (http(b"500 Internal Server Error", b'{"error":"cannot parse"}'), "HTTP 500: cannot parse"),
        (http(b"200 OK", b'{"score":1}'), "bad action"),
        (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "ended early"),
        (b"", "ended early"),
    ],
)
async def test_garbage_from_rspamd_is_an_error(reply: bytes, error: str) -> None:
    async with fake_server(answer(reply)) as address:
        result = await check(RspamdScanner("rs", address, timeout=5), GTUBE_MAIL)
    assert error in result.error  # type: ignore[attr-defined]


async def test_rspamd_is_told_the_envelope_and_not_what_would_end_a_line() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(len(GTUBE_MAIL))
        writer.write(http(b"200 OK", REJECT_JSON))
        await writer.drain()

    told = SpamEnvelope(
        sender="mallory@x.example\r\nIP: 10.0.0.1", recipients=("bob@example.org", "c\n@d"), ip="192.0.2.7"
    )
    async with fake_server(record) as address:
        result = await RspamdScanner("rs", address, timeout=5).check(
            io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL), envelope=told
        )
    assert not result.error and result.score == 16.5
    head = received[0]
    assert b"\r\nIP: 192.0.2.7\r\n" in head and b"\r\nRcpt: bob@example.org\r\n" in head
    assert b"From:" not in head and b"10.0.0.1" not in head and head.count(b"Rcpt:") == 1


async def test_rspamd_oversize_and_bad_header_values() -> None:
    scanner = RspamdScanner("rs", f"127.0.0.1:{_closed_port()}", max_size=10)
    assert (await check(scanner, GTUBE_MAIL)).skipped == "larger than 10 bytes"  # type: ignore[attr-defined]
    scanner = RspamdScanner("rs", f"127.0.0.1:{_closed_port()}")
    result, _ = await scanner.analyse(io.BytesIO(GTUBE_MAIL), len(GTUBE_MAIL), helo="a\r\nb")
    assert "control character" in result.error


# --- a real rspamd ------------------------------------------------------------------------------------

RSPAMD_CONF = """\
options {{
  pidfile = "{dir}/rspamd.pid";
  dbdir = "{dir}/db";
  tempdir = "{dir}";
  # Only loopback: nothing answers there, so every DNS lookup fails at once.
  dns {{ nameserver = ["127.0.0.1:53"]; timeout = 0.2s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
"""


@pytest.fixture(scope="module")
def rspamd() -> Iterator[tuple[str, Path]]:
    """rspamd's normal worker with no Lua rules and no modules: only its built-in checks (GTUBE).

    About 9 s to start, most of it compiling the public suffix list.
    """
    binary = shutil.which("rspamd")
    if binary is None:
        pytest.skip("rspamd is not installed (apt-get install rspamd)")
    workdir = Path(tempfile.mkdtemp(prefix="qsift-rspamd-"))
    (workdir / "db").mkdir()
    port = _closed_port()
    (workdir / "rspamd.conf").write_text(RSPAMD_CONF.format(dir=workdir, port=port))
    command = [binary, "--no-fork", "--config", str(workdir / "rspamd.conf")]
    if os.geteuid() == 0:
        entry = pwd.getpwnam("_rspamd")
        workdir.chmod(0o755)
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        command += ["--user", "_rspamd", "--group", "_rspamd"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _rspamd_pong(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rspamd did not start:\n{_tail(workdir / 'rspamd.log')}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", workdir / "rspamd.log"
    finally:
        stop_daemon(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _rspamd_pong(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
            return bool(response.read().startswith(b"pong"))
    except OSError:
        return False


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


async def test_real_rspamd_gtube_is_rejected(rspamd: tuple[str, Path]) -> None:
    address, log = rspamd
    scanner = RspamdScanner("rs", address)
    result, reply = await scanner.analyse(
        io.BytesIO(GTUBE_MAIL),
        len(GTUBE_MAIL),
        ip="127.0.0.1",
        helo="client.example.org",
        sender="alice@example.org",
        recipients=["bob@example.org"],
        queue_id="qsift-test-1",
    )
    assert not result.error
    assert reply is not None and reply.action == "reject"
    assert result.score is not None and result.score >= 15
    assert "GTUBE" in result.rules
    text = log.read_text(errors="replace")
    assert "qsift-test-1" in text and "<bob@example.org>" in text


async def test_real_rspamd_note_is_no_action(rspamd: tuple[str, Path]) -> None:
    result, reply = await RspamdScanner("rs", rspamd[0]).analyse(io.BytesIO(NOTE_MAIL), len(NOTE_MAIL))
    assert not result.error
    assert reply is not None and reply.action == "no action"
    assert result.score is not None and result.score < 4


async def test_connect_timeout() -> None:
    # A listener that never accepts, its backlog full: Linux drops further SYNs, so connect() hangs.
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        started = time.monotonic()
        result = await SpamdScanner("sa", f"127.0.0.1:{address[1]}", connect_timeout=0.3).check(
            io.BytesIO(NOTE_MAIL), len(NOTE_MAIL)
        )
    assert "connect timed out after 0.3s" in result.error
    assert time.monotonic() - started < 2


class _BadDisk(io.BytesIO):
    def read(self, size: int | None = -1, /) -> bytes:
        raise OSError(5, "Input/output error")


async def test_an_unreadable_message_is_an_error() -> None:
    async with fake_server(hang) as address:
        result = await SpamdScanner("sa", address, timeout=5).check(_BadDisk(NOTE_MAIL), len(NOTE_MAIL))
    assert "cannot read the message" in result.error
