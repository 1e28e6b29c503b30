"""Per-recipient policy end to end over real sockets: lovers, local domains, per-recipient levels and size
limits, recipients split into groups with their own headers, policy banks by listener and by the client
qsift-queue vouches for, recipient warnings. Each test checks the answer, what the downstream got (and
its headers), and what the notify side got."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from qsift.wire import client_context
from tests.fakes.mta import Delivery, fake_mta
from tests.harness import qmqp_send, running_daemon, smtp_send
from tests.integration.test_destinies import SENDER, banned_message
from tests.spamd_daemon import GTUBE, running_spamd, spamd_path

BOB, CAROL = b"bob@example.net", b"carol@example.org"
CLEAN = (
    b"From: alice@example.org\nTo: bob@example.net\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: hi\n\n"
    b"hello\n"
)


async def send(
    tmp_path: Path,
    message: bytes,
    recipients: list[bytes],
    *,
    protocol: str = "qmqp",
    listen_extra: dict[str, Any] | None = None,
    **top: Any,
) -> tuple[Any, list[Delivery], list[Delivery]]:
    """One message in by `protocol`; the answer (a QMQP reply, or the SMTP/LMTP final replies), the
    downstream's deliveries, and the DSNs and notices (deliveries from the null sender)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=(protocol,),
            top=top or None,
            listen_extra=listen_extra,
        ) as daemon,
    ):
        port = daemon.ports[protocol]
        if protocol == "qmqp":
            answer: Any = await qmqp_send(port, message, SENDER, recipients)
        else:
            transcript = await smtp_send(port, message, SENDER, recipients, lmtp=protocol == "lmtp")
            answer = transcript.final
    mail = [d for d in mta.deliveries if d.sender != b""]
    notices = [d for d in mta.deliveries if d.sender == b""]
    return answer, mail, notices


def header(delivery: Delivery) -> email.message.Message:
    return email.message_from_bytes(delivery.body, policy=email.policy.compat32)


def dsn_recipients(notice: Delivery) -> list[str]:
    return re.findall(r"Final-Recipient: rfc822; ?(\S+)", notice.body.decode())


async def test_a_lover_gets_it_the_others_are_rejected_and_told_by_dsn(tmp_path: Path) -> None:
    policy = {"banned_files_lovers": ["carol@example.org"]}
    answer, mail, notices = await send(
        tmp_path, banned_message(), [BOB, CAROL], policy=policy, destiny={"banned": "reject"}
    )
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, from MTA\(.*\): .*, but 1 REJECT", answer), answer
    assert len(mail) == 1 and mail[0].recipients == [CAROL]
    got = header(mail[0])
    assert got["Subject"] == "***BANNED*** Invoice"
    assert str(got["X-Qsift-Alert"]).startswith("BANNED, message contains .exe-ms,invoice.pdf.exe")
    # The rejected recipient can only be told by a DSN, as the client got a K for the message.
    assert len(notices) == 1 and notices[0].recipients == [SENDER]
    assert dsn_recipients(notices[0]) == ["bob@example.net"]
    assert b"BANNED" in notices[0].body


async def test_lmtp_refuses_the_rejected_recipient_alone(tmp_path: Path) -> None:
    policy = {"banned_files_lovers": ["carol@example.org"]}
    final, mail, notices = await send(
        tmp_path, banned_message(), [BOB, CAROL], protocol="lmtp", policy=policy, destiny={"banned": "reject"}
    )
    assert [code for code, _ in final] == [554, 250], final
    assert final[0][1].startswith("5.7.0 Reject, id=") and "BANNED" in final[0][1]
    assert len(mail) == 1 and mail[0].recipients == [CAROL]
    assert notices == []  # LMTP said it per recipient: no DSN on top


async def test_lmtp_says_each_recipient_s_fate_once(tmp_path: Path) -> None:
    policy = {"banned_files_lovers": ["carol@example.org"]}
    final, mail, _ = await send(
        tmp_path,
        banned_message(),
        [BOB, CAROL],
        protocol="lmtp",
        policy=policy,
        destiny={"banned": "discard"},
    )
    assert [code for code, _ in final] == [250, 250], final
    discarded, delivered = (text for _, text in final)
    assert re.fullmatch(r"2\.7\.0 Ok, discarded, id=(\S+) - BANNED.*", discarded), discarded
    assert discarded.count("id=") == 1
    assert re.fullmatch(r"2\.0\.0 Ok, id=\S+, .*queued.*", delivered), delivered
    assert len(mail) == 1 and mail[0].recipients == [CAROL]


