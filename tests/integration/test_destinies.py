"""Destinies end to end: what the sender side hears, what the downstream gets, what the notify side gets."""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import io
import re
import sys
import zipfile
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from qsift.store.quarantine import Quarantine
from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import RunningDaemon, qmqp_send, running_daemon, smtp_send

PROGRAM = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100
SENDER = b"alice@example.org"


def mail_to_bob(subject: str, message_id: str, text: str) -> EmailMessage:
    """A plain message from Alice to Bob with every field a header check wants."""
    mail = EmailMessage()
    mail["From"] = "alice@example.org"
    mail["To"] = "bob@example.net"
    mail["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    mail["Subject"] = subject
    mail["Message-ID"] = message_id
    mail.set_content(text)
    return mail


def banned_message(*, headers: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("invoice.pdf.exe", PROGRAM)
    mail = mail_to_bob("Invoice", "<banned-1@example.org>", "see attached")
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="invoice.zip")
    return mail.as_bytes()


async def run(tmp_path: Path, message: bytes, *, sender: bytes = SENDER, **top: Any) -> tuple[str, Any, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp", "smtp"), top=top or None
        ) as daemon,
    ):
        qmqp = await qmqp_send(daemon.qmqp, message, sender, [b"bob@example.net"])
        transcript = await smtp_send(daemon.smtp, message + b"\n", sender, [b"bob@example.net"])
    code, text = transcript.final[0] if transcript.final else (transcript.data or (0, ""))
    return qmqp, mta, f"{code} {text}"


async def test_reject(tmp_path: Path) -> None:
    qmqp, mta, smtp = await run(tmp_path, banned_message(), destiny={"banned": "reject"})
    expected = (
        r"554 5\.7\.0 Reject, id=\S+ - BANNED: \.exe-ms,invoice\.pdf\.exe \(Windows program by its content\)"
    )
    assert re.fullmatch("D" + expected, qmqp), qmqp
    assert re.fullmatch(expected, smtp), smtp
    assert mta.deliveries == []


async def test_discard(tmp_path: Path) -> None:
    qmqp, mta, smtp = await run(tmp_path, banned_message(), destiny={"banned": "discard"})
    assert re.fullmatch(r"K250 2\.7\.0 Ok, discarded, id=\S+ - BANNED: .*", qmqp), qmqp
    assert smtp.startswith("250 2.7.0 Ok, discarded"), smtp
    assert mta.deliveries == []


async def test_bounce_sends_a_dsn_with_the_header_and_not_the_body(tmp_path: Path) -> None:
    qmqp, mta, smtp = await run(tmp_path, banned_message())  # banned bounces by default (the HOWTO)
    assert re.fullmatch(r"K250 2\.5\.0 Ok, id=\S+, BOUNCE", qmqp), qmqp
    assert smtp.startswith("250 2.5.0 Ok, id="), smtp
    assert len(mta.deliveries) == 2  # one DSN for the QMQP message, one for the SMTP one; nothing else
    dsn = mta.deliveries[0]
    assert dsn.sender == b"" and dsn.recipients == [SENDER]
    report = email.message_from_bytes(dsn.body, policy=email.policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    parts = _messages(report.get_payload())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    recipient = _messages(status.get_payload())[1]
    assert recipient["Action"] == "failed" and recipient["Status"] == "5.7.0"
    assert "bob@example.net" in str(recipient["Final-Recipient"])
    assert "BANNED" in str(recipient["Diagnostic-Code"])
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <banned-1@example.org>" in dsn.body
    assert b"UEsDB" not in dsn.body  # the zip (base64 "PK\x03\x04...") is not in the DSN: no body


def _messages(payload: object) -> list[email.message.Message]:
    assert isinstance(payload, list) and all(isinstance(p, email.message.Message) for p in payload)
    return payload


async def test_no_dsn_to_a_null_sender_or_a_list(tmp_path: Path) -> None:
    qmqp, mta, _ = await run(tmp_path / "null", banned_message(), sender=b"")
    assert "DISCARD(bounce.suppressed: null sender)" in qmqp, qmqp
    assert mta.deliveries == []
    qmqp, mta, _ = await run(tmp_path / "list", banned_message(headers={"Precedence": "bulk"}))
    assert "DISCARD(bounce.suppressed: mail from a list)" in qmqp, qmqp
    assert mta.deliveries == []


async def test_a_virus_bounce_sends_no_dsn_by_default(tmp_path: Path) -> None:
    program = tmp_path / "scanner"
    program.write_text(
        f"#!{sys.executable}\nimport sys\nprint(sys.argv[-1] + '/email.txt: Worm.Faker FOUND')\nsys.exit(1)\n"
    )
    program.chmod(0o755)
    virus = {"scanners": [{"type": "command", "command": str(program), "args": ["{}"]}]}
    qmqp, mta, _ = await run(tmp_path, banned_message(), virus=virus)
    assert "DISCARD(bounce.suppressed: virus that fakes its sender)" in qmqp, qmqp
    assert mta.deliveries == []
    qmqp, mta, _ = await run(
        tmp_path / "told", banned_message(), virus=virus, dsn={"viruses_that_fake_sender": "klez"}
    )
    assert re.fullmatch(r"K250 2\.5\.0 Ok, id=\S+, BOUNCE", qmqp), qmqp
    assert len(mta.deliveries) == 2 and b"VIRUS from you (Worm.Faker)" in mta.deliveries[0].body


@contextlib.asynccontextmanager
async def notify_mta_queue_full(tmp_path: Path) -> AsyncIterator[tuple[FakeMta, FakeMta, RunningDaemon]]:
    """qsift forwarding to one MTA and sending DSNs to another that answers 451 to MAIL."""
    async with (
        fake_mta() as mta,
        fake_mta(Script(mail_reply="451 4.3.0 queue full")) as notify,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={"notify": {"method": f"smtp:[127.0.0.1]:{notify.port}"}},
        ) as daemon,
    ):
        yield mta, notify, daemon


