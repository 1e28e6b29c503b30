"""Scanned once: mail qsift passed carries its mark, and qsift-queue sends marked mail that qmail-local
forwards straight to the real qmail-queue; a forged or altered mark is scanned as usual."""

from __future__ import annotations

import sys
from pathlib import Path

from qsift.wire import mark
from tests.fakes.mta import fake_mta
from tests.harness import free_port, qmqp_send, running_daemon
from tests.integration.test_qsift_queue import run_queue

FAKE_QQ = Path(__file__).parents[1] / "fakes" / "qmail_queue.py"
MESSAGE = b"From: alice@example.org\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: hi\n\nhello\nworld\n"


def fake_queue_program(tmp_path: Path) -> str:
    program = tmp_path / "qmail-queue.orig"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_QQ}\n")
    program.chmod(0o755)
    return str(program)


async def passed_copy(tmp_path: Path) -> bytes:
    """The message as qsift delivered it, in qmail's LF form, with what qmail-local prepends."""
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
    ):
        assert (await qmqp_send(daemon.qmqp, MESSAGE, b"alice@example.org", [b"bob@example.net"])).startswith(
            "K"
        )
    delivered = mta.deliveries[0].body.replace(b"\r\n", b"\n")
    assert delivered.startswith(f"{mark.FIELD}: v1 t=".encode())
    return b"Delivered-To: bob@example.net\n" + delivered


async def test_a_forwarded_message_skips_the_filter(tmp_path: Path) -> None:
    forwarded = await passed_copy(tmp_path)
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    env = {
        "QMQPSERVERS": f"127.0.0.1:{free_port()}",  # nobody there: going to the filter would fail
        "QSIFT_ORIG_QUEUE": fake_queue_program(tmp_path),
        "QSIFT_MARK_KEY": str(tmp_path / "state" / "mark.key"),
        "FAKE_QQ_DIR": str(queue_dir),
    }
    envelope = b"Fbob@example.net\0Tcarol@example.org\0\0"
    run = run_queue(tmp_path, env, forwarded, envelope)
    assert run.code == 0, run.stderr
    [queued] = sorted(queue_dir.glob("*.msg"))
    assert queued.read_bytes() == forwarded
    assert queued.with_suffix(".env").read_bytes() == envelope


async def test_an_altered_body_or_a_foreign_key_is_scanned_as_usual(tmp_path: Path) -> None:
    forwarded = await passed_copy(tmp_path)
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    other_key = tmp_path / "other.key"
    other_key.write_bytes(b"k" * 32)
    base = {
        "QMQPSERVERS": f"127.0.0.1:{free_port()}",
        "QSIFT_ORIG_QUEUE": fake_queue_program(tmp_path),
        "FAKE_QQ_DIR": str(queue_dir),
    }
    envelope = b"Fbob@example.net\0Tcarol@example.org\0\0"
    altered = forwarded.replace(b"hello", b"HELLO")
    for message, key in ((altered, tmp_path / "state" / "mark.key"), (forwarded, other_key)):
        run = run_queue(tmp_path, {**base, "QSIFT_MARK_KEY": str(key)}, message, envelope)
        assert run.code == 73, run.stderr  # sent to the filter (refused connection), not queued
    assert list(queue_dir.iterdir()) == []


def test_the_mark_survives_line_ends_and_breaks_on_any_body_change() -> None:
    key = b"s" * 32
    lf = mark.BodyDigest()
    lf.update(b"Subject: x\n\nbody\nline\n")
    crlf = mark.BodyDigest()
    for piece in (b"Subject: x\r", b"\n\r\nbody\r", b"\nline\r\n"):
        crlf.update(piece)
    assert lf.hexdigest() == crlf.hexdigest()
    value = mark.make_value(key, lf.hexdigest(), 1_000_000)
    assert mark.verify(key, value, crlf.hexdigest(), 1_000_100)
    assert not mark.verify(key, value, crlf.hexdigest(), 1_000_000 + mark.MAX_AGE + 1)  # stale
    assert not mark.verify(b"t" * 32, value, lf.hexdigest(), 1_000_100)  # another site's
    assert not mark.verify(key, value.replace("v1", "v2"), lf.hexdigest(), 1_000_100)
    changed = mark.BodyDigest()
    changed.update(b"Subject: x\n\nbody\nLine\n")
    assert not mark.verify(key, value, changed.hexdigest(), 1_000_100)
    assert mark.find_value(b"Delivered-To: b@x\nx-qsift-scanned:  v1 t=1 h=ab\n") == "v1 t=1 h=ab"
    assert mark.find_value(b"Subject: x\n") is None
