"""A bare CR in a message, by SMTP or QMQP, reaches the downstream MTA as a line end: no receiver finds
the end of the message at a dot next to it (SMTP smuggling), and the mark still verifies."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from qsift.wire import mark
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon, smtp_send

SMUGGLER = (
    b"From: mallory@example.org\r\nSubject: two for one\r\n\r\n"
    b"first part\r.\r\nMAIL FROM:<evil@example>\r\nRCPT TO:<victim@example>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsecond\r\n.\rQUIT\r\nlast\r\n"
)


def verifies(delivered_lf: bytes, key: bytes) -> bool:
    head, _, _ = delivered_lf.partition(b"\n\n")
    value = mark.find_value(head)
    digest = mark.BodyDigest()
    digest.update(delivered_lf)
    reading = mark.reading_digest(head)
    return value is not None and mark.verify(key, value, digest.hexdigest(), reading, int(time.time()))


@pytest.mark.parametrize("listener", ["smtp", "qmqp"])
async def test_a_bare_cr_next_to_a_dot_leaves_as_a_line_end(tmp_path: Path, listener: str) -> None:
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=(listener,)) as daemon,
    ):
        if listener == "smtp":
            sent = await smtp_send(daemon.smtp, SMUGGLER, b"mallory@example.org", [b"bob@example.net"])
            assert sent.final[0][0] == 250
        else:
            lf_form = SMUGGLER.replace(b"\r\n", b"\n")  # what qmail-smtpd hands qmail-queue
            answer = await qmqp_send(daemon.qmqp, lf_form, b"mallory@example.org", [b"bob@example.net"])
            assert answer.startswith("K"), answer
        key = (daemon.state_dir / "mark.key").read_bytes()
    [delivery] = mta.deliveries
    raw = delivery.raw + b".\r\n"
    assert b"\r" not in raw.replace(b"\r\n", b""), "a bare CR reached the downstream"
    # A receiver that takes a bare CR (or LF) for a line end finds one end of data: the last line.
    lines = re.split(rb"\r\n|\r|\n", raw)
    assert lines.index(b".") == len(lines) - 2
    assert b"first part\r\n.\r\nMAIL FROM:<evil@example>\r\n" in delivery.body
    # qmail stores the delivered copy with LF line ends; the mark must be valid on it.
    assert verifies(delivery.body.replace(b"\r\n", b"\n"), key)


HIDDEN_PROGRAM = (
    b"From: mallory@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nplease pay\r--B\r\n"
    b'Content-Type: application/octet-stream; name="invoice.pdf.exe"\r\n'
    b'Content-Disposition: attachment; filename="invoice.pdf.exe"\r\n\r\nMZ\r\n--B--\r\n'
)


async def test_a_part_behind_a_bare_cr_is_checked_like_the_one_the_next_hop_sees(tmp_path: Path) -> None:
    # Downstream the bare CR is a line end, so "--B" starts a second part there: a banned program.
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("smtp",),
            top={"destiny": {"banned": "reject"}},
        ) as daemon,
    ):
        sent = await smtp_send(daemon.smtp, HIDDEN_PROGRAM, b"mallory@example.org", [b"bob@example.net"])
    assert sent.final[0][0] == 554, sent.final
    assert mta.deliveries == []


async def test_a_long_header_line_is_not_folded_right_after_a_bare_cr(tmp_path: Path) -> None:
    # Folded there, the forward's CR CR LF was an empty line: the header ended and the fields after it
    # (Content-Type, what the checks had read) were body text at the next hop.
    message = (
        b"From: mallory@example.org\r\nX-Pad: " + b"a" * 990 + b"\r " + b"b" * 20 + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/csv; name=report.csv\r\n\r\n1,2\r\n"
    )
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("smtp",)) as daemon,
    ):
        sent = await smtp_send(daemon.smtp, message, b"mallory@example.org", [b"bob@example.net"])
        assert sent.final[0][0] == 250
    [delivery] = mta.deliveries
    head, _, body = delivery.body.partition(b"\r\n\r\n")
    assert b"Content-Type: text/csv; name=report.csv" in head
    assert body == b"1,2\r\n"


async def test_a_bare_cr_is_stored_as_a_line_end_by_the_maildir_forward(tmp_path: Path) -> None:
    # Kept as it came, "please pay<CR>--B" is one line for a reader that does not split at a bare CR:
    # the part behind it, the one the checks read, would be text of the first part there.
    clean = HIDDEN_PROGRAM.replace(b"application/octet-stream", b"text/csv").replace(
        b"invoice.pdf.exe", b"a.csv"
    )
    async with running_daemon(tmp_path, f"maildir:{tmp_path / 'Maildir'}", protocols=("qmqp",)) as daemon:
        answer = await qmqp_send(
            daemon.qmqp, clean.replace(b"\r\n", b"\n"), b"a@example.org", [b"b@example.net"]
        )
        assert answer.startswith("K"), answer
        key = (daemon.state_dir / "mark.key").read_bytes()
    [stored] = [path.read_bytes() for path in (tmp_path / "Maildir" / "new").iterdir()]
    assert b"\r" not in stored
    assert b"please pay\n--B\nContent-Type: text/csv" in stored
    assert verifies(stored, key)
