"""A pipeline straight from the configuration, with no listener and no daemon: `build_pipeline` is the one
place it is made, so a test reaches a message's whole way (checks, quarantine, forward, DSN, outcome
record) by handing the pipeline an envelope and a spool; the downstream is a real SMTP server on loopback."""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qsift.act.bounce import DsnBouncer
from qsift.act.notices import Notices
from qsift.config import loads
from qsift.model import Answer, Category, Disposition, Envelope, Outcome, Recipient
from qsift.pipeline import Pipeline, build_pipeline
from qsift.pipeline.blocked import NoBounces, NoNotices, NoQuarantine
from qsift.pipeline.checking import NoChecks
from qsift.pipeline.parts import NoMessageLog, NoOutcomeRecord
from qsift.spool import MessageSpool
from tests.fakes.mta import FakeMta, fake_mta
from tests.harness import free_port

BOB, CAROL = Recipient("bob@example.net"), Recipient("carol@example.net")


def _message(attachment: str | None = None) -> bytes:
    """A short text, with a Windows program attached under the name `attachment` if given."""
    head = b"From: alice@example.org\nTo: bob@example.net, carol@example.net\nSubject: the build\n"
    if attachment is None:
        return head + b"Message-ID: <build-1@example.org>\n\nhello\n"
    program = base64.encodebytes(b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100)
    return b"".join(
        [
            head,
            b"Message-ID: <build-2@example.org>\nMIME-Version: 1.0\n",
            b'Content-Type: multipart/mixed; boundary="part"\n\n--part\nContent-Type: text/plain\n\nhello\n',
            b"--part\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n",
            f'Content-Disposition: attachment; filename="{attachment}"\n\n'.encode(),
            program,
            b"--part--\n",
        ]
    )


@dataclass
class Site:
    pipeline: Pipeline
    mta: FakeMta
    dsn: Path

    async def send(self, message: bytes, envelope: Envelope | None = None) -> Outcome:
        envelope = envelope or Envelope("alice@example.org", (BOB, CAROL), protocol="ESMTP")
        with MessageSpool.from_bytes(message) as spool:
            return await self.pipeline.handle(envelope, spool)

    def dsns(self) -> list[str]:
        new = self.dsn / "new"
        return sorted(os.listdir(new)) if new.exists() else []


def _config(tmp_path: Path, port: int, extra: str = "") -> str:
    return (
        f'state_dir = "{tmp_path / "state"}"\nmyhostname = "filter.test"\n{extra}\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{port}"\n'
        f'[notify]\nmethod = "maildir:{tmp_path / "dsn"}"\n'
    )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with fake_mta() as mta:
        pipeline = build_pipeline(loads(_config(tmp_path, mta.port)))
        try:
            yield Site(pipeline, mta, tmp_path / "dsn")
        finally:
            await pipeline.close()


async def test_a_clean_message_goes_downstream_and_a_retry_is_not_delivered_twice(site: Site) -> None:
    first = await site.send(_message())
    assert (first.reply.answer, first.disposition) == (Answer.ACCEPT, Disposition.PASSED), first
    retry = await site.send(_message())
    assert retry.disposition is Disposition.DUPLICATE, retry
    assert [d.recipients for d in site.mta.accepted] == [[b"bob@example.net", b"carol@example.net"]]
    assert site.pipeline.handled == 2
    assert isinstance(site.pipeline.message_log, NoMessageLog)  # a single node keeps none


async def test_a_banned_message_is_kept_bounced_and_never_forwarded(site: Site, tmp_path: Path) -> None:
    outcome = await site.send(_message("invoice.exe"))
    assert outcome.reply.answer is Answer.ACCEPT, outcome
    assert outcome.disposition is Disposition.BLOCKED
    assert site.mta.accepted == []
    kept = [n for n in outcome.notes if n.startswith("quarantine: ")]
    assert len(kept) == 1
    with gzip.open(tmp_path / "state" / "quarantine" / kept[0].removeprefix("quarantine: ")) as stream:
        assert b'filename="invoice.exe"' in stream.read()
    assert len(site.dsns()) == 1  # one DSN to alice for both recipients


