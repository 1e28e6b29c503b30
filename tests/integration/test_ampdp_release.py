"""amavisd-new's release protocol (AM.PDP) served by a qsift node (reference amavisd-sql.md §3).

A message is quarantined by a real node into a private PostgreSQL cluster, then released over the node's
release sockets: by a client speaking AM.PDP as the front ends do, and by Debian's own amavisd-release
(unpacked from the amavisd-new package by `make venv`, never installed). The released copy must reach the
fake MTA as it came, the release must be recorded as `qsift release` records it, and every refusal must
be amavisd-new's failure reply with nothing delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qsift.mail_ids import new_mail_ids
from qsift.store.pg_migrate import migrate
from qsift.wire.ampdp import decode_text, encode_attributes
from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import RunningDaemon, free_port, qmqp_send, running_daemon
from tests.integration.test_shared_outcomes import store
from tests.integration.test_shared_quarantine import RECIPIENTS, SENDER, big_banned_message, rows
from tests.integration.test_workers import serving
from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
AMAVISD_RELEASE = ROOT / ".venv" / "amavisd-new" / "usr" / "sbin" / "amavisd-release"
_databases = itertools.count()


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    url = postgres.create_database(f"ampdp{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    return url


class Node:
    def __init__(self, daemon: RunningDaemon, mta: FakeMta, unix: Path, port: int, url: str) -> None:
        self.daemon, self.mta, self.unix, self.port, self.url = daemon, mta, unix, port, url

    async def quarantine(self) -> tuple[str, str]:
        """Send a banned message to Bob and Carol: (its mail_id, its msgs.secret_id)."""
        self.message = big_banned_message()  # its MIME boundary is new each time
        answer = await qmqp_send(self.daemon.qmqp, self.message, SENDER, RECIPIENTS)
        assert answer.startswith("K") and "BOUNCE" in answer, answer
        mail_id = answer.split("id=")[1].split(",")[0]
        [(secret,)] = rows(self.url, "SELECT secret_id FROM msgs WHERE mail_id = %s", mail_id.encode())
        self.mta.deliveries.clear()  # the bounce
        return mail_id, bytes(secret).decode()

    async def ask(self, request: bytes, *, unix: bool = False) -> bytes:
        """Send raw request bytes, read the reply up to its empty line (or the connection's end)."""
        if unix:
            reader, writer = await asyncio.open_unix_connection(str(self.unix))
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            reply = b""
            while not reply.endswith(b"\r\n\r\n"):
                data = await asyncio.wait_for(reader.read(4096), 20)
                if not data:
                    break
                reply += data
            return reply
        finally:
            writer.close()


def release_request(mail_id: str, secret_id: str = "", *recipients: str, **extra: str) -> bytes:
    attributes = [("request", "release"), ("mail_id", mail_id), ("quar_type", "Q")]
    if secret_id:
        attributes.append(("secret_id", secret_id))
    attributes += [("recipient", r) for r in recipients] + list(extra.items())
    return encode_attributes(attributes)


@contextlib.asynccontextmanager
async def node(tmp_path: Path, url: str, **release: Any) -> AsyncIterator[Node]:
    unix, port = tmp_path / "amavisd.sock", free_port()
    settings = {"listen": [f"unix:{unix}", f"127.0.0.1:{port}"], **release}
    async with (
        fake_mta(Script(rcpt_replies={"dave@example.net": "550 5.1.1 no such user"})) as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={**store(url), "release": settings},
        ) as daemon,
    ):
        yield Node(daemon, mta, unix, port, url)


def released_to(url: str, mail_id: str) -> list[tuple[Any, ...]]:
    return rows(
        url,
        "SELECT m.email, r.rs FROM msgrcpt r JOIN maddr m ON m.id = r.rid WHERE r.mail_id = %s "
        "ORDER BY r.rseqnum",
        mail_id.encode(),
    )


def failure(reply: bytes) -> str:
    """The text of amavisd-new's request failure reply; asserts its form."""
    lines = reply.split(b"\r\n")
    assert lines[1:] == [b"return_value=tempfail", b"exit_code=75", b"", b""], reply
    assert lines[0].startswith(b"setreply=450 4.5.0 Failure:"), reply
    return decode_text(lines[0].removeprefix(b"setreply=450 4.5.0 "))


