"""The forwards that need no network: maildir and a qmail-queue program (fakes/qmail_queue.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from qsift.act.maildir import MaildirForwarder
from qsift.act.qmail_queue import QmailQueueForwarder
from qsift.model import Answer, Envelope, Recipient
from qsift.spool import MessageSpool

FAKE_QQ = Path(__file__).parents[2] / "fakes" / "qmail_queue.py"
ENVELOPE = Envelope("alice@example.org", (Recipient("bob@example.net"), Recipient("carol@example.net")))


def _fake_qq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> QmailQueueForwarder:
    wrapper = tmp_path / "qmail-queue"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_QQ}\n")
    wrapper.chmod(0o755)
    queue = tmp_path / "queue"
    queue.mkdir(exist_ok=True)
    monkeypatch.setenv("FAKE_QQ_DIR", str(queue))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return QmailQueueForwarder(str(wrapper), timeout=10)


async def test_maildir_delivery_is_lf_with_trace_headers(tmp_path: Path) -> None:
    forwarder = MaildirForwarder(str(tmp_path / "Maildir"))
    with MessageSpool.from_bytes(b"Subject: hi\r\n\r\nbody\r\n") as spool:
        result = await forwarder.forward(ENVELOPE, spool)
    assert result.all_accepted
    (delivered,) = (tmp_path / "Maildir" / "new").iterdir()
    assert delivered.read_bytes() == (
        b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.net\nDelivered-To: carol@example.net\n"
        b"Subject: hi\n\nbody\n"
    )
    assert not list((tmp_path / "Maildir" / "tmp").iterdir())


async def test_maildir_failure_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with MessageSpool.from_bytes(b"x\n") as spool:
        result = await MaildirForwarder(str(blocker / "Maildir")).forward(ENVELOPE, spool)
    assert {r.reply.answer for r in result.per_recipient} == {Answer.TEMPFAIL}


async def test_qmail_queue_gets_message_on_fd0_and_envelope_on_fd1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwarder = _fake_qq(tmp_path, monkeypatch)
    with MessageSpool.from_bytes(b"Subject: hi\r\n\r\nbody\r\n" * 20000) as spool:
        result = await forwarder.forward(ENVELOPE, spool)
    assert result.all_accepted, result
    (env,) = (tmp_path / "queue").glob("*.env")
    assert env.read_bytes() == b"Falice@example.org\0Tbob@example.net\0Tcarol@example.net\0\0"
    (msg,) = (tmp_path / "queue").glob("*.msg")
    assert msg.read_bytes() == b"Subject: hi\n\nbody\n" * 20000


async def test_a_slow_qmail_queue_gets_the_whole_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message a little larger than the pipe (64 KiB), to a qmail-queue slow to start reading: what the
    pipe could not take stayed in the write transport, and closing the file under it cut the message
    short; qmail-queue then queued the shortened message (found under CPU load)."""
    forwarder = _fake_qq(tmp_path, monkeypatch, FAKE_QQ_SLOW="0.2")
    body = b"".join(b"line %06d of a message larger than the pipe\r\n" % n for n in range(2000))
    with MessageSpool.from_bytes(b"Subject: big\r\n\r\n" + body) as spool:
        result = await forwarder.forward(ENVELOPE, spool)
    assert result.all_accepted, result
    (msg,) = (tmp_path / "queue").glob("*.msg")
    assert msg.read_bytes() == b"Subject: big\n\n" + body.replace(b"\r\n", b"\n")


@pytest.mark.parametrize(
    ("code", "custom", "answer", "text"),
    [
        ("31", "", Answer.REJECT, "permanently"),
        ("11", "", Answer.REJECT, "address too long"),
        ("71", "", Answer.TEMPFAIL, "temporarily"),
        ("53", "", Answer.TEMPFAIL, "disk full"),
        ("100", "", Answer.TEMPFAIL, ""),
        ("82", "Dno such mailbox here (#5.1.1)", Answer.REJECT, "no such mailbox here"),
        ("82", "Zover quota, try later (#4.2.2)", Answer.TEMPFAIL, "over quota"),
    ],
)
async def test_qmail_queue_exit_codes_map_like_qmail_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, custom: str, answer: Answer, text: str
) -> None:
    forwarder = _fake_qq(tmp_path, monkeypatch, FAKE_QQ_EXIT=code, FAKE_QQ_CUSTOM=custom)
    with MessageSpool.from_bytes(b"Subject: x\n\nbody\n") as spool:
        result = await forwarder.forward(ENVELOPE, spool)
    replies = {r.reply for r in result.per_recipient}
    assert len(replies) == 1
    (reply,) = replies
    assert reply.answer is answer
    assert text in reply.text


async def test_qmail_queue_timeout_and_missing_program_are_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _fake_qq(tmp_path, monkeypatch, FAKE_QQ_SLEEP="30")
    slow.timeout = 0.5
    with MessageSpool.from_bytes(b"x\n") as spool:
        result = await slow.forward(ENVELOPE, spool)
        assert "timed out" in result.per_recipient[0].reply.text
        missing = await QmailQueueForwarder(str(tmp_path / "nope"), timeout=5).forward(ENVELOPE, spool)
    assert missing.per_recipient[0].reply.answer is Answer.TEMPFAIL
    assert os.listdir(tmp_path / "queue") == []