async def test_a_dsn_that_cannot_be_sent_means_try_later(tmp_path: Path) -> None:
    async with notify_mta_queue_full(tmp_path) as (mta, notify, daemon):
        answer = await qmqp_send(daemon.qmqp, banned_message(), SENDER, [b"bob@example.net"])
    assert re.match(r"Z451 4\.5\.0 id=\S+ - BOUNCE: the DSN could not be sent", answer), answer
    assert mta.deliveries == [] and notify.accepted == []


async def test_retries_after_a_dsn_failure_leave_one_quarantined_copy(tmp_path: Path) -> None:
    async with notify_mta_queue_full(tmp_path) as (mta, notify, daemon):
        message = banned_message()  # the same bytes each time, as a client's retry
        answers = [await qmqp_send(daemon.qmqp, message, SENDER, [b"bob@example.net"]) for _ in range(3)]
        assert all(a.startswith("Z451") for a in answers), answers
        notify.script.mail_reply = "250 2.1.0 Ok"
        last = await qmqp_send(daemon.qmqp, message, SENDER, [b"bob@example.net"])
    assert re.fullmatch(r"K250 2\.5\.0 Ok, id=\S+, BOUNCE", last), last
    kept = Quarantine(str(tmp_path / "state" / "quarantine"))
    try:
        entries = kept.list()
    finally:
        kept.close()
    assert len(entries) == 1, entries  # the first try's copy, found by each retry
    assert entries[0].mail_id in answers[0] and entries[0].recipients == ("bob@example.net",)
    assert len(notify.accepted) == 1  # and one DSN, once it could be sent
    assert mta.deliveries == []  # the banned message itself went nowhere


async def test_the_postmaster_is_told_with_the_facts(tmp_path: Path) -> None:
    notify = {"banned_admin": "postmaster@example.net"}
    qmqp, mta, _ = await run(tmp_path, banned_message(), notify=notify)
    assert "BOUNCE" in qmqp
    notices = [d for d in mta.deliveries if d.recipients == [b"postmaster@example.net"]]
    assert len(notices) == 2  # QMQP and SMTP, one each
    text = notices[0].body.decode()
    mail_id = qmqp.split("id=")[1].split(",")[0]
    assert f"Subject: BANNED from <alice@example.org> (id={mail_id})" in text
    assert "Details:       .exe-ms,invoice.pdf.exe" in text and "Recipients:    <bob@example.net>" in text
    assert "Client:        [127.0.0.1]" in text and f"Quarantine:    banned-{mail_id}.gz" in text
    assert notices[0].sender == b""


async def test_a_site_template_replaces_the_default(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir(parents=True)
    (templates / "banned_admin.txt").write_text(
        "From: filter@example.net\nTo: $admin\nSubject: blocked $mail_id\n\n$details from $sender\n"
    )
    notify = {"banned_admin": "postmaster@example.net", "templates": str(templates)}
    _, mta, _ = await run(tmp_path / "run", banned_message(), notify=notify)
    notice = next(d for d in mta.deliveries if d.recipients == [b"postmaster@example.net"])
    assert notice.body.startswith(
        b"From: filter@example.net\r\nTo: postmaster@example.net\r\nSubject: blocked "
    )
    assert b"invoice.pdf.exe (Windows program by its content) from alice@example.org" in notice.body


async def test_lmtp_gives_every_recipient_the_rejection(tmp_path: Path) -> None:
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("lmtp",),
            top={"destiny": {"banned": "reject"}},
        ) as daemon,
    ):
        transcript = await smtp_send(
            daemon.lmtp, banned_message(), SENDER, [b"bob@example.net", b"carol@example.net"], lmtp=True
        )
    assert [code for code, _ in transcript.final] == [554, 554], transcript.final
    assert all(text.startswith("5.7.0 Reject, id=") for _, text in transcript.final)
    assert mta.deliveries == []