async def test_a_front_end_releases_over_tcp_with_the_secret(tmp_path: Path, store_url: str) -> None:
    async with node(tmp_path, store_url) as n:
        mail_id, secret = await n.quarantine()
        # modoboa-amavis: bare LF line ends, recipient without angle brackets.
        request = release_request(mail_id, secret, "carol@example.net").replace(b"\r\n", b"\n")
        reply = await n.ask(request)
    assert reply.startswith(b"setreply=250")  # MailZu, amacube
    assert re.match(r"setreply=250 [\d.]+ Ok", decode_text(reply))  # modoboa
    assert len(reply) < 512 and reply.endswith(b"\r\n\r\n") and reply.count(b"\r\n") == 2
    assert "released to <carol@example.net>: 250 2.0.0 Ok: queued as" in decode_text(reply)
    [delivered] = n.mta.deliveries
    assert delivered.sender == SENDER and delivered.recipients == [b"carol@example.net"]
    assert delivered.body.replace(b"\r\n", b"\n") == n.message
    assert released_to(store_url, mail_id) == [(b"bob@example.net", " "), (b"carol@example.net", "R")]
    assert rows(store_url, "SELECT count(*) FROM qsift_release") == [(1,)]


async def test_no_recipient_means_the_blocked_ones_and_a_second_release_sends_nothing(
    tmp_path: Path, store_url: str
) -> None:
    async with node(tmp_path, store_url) as n:
        mail_id, secret = await n.quarantine()
        first = decode_text(await n.ask(release_request(mail_id, secret)))
        assert [d.recipients for d in n.mta.deliveries] == [[b"Bob@Example.NET", b"carol@example.net"]]
        # A second click, or iRedAdmin's retry: answered Ok, not sent again.
        again = decode_text(await n.ask(release_request(mail_id, secret)))
        assert len(n.mta.deliveries) == 1
    assert first.count("setreply=250 2.0.0 Ok") == 2, first
    assert again.splitlines()[:2] == [
        f"setreply=250 2.0.0 Ok, id={mail_id} released to <Bob@Example.NET> earlier",
        f"setreply=250 2.0.0 Ok, id={mail_id} released to <carol@example.net> earlier",
    ]
    assert released_to(store_url, mail_id) == [(b"bob@example.net", "R"), (b"carol@example.net", "R")]


async def test_two_nodes_asked_at_once_release_the_message_once(tmp_path: Path, store_url: str) -> None:
    # Two front ends (or a double click balanced over two nodes): without the release lock both nodes
    # read "not released yet" and both send it. Each downstream takes a second over the dot, so the two
    # releases overlap unless one waits for the other.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with node(tmp_path / "a", store_url) as a, node(tmp_path / "b", store_url) as b:
        mail_id, secret = await a.quarantine()
        a.mta.script.final_delay = b.mta.script.final_delay = 1.0
        replies = await asyncio.gather(
            a.ask(release_request(mail_id, secret, "carol@example.net")),
            b.ask(release_request(mail_id, secret, "carol@example.net")),
        )
        deliveries = a.mta.deliveries + b.mta.deliveries
    assert [d.recipients for d in deliveries] == [[b"carol@example.net"]]
    said = sorted(decode_text(r).splitlines()[0] for r in replies)
    assert said[0] == f"setreply=250 2.0.0 Ok, id={mail_id} released to <carol@example.net> earlier", said
    assert said[1].startswith(f"setreply=250 2.0.0 Ok, id={mail_id} released to <carol@example.net>: 250")
    assert rows(store_url, "SELECT count(*) FROM qsift_release") == [(1,)]


async def test_refusals_are_amavisd_news_failure_reply_and_deliver_nothing(
    tmp_path: Path, store_url: str
) -> None:
    other = new_mail_ids()
    async with node(tmp_path, store_url) as n:
        mail_id, secret = await n.quarantine()
        wrong = failure(await n.ask(release_request(mail_id, other.secret_id)))
        missing = failure(await n.ask(release_request(mail_id)))
        unknown = failure(await n.ask(release_request(other.mail_id, other.secret_id)))
        bad_id = failure(await n.ask(release_request("../../etc/passwd", secret)))
        requeue = failure(await n.ask(encode_attributes([("request", "requeue"), ("mail_id", mail_id)])))
        report = failure(await n.ask(encode_attributes([("request", "report"), ("mail_id", mail_id)])))
        partition = failure(await n.ask(release_request(mail_id, secret, partition_tag="7")))
        bsmtp = failure(
            await n.ask(encode_attributes([("request", "release"), ("mail_id", mail_id), ("quar_type", "B")]))
        )
        delivered = list(n.mta.deliveries)
    assert wrong == f"Failure: Secret_id does not match mail_id {mail_id}"
    assert other.secret_id not in wrong
    assert missing == "Failure: Secret_id is required, but missing"
    assert unknown == f"Failure: no quarantined message {other.mail_id}"
    assert bad_id.startswith("Failure: invalid mail_id")
    assert requeue.startswith("Failure: request=requeue is not served by qsift")
    assert report.startswith("Failure: request=report is not served by qsift")
    assert partition == f"Failure: no quarantined message {mail_id} in partition 7"
    assert bsmtp.startswith("Failure: quar_type=B is not served")
    assert delivered == []
    assert released_to(store_url, mail_id) == [(b"bob@example.net", " "), (b"carol@example.net", " ")]


