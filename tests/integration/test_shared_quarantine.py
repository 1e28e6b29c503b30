"""The quarantine shared in PostgreSQL (issue 13): what node A keeps, node B lists, shows and releases.

Two qsift nodes on loopback and one private cluster (tests/postgres_server.py). The rows are checked
against amavisd-new's documented columns (reference amavisd-sql.md §1.3-1.5); the released copy must reach
the fake MTA as it came. With PostgreSQL stopped, or its quarantine table gone, a blocked message is
answered Z: neither delivered nor bounced nor half kept, so the client still has it.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qsift.store.amavisd_forms import CHUNK_SIZE
from qsift.store.pg_migrate import migrate
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.integration.test_destinies import PROGRAM, mail_to_bob
from tests.integration.test_shared_outcomes import store
from tests.postgres_server import PostgresServer

QSIFT = str(Path(sys.executable).parent / "qsift")
SENDER = b"alice@example.org"
RECIPIENTS = [b"Bob@Example.NET", b"carol@example.net"]
_databases = itertools.count()


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    """A fresh database at the latest schema (`qsift store init`)."""
    url = postgres.create_database(f"quarantine{next(_databases)}")
    with psycopg.connect(url, autocommit=True) as db:
        migrate(db)
    return url


def big_banned_message() -> bytes:
    """A banned attachment after ~40 kB of text, so the quarantined copy takes three chunks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("invoice.pdf.exe", PROGRAM)
    text = "".join(f"line {n:05d} of the covering letter, long enough to fill chunks\n" for n in range(600))
    mail = mail_to_bob("Rechnung für März", "<banned-big@example.org>", text)
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="invoice.zip")
    return mail.as_bytes()


def node_config(path: Path, url: str, mta_port: int) -> Path:
    """A node's configuration file, as an administrator on node B would run the commands with."""
    path.write_text(
        f'state_dir = "{path.parent / "b-state"}"\nmyhostname = "b.qsift.test"\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{mta_port}"\n'
        f'[store]\nurl = "{url}"\nconnect_timeout = 1.0\n'
    )
    return path


def qsift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QSIFT, *args], capture_output=True, text=True, timeout=60, check=False)


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(query, params).fetchall()


