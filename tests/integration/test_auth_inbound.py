"""The inbound checks end to end: a real Knot DNS serving the sender's keys and policies, the daemon on
loopback, the fake MTA downstream. A validly signed message arrives with dkim=pass and dmarc=pass; a forged
From: of a p=reject domain is refused over QMQP (D) and SMTP (550 5.7.26); p=quarantine is tagged; a DNS
timeout gives temperror and the mail passes; Authentication-Results fields claiming our name are cut."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest

from qsift.auth.dkim_keys import read_private_key
from tests.dns_server import DnsServer, running_knot, silent_nameserver, txt_strings
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon, smtp_send

SENDER = b"news@signed.test"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "s1.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def dns(key: Path) -> Iterator[DnsServer]:
    record = read_private_key(str(key)).record
    zones = {
        "signed.test": f"s1._domainkey TXT {txt_strings(record)}\n"
        '_dmarc TXT "v=DMARC1; p=reject"\n'
        '@ TXT "v=spf1 -all"\n',
        "strict.test": '_dmarc TXT "v=DMARC1; p=reject"\n@ TXT "v=spf1 -all"\n',
        "lenient.test": '_dmarc TXT "v=DMARC1; p=quarantine"\n',
    }
    with running_knot(zones) as server:
        yield server


def message(author: str, subject: str = "hello") -> bytes:
    mail = EmailMessage()
    mail["From"] = author
    mail["To"] = "bob@example.net"
    mail["Date"] = "Wed, 02 Dec 2026 12:00:00 +0000"
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{abs(hash((author, subject)))}@test>"
    mail.set_content("A message.\n")
    return mail.as_bytes().replace(b"\n", b"\r\n")


def signed(key: Path, author: str = "news@signed.test") -> bytes:
    raw = message(author)
    signature: bytes = dkim.sign(
        raw, b"s1", b"signed.test", key.read_bytes(), include_headers=[b"from", b"subject"]
    )
    return signature + raw


async def run(tmp_path: Path, raw: bytes, nameserver: str, *, sender: bytes = SENDER) -> tuple[str, str, Any]:
    top = {"dns": {"nameservers": [nameserver], "timeout": 1.0}, "auth": {"check": True}}
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp", "smtp"), top=top
        ) as daemon,
    ):
        qmqp = await qmqp_send(daemon.qmqp, raw, sender, [b"bob@example.net"])
        transcript = await smtp_send(daemon.smtp, raw, sender, [b"bob@example.net"])
    code, text = transcript.final[0] if transcript.final else (transcript.data or (0, ""))
    return qmqp, f"{code} {text}", mta


def results_field(delivered: bytes) -> str:
    found = re.search(rb"^Authentication-Results: (.*?)\r\n(?! |\t)", delivered, re.MULTILINE | re.DOTALL)
    assert found is not None, delivered[:600]
    return re.sub(r"\s+", " ", found.group(1).decode())


async def test_a_valid_aligned_signature_passes_dkim_and_dmarc(
    tmp_path: Path, key: Path, dns: DnsServer
) -> None:
    qmqp, smtp, mta = await run(tmp_path, signed(key), dns.address)
    assert qmqp.startswith("K") and smtp.startswith("250"), (qmqp, smtp)
    delivered = mta.accepted[0].body
    # Above the message's own fields (only qsift's own mark may stand over it).
    assert delivered.index(b"Authentication-Results: qsift.test;") < delivered.index(b"DKIM-Signature:")
    field = results_field(delivered)
    assert "dkim=pass header.d=signed.test header.s=s1" in field
    assert re.search(r"dmarc=pass .*header\.from=signed\.test policy\.dmarc=reject", field), field
    assert "spf=" not in field  # no client address: QMQP without qsift-queue, SMTP without XFORWARD


async def test_a_forged_from_of_a_p_reject_domain_is_refused(tmp_path: Path, dns: DnsServer) -> None:
    qmqp, smtp, mta = await run(tmp_path, message("ceo@strict.test"), dns.address)
    assert re.fullmatch(
        r"D550 5\.7\.26 Unauthenticated email from strict\.test is not accepted due to domain's DMARC "
        r"policy, id=\S+",
        qmqp,
    ), qmqp
    assert smtp.startswith("550 5.7.26 Unauthenticated email from strict.test"), smtp
    assert mta.accepted == []


async def test_a_p_quarantine_failure_passes_tagged_as_spam(tmp_path: Path, dns: DnsServer) -> None:
    qmqp, smtp, mta = await run(tmp_path, message("promo@lenient.test"), dns.address)
    assert qmqp.startswith("K") and smtp.startswith("250"), (qmqp, smtp)
    delivered = mta.accepted[0].body
    assert b"\r\nX-Spam-Flag: YES\r\n" in delivered
    assert b"dmarc=fail" in delivered
    assert re.search(rb"^Subject: \*\*\*Spam\*\*\* hello", delivered, re.MULTILINE), delivered[:800]


async def test_a_dns_timeout_gives_temperror_and_the_mail_passes(tmp_path: Path, key: Path) -> None:
    with silent_nameserver() as nameserver:
        qmqp, smtp, mta = await run(tmp_path, signed(key), nameserver)
    assert qmqp.startswith("K") and smtp.startswith("250"), (qmqp, smtp)
    field = results_field(mta.accepted[0].body)
    assert "dkim=temperror" in field and "dmarc=temperror" in field, field


async def test_results_claiming_our_name_are_cut_and_others_kept(
    tmp_path: Path, key: Path, dns: DnsServer
) -> None:
    forged = b"Authentication-Results: QSIFT.test; dkim=pass header.d=strict.test\r\n"
    other = b"Authentication-Results: mx.elsewhere.example; spf=pass smtp.mailfrom=x.example\r\n"
    qmqp, smtp, mta = await run(tmp_path, forged + other + signed(key), dns.address)
    assert qmqp.startswith("K") and smtp.startswith("250"), (qmqp, smtp)
    delivered = mta.accepted[0].body
    assert forged not in delivered and other in delivered
    assert delivered.count(b"Authentication-Results: qsift.test;") == 1