async def test_all_rejected_and_bounced_is_one_refusal_without_dsn(tmp_path: Path) -> None:
    # bob rejects, carol bounces: nothing delivered, so D, and the client's bounce covers both.
    answer, mail, notices = await send(
        tmp_path,
        banned_message(),
        [BOB, CAROL],
        destiny={"banned": "reject"},
        policy={"message_size_limit": 100, "banned_files_lovers": ["carol@example.org"]},
    )
    assert answer.startswith("D554 5.7.0 Reject, id="), answer
    assert mail == [] and notices == []


async def test_recipients_with_other_headers_are_separate_transactions(tmp_path: Path) -> None:
    # Both accept the banned file; only the local one gets the Subject tag (amavisd-new tags local mail).
    policy = {"banned_files_lovers": ["."], "local_domains": ["example.net"]}
    answer, mail, _ = await send(tmp_path, banned_message(), [BOB, CAROL], protocol="smtp", policy=policy)
    assert answer[0][0] == 250, answer
    by_recipient = {tuple(d.recipients): header(d) for d in mail}
    assert set(by_recipient) == {(BOB,), (CAROL,)}
    assert by_recipient[(BOB,)]["Subject"] == "***BANNED*** Invoice"
    assert by_recipient[(CAROL,)]["Subject"] == "Invoice"
    assert by_recipient[(BOB,)]["X-Qsift-Alert"] and by_recipient[(CAROL,)]["X-Qsift-Alert"]


async def test_oversized_for_one_recipient_bounces_for_it_alone(tmp_path: Path) -> None:
    policy = {"recipient": [{"match": ["bob@example.net"], "message_size_limit": 50}]}
    answer, mail, notices = await send(tmp_path, CLEAN, [BOB, CAROL], policy=policy)
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, .*, but 1 BOUNCE", answer), answer
    assert [d.recipients for d in mail] == [[CAROL]]
    assert len(notices) == 1 and dsn_recipients(notices[0]) == ["bob@example.net"]
    assert b"OVERSIZED message" in notices[0].body


async def test_recipients_are_warned_when_the_policy_says_so(tmp_path: Path) -> None:
    notify = {"warn_banned_recip": True, "banned_admin": "postmaster@example.net"}
    policy = {"local_domains": ["example.net"]}
    answer, mail, notices = await send(
        tmp_path, banned_message(), [BOB, CAROL], notify=notify, policy=policy, destiny={"banned": "discard"}
    )
    assert answer.startswith("K250 2.7.0 Ok, discarded"), answer
    assert mail == []
    warned = [n for n in notices if n.recipients == [BOB]]
    assert len(warned) == 1, [n.recipients for n in notices]  # carol is not local: not warned
    text = warned[0].body.decode()
    mail_id = answer.split("id=")[1].split(" ")[0]
    assert f"(id={mail_id})" in text and "BANNED" in text and "banned-" in text
    assert any(n.recipients == [b"postmaster@example.net"] for n in notices)


async def test_a_listener_bank(tmp_path: Path) -> None:
    answer, mail, _ = await send(
        tmp_path,
        banned_message(),
        [BOB],
        protocol="smtp",
        listen_extra={"policy_bank": "TRUSTED"},
        policy_bank={"TRUSTED": {"destiny": {"banned": "pass"}}},
    )
    assert answer[0][0] == 250 and len(mail) == 1, answer


def client_key(tmp_path: Path) -> dict[str, Any]:
    """The `[client_context]` table naming a client key made for the test (0440, as for qmaild:qsift)."""
    path = tmp_path / "client.key"
    if not path.exists():
        path.write_bytes(os.urandom(32))
        path.chmod(0o440)
    return {"client_context": {"key_file": str(path)}}


def client_field(
    tmp_path: Path, recipients: list[bytes], *, key: bytes | None = None, relay: bool = True
) -> bytes:
    key = key if key is not None else (tmp_path / "client.key").read_bytes()
    context = client_context.ClientContext(ip="192.0.2.7", host="mua.example.org", relay_client=relay)
    return client_context.make_field(key, context, SENDER, recipients, int(time.time()))