def execute(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(statement)


async def test_kept_on_node_a_listed_shown_and_released_byte_exact_from_node_b(
    tmp_path: Path, store_url: str
) -> None:
    message = big_banned_message()
    async with fake_mta() as mta:
        async with running_daemon(
            tmp_path / "a", f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=store(store_url)
        ) as a:
            answer = await qmqp_send(a.qmqp, message, SENDER, RECIPIENTS)
        assert answer.startswith("K") and "BOUNCE" in answer, answer
        mail_id = answer.split("id=")[1].split(",")[0]
        assert not (tmp_path / "a" / "state" / "quarantine" / "index.sqlite").exists()
        config = str(node_config(tmp_path / "b.toml", store_url, mta.port))

        listed = qsift("quarantine", "list", "--json", "--config", config)
        assert listed.returncode == 0, listed.stderr
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert entry["mail_id"] == mail_id and entry["category"] == "banned"
        assert entry["sender"] == "alice@example.org"
        assert entry["recipients"] == ["Bob@Example.NET", "carol@example.net"]
        assert entry["size"] == len(message) and entry["file"] == mail_id and entry["released"] == []
        shown = qsift("quarantine", "show", "--config", config, mail_id)
        assert shown.returncode == 0 and "Message-ID: <banned-big@example.org>" in shown.stdout

        dsns = len(mta.deliveries)
        released = await asyncio.to_thread(
            qsift, "release", "--config", config, "--to", "carol@example.net", mail_id
        )
        assert released.returncode == 0, released.stdout + released.stderr
        assert "<carol@example.net>: 250" in released.stdout
    [delivered] = mta.deliveries[dsns:]
    assert delivered.recipients == [b"carol@example.net"]
    assert delivered.body.replace(b"\r\n", b"\n") == message
    relisted = json.loads(qsift("quarantine", "list", "--json", "--config", config).stdout)
    assert relisted["released"] == ["carol@example.net"]
    assert rows(store_url, "SELECT rseqnum, rs FROM msgrcpt ORDER BY rseqnum") == [(1, " "), (2, "R")]
    purged = qsift("quarantine", "purge", "--older-than", "0", "--config", config)
    assert purged.stdout.startswith("1 quarantined message(s)"), purged.stdout + purged.stderr
    for table in ("msgs", "msgrcpt", "quarantine", "qsift_quarantine", "qsift_release"):
        assert rows(store_url, f"SELECT count(*) FROM {table}") == [(0,)], table  # noqa: S608


async def test_the_rows_are_amavisd_news(tmp_path: Path, store_url: str) -> None:
    message = big_banned_message()
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=store(store_url)
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, message, SENDER, RECIPIENTS)
    mail_id = answer.split("id=")[1].split(",")[0].encode()
    [kept] = rows(
        store_url,
        "SELECT partition_tag, content, quar_type, quar_loc, size, time_num = extract(epoch FROM time_iso) "
        "FROM msgs WHERE mail_id = %s",
        mail_id,
    )
    assert kept == (0, "B", "Q", mail_id.decode(), len(message), True)
    [told] = rows(
        store_url,
        "SELECT from_addr, subject, message_id, host, (SELECT email FROM maddr WHERE id = sid) "
        "FROM msgs WHERE mail_id = %s",
        mail_id,
    )
    assert told == (
        "alice@example.org",
        "Rechnung für März",
        "<banned-big@example.org>",
        "qsift.test",
        b"alice@example.org",
    )
    recipients = rows(
        store_url,
        "SELECT rseqnum, email, domain, content, ds, rs, bl, wl FROM msgrcpt JOIN maddr ON maddr.id = rid "
        "WHERE mail_id = %s ORDER BY rseqnum",
        mail_id,
    )
    assert [(n, bytes(e), d, c, ds, rs, bl, wl) for n, e, d, c, ds, rs, bl, wl in recipients] == [
        (1, b"bob@example.net", "net.example", "B", "B", " ", "N", "N"),
        (2, b"carol@example.net", "net.example", "B", "B", " ", "N", "N"),
    ]
    chunks = rows(
        store_url,
        "SELECT chunk_ind, mail_text FROM quarantine WHERE mail_id = %s ORDER BY chunk_ind",
        mail_id,
    )
    assert [n for n, _ in chunks] == [1, 2, 3]
    assert [len(text) for _, text in chunks[:-1]] == [CHUNK_SIZE, CHUNK_SIZE]
    text = b"".join(bytes(chunk) for _, chunk in chunks)
    fields = (
        b"X-Envelope-From: <alice@example.org>\n"
        b"X-Envelope-To: <Bob@Example.NET>,\n <carol@example.net>\n"
        b"X-Envelope-To-Blocked: <Bob@Example.NET>,\n <carol@example.net>\n"
        b"X-Quarantine-ID: <" + mail_id + b">\n"
    )
    assert text == fields + message


async def test_postgresql_down_at_quarantine_time_means_try_later_and_nothing_lost(
    tmp_path: Path,
    store_url: str,
    postgres: PostgresServer,
) -> None:
    message = big_banned_message()
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=store(store_url)
        ) as daemon,
    ):
        # The table the chunks go to refuses them: the message's rows are rolled back together.
        execute(store_url, "ALTER TABLE quarantine RENAME TO quarantine_away")
        refused = await qmqp_send(daemon.qmqp, message, SENDER, RECIPIENTS)
        execute(store_url, "ALTER TABLE quarantine_away RENAME TO quarantine")
        await asyncio.to_thread(postgres.stop)
        try:
            stopped = await qmqp_send(daemon.qmqp, message, SENDER, RECIPIENTS)
        finally:
            await asyncio.to_thread(postgres.start)  # the module's cluster is shared
        assert rows(store_url, "SELECT count(*) FROM msgs") == [(0,)]
        assert rows(store_url, "SELECT count(*) FROM qsift_quarantine") == [(0,)]
        assert mta.deliveries == []  # neither delivered nor bounced: the client keeps it
        deadline = time.monotonic() + 30
        # The client retries, as qmail would, until the pool has reconnected.
        while not (again := await qmqp_send(daemon.qmqp, message, SENDER, RECIPIENTS)).startswith("K"):
            assert again.startswith("Z") and time.monotonic() < deadline, again
            await asyncio.sleep(0.2)
    assert stopped.startswith("Z"), stopped
    assert refused.startswith("Z451 4.3.0") and "quarantine" in refused, refused
    assert again.startswith("K") and "BOUNCE" in again, again
    assert rows(store_url, "SELECT count(*) FROM msgs") == [(1,)]