async def test_the_unix_socket_releases_without_the_secret_unless_told_otherwise(
    tmp_path: Path, store_url: str
) -> None:
    async with node(tmp_path / "a", store_url) as n:
        mail_id, _ = await n.quarantine()
        reply = await n.ask(release_request(mail_id, "", "carol@example.net"), unix=True)
        assert reply.startswith(b"setreply=250 2.0.0 Ok"), reply
        assert len(n.mta.deliveries) == 1
    async with node(tmp_path / "b", store_url, unix_socket_needs_secret=True) as n:
        mail_id, _ = await n.quarantine()
        refused = failure(await n.ask(release_request(mail_id), unix=True))
        assert n.mta.deliveries == []
    assert refused == "Failure: Secret_id is required, but missing"


async def test_a_downstream_refusal_is_that_recipients_reply(tmp_path: Path, store_url: str) -> None:
    async with node(tmp_path, store_url) as n:
        mail_id, secret = await n.quarantine()
        reply = decode_text(
            await n.ask(release_request(mail_id, secret, "dave@example.net", "<carol@example.net>"))
        )
    lines = reply.splitlines()
    # The accepted recipient first: MailZu and amacube read only the first line.
    assert lines[0].startswith(f"setreply=250 2.0.0 Ok, id={mail_id} released to <carol@example.net>")
    assert lines[1].startswith(
        f"setreply=550 5.1.1 Failed, id={mail_id} not released to <dave@example.net>: 550 5.1.1 no such user"
    )
    assert [d.recipients for d in n.mta.deliveries] == [[b"carol@example.net"]]
    assert rows(store_url, "SELECT recipient FROM qsift_release") == [(b"carol@example.net",)]


async def test_several_requests_on_one_connection(tmp_path: Path, store_url: str) -> None:
    async with node(tmp_path, store_url) as n:
        first, first_secret = await n.quarantine()
        second, second_secret = await n.quarantine()
        # iRedAdmin: one connection, one request per message, with requested_by.
        request = release_request(first, first_secret, requested_by="admin@example.net")
        request += release_request(second, second_secret, requested_by="admin@example.net")
        reader, writer = await asyncio.open_connection("127.0.0.1", n.port)
        writer.write(request)
        replies = [await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20) for _ in range(2)]
        writer.close()
    assert all(r.startswith(b"setreply=250 2.0.0 Ok") for r in replies), replies
    assert len(n.mta.deliveries) == 2


async def test_hostile_input_and_strangers(tmp_path: Path, store_url: str) -> None:
    async with node(tmp_path / "a", store_url) as n:
        mail_id, secret = await n.quarantine()
        long_line = failure(await n.ask(b"request=" + b"x" * 10_000 + b"\r\n\r\n"))
        not_attributes = failure(await n.ask(b"GET / HTTP/1.0\r\n\r\n"))
        # The connection is closed after the failure: a request after the broken one is not read.
        after = await n.ask(b"garbage\r\n\r\n" + release_request(mail_id, secret))
        assert n.mta.deliveries == []
        assert (await n.ask(release_request(mail_id, secret))).startswith(b"setreply=250")
    assert long_line == "Failure: a line longer than 4096 bytes"
    assert not_attributes == "Failure: a line that is not name=value"
    assert after.count(b"setreply") == 1 and b"Failure" in after
    async with node(tmp_path / "b", store_url, acl=["192.0.2.0/24"]) as n:
        mail_id, secret = await n.quarantine()
        with contextlib.suppress(ConnectionResetError):  # closed unanswered, the request unread
            assert await n.ask(release_request(mail_id, secret)) == b""
        assert n.mta.deliveries == []


async def test_postgresql_down_is_a_failure_reply(
    tmp_path: Path, store_url: str, postgres: PostgresServer
) -> None:
    async with node(tmp_path, store_url) as n:
        mail_id, secret = await n.quarantine()
        await asyncio.to_thread(postgres.stop)
        try:
            reply = failure(await n.ask(release_request(mail_id, secret)))
        finally:
            await asyncio.to_thread(postgres.start)  # the module's cluster is shared
        assert n.mta.deliveries == []
    # The release lock is the first thing a release asks of PostgreSQL.
    assert reply.startswith("Failure: cannot lock the release: cannot use PostgreSQL"), reply


# --- Debian's amavisd-release -------------------------------------------------------------------------