async def test_without_durable_state_nothing_is_kept_or_remembered(tmp_path: Path) -> None:
    """qsift scan and qsift release build the same pipeline without opening the daemon's state: its
    outcome record and quarantine are null objects, and nothing is written to state_dir."""
    async with fake_mta() as mta:
        pipeline = build_pipeline(loads(_config(tmp_path, mta.port)), durable=False)
        assert isinstance(pipeline.outcomes, NoOutcomeRecord)
        assert isinstance(pipeline.quarantine, NoQuarantine)
        assert isinstance(pipeline.message_log, NoMessageLog)
        site = Site(pipeline, mta, tmp_path / "dsn")
        try:
            assert (await site.send(_message())).disposition is Disposition.PASSED
            assert (await site.send(_message())).disposition is Disposition.PASSED  # delivered again
            blocked = await site.send(_message("invoice.exe"))
        finally:
            await pipeline.close()
    assert not any(n.startswith("quarantine: ") for n in blocked.notes), blocked
    assert len(mta.accepted) == 2
    assert not (tmp_path / "state").exists()


async def test_the_dsns_and_the_notices_share_one_notify_forwarder(site: Site) -> None:
    notices, bounce = site.pipeline.notices, site.pipeline.bounce
    assert isinstance(notices, Notices)
    assert isinstance(bounce, DsnBouncer)
    assert notices.notifier is bounce.notifier


@pytest.mark.parametrize(
    ("one_by_one", "carol"),
    [
        # One reply for all: Bob has the message, so Carol's rejection can only be told by a DSN.
        (False, (Answer.ACCEPT, "2.", 1)),
        # Each recipient hears its own reply (LMTP): Carol is refused alone, no DSN.
        (True, (Answer.REJECT, "5.7.0", 0)),
    ],
)
async def test_the_listener_says_whether_each_recipient_hears_its_own_reply(
    tmp_path: Path, one_by_one: bool, carol: tuple[Answer, str, int]
) -> None:
    """Whatever the protocol is called: the pipeline reads what the listener tells it, as data."""
    lovers = '[destiny]\nbanned = "reject"\n[policy]\nbanned_files_lovers = ["bob@example.net"]\n'
    async with fake_mta() as mta:
        pipeline = build_pipeline(loads(_config(tmp_path, mta.port, lovers)))
        site = Site(pipeline, mta, tmp_path / "dsn")
        envelope = Envelope("alice@example.org", (BOB, CAROL), replies_per_recipient=one_by_one)
        try:
            outcome = await site.send(_message("invoice.exe"), envelope)
        finally:
            await pipeline.close()
    assert [d.recipients for d in mta.accepted] == [[b"bob@example.net"]]
    replies = {r.recipient: r.reply for r in outcome.per_recipient}
    assert replies[BOB].answer is Answer.ACCEPT
    answer, status, dsns = carol
    assert replies[CAROL].answer is answer, outcome
    assert replies[CAROL].enhanced_status.startswith(status)
    assert len(site.dsns()) == dsns


async def test_without_checks_every_message_passes_as_it_came(site: Site) -> None:
    """NoChecks: even a banned attachment goes through, through the same forward as checked mail, with
    no header field added."""
    unchecked = replace(site.pipeline, checks=NoChecks())
    message = _message("invoice.exe")
    with MessageSpool.from_bytes(message) as spool:
        outcome = await unchecked.handle(Envelope("alice@example.org", (BOB,)), spool)
    assert (outcome.disposition, outcome.category) == (Disposition.PASSED, "CLEAN"), outcome
    assert [d.body for d in site.mta.accepted] == [message.replace(b"\n", b"\r\n")]


async def test_without_dsns_or_quarantine_a_blocked_message_is_discarded(site: Site) -> None:
    """NoBounces, NoQuarantine, NoNotices: a bounce acts as a discard, and nothing is kept or sent."""
    quiet = replace(site.pipeline, bounce=NoBounces(), quarantine=NoQuarantine(), notices=NoNotices())
    outcome = await Site(quiet, site.mta, site.dsn).send(_message("invoice.exe"))
    assert outcome.disposition is Disposition.BLOCKED, outcome
    assert {r.reply.enhanced_status for r in outcome.per_recipient} == {"2.7.0"}
    assert "discarded" in outcome.per_recipient[0].reply.text
    assert not any(n.startswith("quarantine: ") for n in outcome.notes)
    assert (site.mta.accepted, site.dsns()) == ([], [])


