"""Metrics: summed over a parent and its forked worker, served on loopback; nothing at all when off.

prometheus_client picks its storage when first imported, from PROMETHEUS_MULTIPROC_DIR, so every case that
turns metrics on runs in a fresh interpreter (`_run_in_child`, the `*_main` functions below), whatever
order the tests run in. This process never imports prometheus_client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from qsift.model import Answer, Reply
from qsift.observe import metrics

ROOT = Path(__file__).resolve().parents[2]
K = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok")
Z = Reply(Answer.TEMPFAIL, 451, "4.3.0", "try later")
DEADLINE = 30.0


def _child_command(main: str, *args: str) -> list[str]:
    code = f"import sys; from tests.unit.test_metrics import {main}; {main}(*sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    return {**env, **extra}


async def _run_in_child(main: str, *args: str, **env: str) -> str:
    """Run `main(*args)` in a fresh interpreter; its standard output."""
    child = await asyncio.create_subprocess_exec(
        *_child_command(main, *args),
        cwd=ROOT,
        env=_child_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(DEADLINE):
            out, err = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()
    return out.decode()


def samples(exposition: str) -> dict[str, float]:
    """`name{labels}` → value, as the text format prints them (labels in alphabetical order)."""
    pairs = (line.rsplit(" ", 1) for line in exposition.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


async def http_get(port: int, request: bytes) -> tuple[str, str]:
    """The status line and the body; the server must close the connection itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(DEADLINE):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body.decode()


# --- a parent, its forked worker, the endpoint ---------------------------------------------------------


def serve_main(directory: str) -> None:
    """The parent: records, forks a worker that records and exits, serves; `gone` on stdin calls
    worker_gone for that worker; an empty line ends it."""
    metrics.setup(directory)
    metrics.worker_restarted("crash")
    metrics.answered("qmqp", K)
    metrics.sessions_in_progress("qmqp:parent", 1)
    worker = os.fork()
    if worker == 0:
        metrics.answered("qmqp", K, Z)
        metrics.sessions_in_progress("qmqp:worker", 2)
        metrics.stage_done("forward", time.monotonic() - 0.2)
        metrics.scanner_done("clamd", time.monotonic(), failed=True)
        os._exit(0)
    os.waitpid(worker, 0)

    async def serve() -> None:
        server = await metrics.serve("127.0.0.1:0")
        print(server.sockets[0].getsockname()[1], flush=True)
        while command := (await asyncio.to_thread(sys.stdin.readline)).strip():
            if command == "gone":
                metrics.worker_gone(worker)
            print("done", flush=True)
        server.close()
        await server.wait_closed()

    asyncio.run(serve())


@dataclass
class Served:
    port: int
    child: asyncio.subprocess.Process

    async def command(self, text: str) -> None:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(text.encode() + b"\n")
        async with asyncio.timeout(DEADLINE):
            assert await self.child.stdout.readline() == b"done\n"

    async def scrape(self) -> dict[str, float]:
        status, body = await http_get(self.port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == "HTTP/1.1 200 OK", status
        return samples(body)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    directory = tmp_path / "metrics"
    directory.mkdir()
    # A previous run's leftovers: a counter file (garbage, which would break the sum if read) and a file
    # that is not the library's.
    (directory / "counter_999999.db").write_bytes(b"left over")
    (directory / "notes.txt").write_text("not ours")
    child = await asyncio.create_subprocess_exec(
        *_child_command("serve_main", str(directory)),
        cwd=ROOT,
        env=_child_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        async with asyncio.timeout(DEADLINE):
            port = int(await child.stdout.readline())
        yield Served(port, child)
        child.stdin.write(b"\n")
        async with asyncio.timeout(DEADLINE):
            assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_parent_and_worker_are_summed(served: Served) -> None:
    got = await served.scrape()
    # Both processes answered K once; only the worker answered Z.
    assert got['qsift_answers_total{answer="K",protocol="qmqp"}'] == 2
    assert got['qsift_answers_total{answer="Z",protocol="qmqp"}'] == 1
    assert got['qsift_worker_restarts_total{reason="crash"}'] == 1
    assert got['qsift_stage_seconds_count{stage="forward"}'] == 1
    assert got['qsift_stage_seconds_bucket{le="0.1",stage="forward"}'] == 0
    assert got['qsift_stage_seconds_bucket{le="0.25",stage="forward"}'] == 1
    assert got['qsift_scanner_seconds_count{scanner="clamd"}'] == 1
    assert got['qsift_scanner_errors_total{scanner="clamd"}'] == 1
    assert got['qsift_sessions_in_progress{listener="qmqp:parent"}'] == 1
    assert got['qsift_sessions_in_progress{listener="qmqp:worker"}'] == 2


async def test_worker_gone_drops_its_sessions_and_keeps_its_counts(served: Served) -> None:
    await served.command("gone")
    got = await served.scrape()
    assert 'qsift_sessions_in_progress{listener="qmqp:worker"}' not in got
    assert got['qsift_sessions_in_progress{listener="qmqp:parent"}'] == 1
    assert got['qsift_answers_total{answer="K",protocol="qmqp"}'] == 2
    assert got['qsift_stage_seconds_count{stage="forward"}'] == 1


async def test_setup_empties_the_directory_of_the_last_run(served: Served, tmp_path: Path) -> None:
    await served.scrape()
    names = os.listdir(tmp_path / "metrics")
    assert "counter_999999.db" not in names
    assert "notes.txt" in names


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /metrics/x HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"nonsense\r\n\r\n",
    ],
)
async def test_anything_but_get_metrics_is_not_found(served: Served, request_bytes: bytes) -> None:
    status, _ = await http_get(served.port, request_bytes)
    assert status == "HTTP/1.1 404 Not Found"


