"""A refusal qsift makes itself reads as qsift's, never as the downstream MTA's (DESIGN.md §3)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon

MESSAGE = b"From: alice@example.org\nSubject: s\n\nhello\n"


async def test_a_sender_qsift_cannot_put_in_mail_from_is_refused_by_qsift(tmp_path: Path) -> None:
    # qmail-smtpd takes '>' inside an address (it reads up to the last '>'), so QMQP can carry one; an
    # SMTP MAIL command cannot, and qsift refuses it before the downstream hears of it.
    async with fake_mta() as mta, running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}") as daemon:
        answer = await qmqp_send(daemon.qmqp, MESSAGE, b"a>b@example.org", [b"bob@example.net"])
        assert re.fullmatch(
            r"D553 5\.1\.7 id=\S+ - refused by qsift, not sent to MTA\(smtp:\[127\.0\.0\.1\]:\d+\): "
            r"553 5\.1\.7 sender cannot be forwarded: .*",
            answer,
        ), answer
        assert "next-hop" not in answer
        assert mta.transcript == [] or all(not line.startswith(b"MAIL") for line in mta.transcript)