async def test_qsift_scan_checks_offline_and_a_silent_scanner_is_a_finding(tmp_path: Path) -> None:
    """The checks `qsift scan` takes from the pipeline: a virus scanner that does not answer makes the
    message UNCHECKED, with what the decoder saw (the daemon would answer "try later")."""
    silent = f'[[virus.scanners]]\ntype = "clamd"\naddress = "127.0.0.1:{free_port()}"\ntimeout = 5.0\n'
    pipeline = build_pipeline(loads(_config(tmp_path, free_port(), silent)), durable=False)
    try:
        verdict = await pipeline.checks.offline(_message("invoice.exe"))
    finally:
        await pipeline.close()
    assert {Category.BANNED, Category.UNCHECKED} <= {f.category for f in verdict.findings}
    assert (await NoChecks().offline(_message())).findings == ()


async def test_only_a_copy_nothing_was_let_through_for_carries_the_mark(tmp_path: Path) -> None:
    """A forward of a marked copy passes unscanned (the daemon trusts its own mark), so a lover's pass
    or a bypassed check must not earn one: it would carry that recipient's choice to whoever they
    forward to. Bob loves banned files, Carol bypasses the banned-file check, Dave is neither. (The
    clean message lacks a Date field: a bad header, which passes for everyone, may be marked.)"""
    dave = Recipient("dave@example.net")
    policy = (
        '[destiny]\nbanned = "discard"\n[policy]\nbanned_files_lovers = ["bob@example.net"]\n'
        'bypass_banned_checks = ["carol@example.net"]\n'
    )
    async with fake_mta() as mta:
        pipeline = build_pipeline(loads(_config(tmp_path, mta.port, policy)), mark_key=b"k" * 32)
        site = Site(pipeline, mta, tmp_path / "dsn")
        try:
            everyone = Envelope("alice@example.org", (BOB, CAROL, dave), protocol="ESMTP")
            await site.send(_message("invoice.pdf.exe"), everyone)
            await site.send(_message(), everyone)
        finally:
            await pipeline.close()
    marked = {
        (b"invoice" in copy.body, rcpt): b"X-Qsift-Scanned:" in copy.body
        for copy in mta.accepted
        for rcpt in copy.recipients
    }
    assert marked == {
        (True, b"bob@example.net"): False,
        (True, b"carol@example.net"): False,
        (False, b"bob@example.net"): True,
        (False, b"carol@example.net"): False,
        (False, b"dave@example.net"): True,
    }


async def test_a_copy_a_lenient_policy_passed_carries_no_mark(tmp_path: Path) -> None:
    """banned = "pass" (as a bank for outgoing mail may say) lets the program through for this delivery;
    a local forward of it arrives in the default bank and must be judged there."""
    async with fake_mta() as mta:
        config = loads(_config(tmp_path, mta.port, '[destiny]\nbanned = "pass"\n'))
        pipeline = build_pipeline(config, mark_key=b"k" * 32)
        try:
            await Site(pipeline, mta, tmp_path / "dsn").send(_message("invoice.pdf.exe"))
        finally:
            await pipeline.close()
    assert [b"X-Qsift-Scanned:" in copy.body for copy in mta.accepted] == [False]


def test_a_site_without_authentication_loads_none_of_its_libraries() -> None:
    """dnspython, dkimpy, pynacl, OpenSSL, authres and psycopg cost every worker about 11 MiB; a
    configuration that neither checks, signs, seals nor shares a store must not load them."""
    program = (
        "import sys\n"
        "from qsift import cli, config\n"
        "from qsift.pipeline import build_pipeline\n"
        "from qsift.serve import daemon, keys\n"
        "build_pipeline(config.loads(''), durable=False)\n"
        "heavy = ('dkim', 'dns', 'nacl', 'cryptography', 'authres', 'publicsuffixlist', 'psycopg')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