async def test_a_request_past_the_limit_is_refused(served: Served) -> None:
    status, _ = await http_get(served.port, b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"


async def test_a_silent_client_does_not_stop_the_next_scrape(served: Served) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        assert (await served.scrape())['qsift_worker_restarts_total{reason="crash"}'] == 1
    finally:
        writer.close()
        await writer.wait_closed()


# --- off, and set up in the wrong order ----------------------------------------------------------------


def disabled_main() -> None:
    """Every recording call without setup, even with the variable in the environment."""
    metrics.worker_restarted("crash")
    metrics.worker_gone(os.getpid())
    metrics.stage_done("total", time.monotonic())
    metrics.scanner_done("clamd", time.monotonic(), failed=True)
    metrics.message_fate("clean", "pass", 3)
    metrics.answered("smtp", K, Z)
    metrics.sessions_in_progress("smtp:test", 1)
    metrics.busy("smtp:test")
    metrics.quarantined("virus")
    metrics.dsn("sent")
    print(metrics.enabled(), "prometheus_client" in sys.modules)


async def test_off_records_nothing_and_imports_nothing(tmp_path: Path) -> None:
    out = await _run_in_child("disabled_main", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert out.split() == ["False", "False"]
    assert os.listdir(tmp_path) == []


async def test_serve_needs_setup() -> None:
    assert not metrics.enabled()
    with pytest.raises(RuntimeError, match="setup"):
        await metrics.serve("127.0.0.1:0")


def wrong_order_main(directory: str) -> None:
    import prometheus_client  # noqa: F401 - imported before setup, as a careless caller would

    try:
        metrics.setup(directory)
    except RuntimeError as exc:
        print(exc)


def twice_main(directory: str) -> None:
    metrics.setup(directory)
    try:
        metrics.setup(directory)
    except RuntimeError as exc:
        print(exc)


async def test_setup_after_prometheus_client_is_imported_is_refused(tmp_path: Path) -> None:
    out = await _run_in_child("wrong_order_main", str(tmp_path / "m"))
    assert "before prometheus_client is imported" in out


async def test_setup_twice_is_refused(tmp_path: Path) -> None:
    assert "already set up" in await _run_in_child("twice_main", str(tmp_path / "m"))


def lost_directory_main(directory: str) -> None:
    """Recording once the files cannot be written (here: the directory is gone)."""
    metrics.setup(directory)
    shutil.rmtree(directory)
    metrics.answered("qmqp", K)
    metrics.stage_done("total", time.monotonic())
    print("still serving mail")


async def test_a_metrics_file_that_cannot_be_written_never_stops_mail(tmp_path: Path) -> None:
    out = await _run_in_child("lost_directory_main", str(tmp_path / "m"))
    assert out.strip() == "still serving mail"


# --- the pipeline's own records --------------------------------------------------------------------------


def _message(attachment: str | None) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@example.org"
    mail["To"] = "bob@example.net"
    mail["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    mail["Subject"] = "metrics"
    mail["Message-ID"] = "<metrics-1@example.org>"
    mail.set_content("hello")
    if attachment is not None:
        program = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100
        mail.add_attachment(program, maintype="application", subtype="octet-stream", filename=attachment)
    return mail.as_bytes()


def pipeline_main(directory: str, work: str) -> None:
    """One clean and one banned message through a real Pipeline (maildir forward, DSNs to a maildir,
    a quarantine); prints the summed metrics."""
    from qsift.config import loads
    from qsift.model import Envelope, Recipient
    from qsift.pipeline import build_pipeline
    from qsift.spool import MessageSpool

    metrics.setup(directory)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    forward, dsn = os.path.join(work, "forward"), os.path.join(work, "dsn")
    pipeline = build_pipeline(
        loads(
            f'state_dir = "{work}"\nmyhostname = "localhost"\n[notify]\nmethod = "maildir:{dsn}"\n'
            f'[forward]\nmethod = "maildir:{forward}"\n'
        )
    )

    async def send(message: bytes) -> None:
        envelope = Envelope("alice@example.org", (Recipient("bob@example.net"),), protocol="ESMTP")
        with MessageSpool.from_bytes(message) as spool:
            await pipeline.handle(envelope, spool)

    asyncio.run(send(_message(None)))
    asyncio.run(send(_message("invoice.exe")))
    asyncio.run(pipeline.close())
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    print(generate_latest(registry).decode())


def refusal_main(directory: str, work: str) -> None:
    """A message the downstream takes for one recipient and refuses for the other: the sender's DSN for
    the refused one counts as a DSN sent."""
    from dataclasses import replace

    from qsift.config import loads
    from qsift.model import Envelope, Recipient
    from qsift.pipeline import build_pipeline
    from qsift.pipeline.checking import NoChecks
    from qsift.spool import MessageSpool
    from tests.fakes.mta import Script, fake_mta

    metrics.setup(directory)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    async def send() -> None:
        script = Script(rcpt_replies={"carol@example.net": "550 5.1.1 no such user"})
        async with fake_mta(script) as mta:
            config = loads(
                f'myhostname = "localhost"\n[notify]\nmethod = "maildir:{os.path.join(work, "dsn")}"\n'
                f'[forward]\nmethod = "smtp:[127.0.0.1]:{mta.port}"\n'
            )
            pipeline = replace(build_pipeline(config, durable=False), checks=NoChecks())
            recipients = (Recipient("bob@example.net"), Recipient("carol@example.net"))
            with MessageSpool.from_bytes(_message(None)) as spool:
                outcome = await pipeline.handle(Envelope("alice@example.org", recipients), spool)
            await pipeline.close()
            assert outcome.reply.answer.name == "ACCEPT", outcome

    asyncio.run(send())
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    print(generate_latest(registry).decode())


async def test_a_dsn_for_recipients_the_downstream_refused_is_counted(tmp_path: Path) -> None:
    got = samples(await _run_in_child("refusal_main", str(tmp_path / "metrics"), str(tmp_path)))
    assert got['qsift_dsn_total{result="sent"}'] == 1
    assert len(os.listdir(tmp_path / "dsn" / "new")) == 1


async def test_pipeline_records_stages_fates_quarantine_and_dsn(tmp_path: Path) -> None:
    got = samples(await _run_in_child("pipeline_main", str(tmp_path / "metrics"), str(tmp_path)))
    assert got['qsift_messages_total{category="clean",destiny="pass"}'] == 1
    assert got['qsift_messages_total{category="banned",destiny="bounce"}'] == 1
    assert got['qsift_recipients_total{destiny="pass"}'] == 1
    assert got['qsift_recipients_total{destiny="bounce"}'] == 1
    assert got['qsift_quarantined_total{category="banned"}'] == 1
    assert got['qsift_dsn_total{result="sent"}'] == 1
    assert got['qsift_stage_seconds_count{stage="decode"}'] == 2
    assert got['qsift_stage_seconds_count{stage="checks"}'] == 2
    # The banned message is not forwarded; its DSN goes through the notify method, not the forward.
    assert got['qsift_stage_seconds_count{stage="forward"}'] == 1
    assert not [name for name in got if re.match(r"qsift_(answers|busy|scanner)", name)]
