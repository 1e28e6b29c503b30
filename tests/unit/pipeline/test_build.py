"""A pipeline straight from the configuration, with no listener and no daemon: `build_pipeline` is the one
place it is made, so a test reaches a message's whole way (checks, quarantine, forward, DSN, outcome
record) by handing the pipeline an envelope and a spool; the downstream is a real SMTP server on loopback."""

from __future__ import annotations

import gzip
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from qsift.act.bounce import DsnBouncer
from qsift.act.notices import Notices
from qsift.config import loads
from qsift.model import Answer, Disposition, Envelope, Outcome, Recipient
from qsift.pipeline import Pipeline, build_pipeline
from qsift.pipeline.blocked import NoQuarantine
from qsift.pipeline.parts import NoOutcomeRecord
from qsift.spool import MessageSpool
from tests.fakes.mta import FakeMta, fake_mta

BOB, CAROL = Recipient("bob@example.net"), Recipient("carol@example.net")


def _message(attachment: str | None = None) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@example.org"
    mail["To"] = "bob@example.net, carol@example.net"
    mail["Subject"] = "the build"
    mail["Message-ID"] = "<build-1@example.org>"
    mail.set_content("hello")
    if attachment is not None:
        program = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100
        mail.add_attachment(program, maintype="application", subtype="octet-stream", filename=attachment)
    return mail.as_bytes()


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