def amavisd_release(directory: Path, socket_name: str) -> Path:
    """Debian's amavisd-release with its socket set to ours (it is a constant at the top of the script)."""
    if not AMAVISD_RELEASE.exists():
        pytest.skip(f"{AMAVISD_RELEASE} missing: `make venv` fetches it (apt-get download amavisd-new)")
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    text = AMAVISD_RELEASE.read_text()
    default = "$socketname = '/var/lib/amavis/amavisd.sock';"
    assert default in text
    directory.mkdir()
    script = directory / "amavisd-release"
    script.write_text(text.replace(default, f"$socketname = '{socket_name}';"))
    script.chmod(0o755)
    return script


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60, check=False)


async def test_debians_amavisd_release_over_the_unix_socket_and_tcp(tmp_path: Path, store_url: str) -> None:
    async with node(tmp_path, store_url) as n:
        over_unix = amavisd_release(tmp_path / "unix", str(n.unix))
        over_tcp = amavisd_release(tmp_path / "tcp", f"127.0.0.1:{n.port}")
        mail_id, secret = await n.quarantine()
        # As the postmaster on the filter host runs it: the mail_id as the log says it, no secret.
        local = await asyncio.to_thread(run, over_unix, mail_id, "carol@example.net")
        assert [d.recipients for d in n.mta.deliveries] == [[b"carol@example.net"]]
        # From another host: the secret is needed, and a wrong one is refused.
        wrong = await asyncio.to_thread(run, over_tcp, mail_id, new_mail_ids().secret_id)
        assert len(n.mta.deliveries) == 1
        remote = await asyncio.to_thread(run, over_tcp, f"spam-{mail_id}.gz", secret)
    assert local.returncode == 0, local.stderr
    assert local.stderr.startswith(
        f"250 2.0.0 Ok, id={mail_id} released to <carol@example.net>: 250 2.0.0 Ok"
    )
    assert wrong.returncode == 0 and wrong.stderr == (
        f"450 4.5.0 Failure: Secret_id does not match mail_id {mail_id}\n"
    )
    assert remote.returncode == 0, remote.stderr
    # No recipient given: the blocked ones, less Carol, who has it already.
    assert remote.stderr.splitlines() == [
        f"250 2.0.0 Ok, id={mail_id} released to <Bob@Example.NET>: "
        + remote.stderr.split(": ", 1)[1].splitlines()[0],
        f"250 2.0.0 Ok, id={mail_id} released to <carol@example.net> earlier",
    ]
    assert [d.recipients for d in n.mta.deliveries] == [[b"carol@example.net"], [b"Bob@Example.NET"]]
    assert released_to(store_url, mail_id) == [(b"bob@example.net", "R"), (b"carol@example.net", "R")]


async def test_qsift_serve_shares_the_release_sockets_and_a_reload_moves_them(
    tmp_path: Path, store_url: str
) -> None:
    unix, port, moved = tmp_path / "amavisd.sock", free_port(), free_port()

    def release_section(tcp: int) -> str:
        return f'[store]\nurl = "{store_url}"\n[release]\nlisten = ["unix:{unix}", "127.0.0.1:{tcp}"]\n'

    async with fake_mta() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", release_section(port)) as served:
            served.wait_for_log(rf"qsift ready: .*am\.pdp:127\.0\.0\.1:{port}")
            answer = await qmqp_send(served.port, big_banned_message(), SENDER, RECIPIENTS)
            assert "BOUNCE" in answer, answer
            mail_id = answer.split("id=")[1].split(",")[0]
            [(secret,)] = rows(store_url, "SELECT secret_id FROM msgs WHERE mail_id = %s", mail_id.encode())
            over_tcp = amavisd_release(tmp_path / "tcp", f"127.0.0.1:{port}")
            first = await asyncio.to_thread(
                run, over_tcp, mail_id, bytes(secret).decode(), "carol@example.net"
            )
            assert first.stderr.startswith("250 2.0.0 Ok"), first.stderr + served.log_text()

            config = served.config.read_text().replace(f'127.0.0.1:{port}"]', f'127.0.0.1:{moved}"]')
            served.config.write_text(config)
            served.process.send_signal(signal.SIGHUP)
            served.wait_for_log(rf"qsift ready: .*am\.pdp:127\.0\.0\.1:{moved}")
            over_unix = amavisd_release(tmp_path / "unix", str(unix))
            second = await asyncio.to_thread(run, over_unix, mail_id, "Bob@Example.NET")
            assert second.stderr.startswith("250 2.0.0 Ok"), second.stderr + served.log_text()
            over_moved = amavisd_release(tmp_path / "moved", f"127.0.0.1:{moved}")
            third = await asyncio.to_thread(run, over_moved, mail_id, bytes(secret).decode())
    assert [d.recipients for d in mta.deliveries[1:]] == [[b"carol@example.net"], [b"Bob@Example.NET"]]
    assert third.stderr.count("earlier") == 2, third.stderr