async def test_qsift_queues_client_context_selects_the_outbound_bank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    top = {
        "policy_bank": {"ORIGINATING": {"destiny": {"banned": "discard"}}},
        "mark": {"enabled": False},
        **client_key(tmp_path),
    }
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
    ):
        outbound = client_field(tmp_path, [BOB]) + banned_message()
        answer = await qmqp_send(daemon.qmqp, outbound, SENDER, [BOB])
        assert answer.startswith("K250 2.7.0 Ok, discarded"), answer
        # The same field on a clean message: delivered without it, byte for byte as it came otherwise.
        clean = await qmqp_send(daemon.qmqp, client_field(tmp_path, [BOB]) + CLEAN, SENDER, [BOB])
        assert clean.startswith("K250"), clean
        # Signed for another envelope (a replayed field): ignored, and the base policy bounces.
        replayed = client_field(tmp_path, [CAROL]) + banned_message()
        answer = await qmqp_send(daemon.qmqp, replayed, SENDER, [BOB])
        assert "BOUNCE" in answer, answer
        # A forged field (another key) on the same message: ignored and removed, so the message is the
        # one already delivered, and the retry is answered from the record.
        forged = client_field(tmp_path, [BOB], key=b"not the site key") + CLEAN
        assert "already delivered" in await qmqp_send(daemon.qmqp, forged, SENDER, [BOB])
    delivered = [d for d in mta.deliveries if d.sender != b""]
    assert [d.body for d in delivered] == [CLEAN.replace(b"\n", b"\r\n")]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("Blocked", "Passed"))]
    assert "ORIGINATING QMQP [192.0.2.7]" in lines[0], lines[0]
    assert "[192.0.2.7]" not in lines[2] and "[127.0.0.1]" in lines[2], lines[2]
    assert any("X-Qsift-Client field from [127.0.0.1] ignored" in r.getMessage() for r in caplog.records)


async def test_a_check_every_recipient_bypasses_is_not_run(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    program = tmp_path / "scanner"
    program.write_text(f'#!/bin/sh\ntouch {ran}\necho "$1/email.txt: Worm.Faker FOUND"\nexit 1\n')
    program.chmod(0o755)
    virus = {"scanners": [{"type": "command", "command": str(program), "args": ["{}"]}]}
    answer, mail, _ = await send(
        tmp_path / "run", CLEAN, [BOB], virus=virus, policy={"bypass_virus_checks": ["@example.net"]}
    )
    assert answer.startswith("K250 2.0.0"), answer
    assert not ran.exists()
    assert "X-Virus-Scanned" not in header(mail[0])
    # One recipient who does not bypass: the scanner runs, and only the bypassing one gets the message.
    answer, mail, _ = await send(
        tmp_path / "mixed",
        CLEAN,
        [BOB, CAROL],
        virus=virus,
        policy={"bypass_virus_checks": ["@example.net"]},
        destiny={"virus": "discard"},
    )
    assert ran.exists()
    assert re.fullmatch(r"K250 2\.0\.0 Ok, .*, but 1 DISCARD", answer), answer
    assert [d.recipients for d in mail] == [[BOB]]


@pytest.mark.skipif(spamd_path() is None, reason="spamd is not installed (Debian package spamassassin)")
async def test_per_recipient_spam_levels_with_a_real_spamd(tmp_path: Path) -> None:
    message = b"From: alice@example.org\nTo: bob@example.net\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n"
    message += b"Subject: offer\n\n" + GTUBE + b"\n"
    with running_spamd() as spamd:
        spam = {"type": "spamd", "address": spamd.unix_address}
        policy = {"recipient": [{"match": ["carol@example.org"], "kill_level": 2000.0}]}
        answer, mail, notices = await send(tmp_path, message, [BOB, CAROL], spam=spam, policy=policy)
    # bob's kill level (6.9) rejects GTUBE's 1000 points; carol's (2000) lets it through, tagged.
    assert re.fullmatch(r"K250 2\.0\.0 Ok, id=\S+, .*, but 1 REJECT", answer), answer
    assert [d.recipients for d in mail] == [[CAROL]]
    got = header(mail[0])
    assert got["X-Spam-Flag"] == "YES" and got["Subject"] == "***Spam*** offer"
    assert "required=6.2" in str(got["X-Spam-Status"])
    assert notices == []  # spam at 1000 is above the DSN cutoff (10): no DSN for bob
