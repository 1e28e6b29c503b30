"""Scanned once in qmail's real permission model: qmail-local forwards a message qsift passed by running
qsift-queue as the recipient's user, who can read neither key; the daemon knows its own mark and passes the
forward unscanned and unchanged. A local user who forges a mark or an X-Qsift-Client field gets nothing.

The local user is `nobody`: qsift-queue runs under a Python other users can read (test_workers makes one)
after dropping root's uid, gid and groups, as qmail-lspawn's qmail-getpw and setuid do for qmail-local.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import smtplib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qsift.wire import client_context, mark
from tests.fakes.mta import FakeMta, fake_mta
from tests.harness import RunningDaemon, qmqp_send, running_daemon
from tests.integration.test_destinies import mail_to_bob
from tests.integration.test_qsift_queue import Run, run_queue
from tests.integration.test_workers import dir_with_qsift_for_others

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running qsift-queue as another user needs root")

ALICE, BOB, CAROL, DAVE = (
    b"alice@example.org",
    b"bob@example.net",
    b"carol@example.net",
    b"dave@example.net",
)
#: Mail over 1,000 bytes is OVERSIZED, and bounces, for everyone but Bob, who has no size limit: the
#: message below passes for Bob with nothing let through (so his copy earns the mark), and a forward of it,
#: scanned again for Carol, would bounce: arriving at all proves it was not rescanned. Mail from a relay
#: client (the ORIGINATING bank) passes oversized mail: the prize of a forged client field.
TOP: dict[str, Any] = {
    "policy": {
        "message_size_limit": 1000,
        "recipient": [{"match": ["bob@example.net"], "message_size_limit": 0}],
    },
    "policy_bank": {"ORIGINATING": {"destiny": {"oversized": "pass"}}},
}


def long_message() -> bytes:
    """A clean message of about 2 KB, with a MIME-Version field."""
    text = "see attached\n" + "The meeting went on for a long while.\n" * 50
    return mail_to_bob("The minutes", "<minutes-1@example.org>", text).as_bytes()


#: As the local user: qsift-queue with root's uid, gid and groups dropped for nobody's, then exec'd.
AS_NOBODY = (
    "import os, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); os.setgroups([]); os.setgid(gid); "
    "os.setuid(uid); os.execv(sys.argv[3], sys.argv[3:])"
)


@dataclass
class Site:
    daemon: RunningDaemon
    mta: FakeMta
    #: The client key: 0440, root's, in a directory nobody can pass through; as qmaild:qsift would be.
    client_key: Path
    #: The command that runs qsift-queue as nobody.
    local_user: list[str]
    tmpdir: Path


@contextmanager
def world_for_nobody() -> Iterator[tuple[Path, list[str]]]:
    with dir_with_qsift_for_others() as (base, command):
        nobody = pwd.getpwnam("nobody")
        python = command[0]
        yield (
            base,
            [
                sys.executable,
                "-c",
                AS_NOBODY,
                str(nobody.pw_uid),
                str(nobody.pw_gid),
                python,
                "-m",
                "qsift.queue_client.main",
            ],
        )


@asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    with world_for_nobody() as (base, local_user):
        client_key = base / "client.key"
        client_key.write_bytes(os.urandom(32))
        client_key.chmod(0o440)
        top = {**TOP, "client_context": {"key_file": str(client_key)}}
        async with (
            fake_mta() as mta,
            running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
        ):
            tmpdir = base / "tmp"
            tmpdir.mkdir(mode=0o1777)
            tmpdir.chmod(0o1777)
            yield Site(daemon, mta, client_key, local_user, tmpdir)


async def forward_as_local_user(where: Site, message: bytes, sender: bytes, recipient: bytes) -> Run:
    """qmail-local's forward: qsift-queue as the recipient's user, in qmail-send's environment (no tcpserver
    variables), with QSIFT_CLIENT_KEY set as a careless rc might set it. In a thread: the daemon shares
    this event loop."""
    env = {
        "QMQPSERVERS": f"127.0.0.1:{where.daemon.qmqp}",
        "QSIFT_CLIENT_KEY": str(where.client_key),
        "TMPDIR": str(where.tmpdir),
    }
    envelope = b"F%s\0T%s\0\0" % (sender, recipient)
    return await asyncio.to_thread(run_queue, where.tmpdir, env, message, envelope, program=where.local_user)


async def passed_to_bob(where: Site) -> bytes:
    """What Bob's mailbox got, in qmail's LF form, with the Delivered-To qmail-local prepends."""
    answer = await qmqp_send(where.daemon.qmqp, long_message(), ALICE, [BOB])
    assert answer.startswith("K250"), answer
    delivered = where.mta.deliveries[-1].body.replace(b"\r\n", b"\n")
    assert delivered.startswith(f"{mark.FIELD}: v2 t=".encode()), delivered[:200]
    return b"Delivered-To: bob@example.net\n" + delivered


def cannot_read_the_key(run: Run, where: Site) -> bool:
    return f"cannot read the client key {where.client_key}: Permission denied" in run.stderr


@needs_root
async def test_a_forward_by_qmail_local_arrives_once_unscanned_and_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    async with site(tmp_path) as where:
        forwarded = await passed_to_bob(where)
        run = await forward_as_local_user(where, forwarded, BOB, CAROL)
        assert run.code == 0, run.stderr
        assert cannot_read_the_key(run, where), run.stderr  # really another user, with no key
        assert len(where.mta.deliveries) == 2, [d.recipients for d in where.mta.deliveries]
        got = where.mta.deliveries[-1]
    assert (got.sender, got.recipients) == (BOB, [CAROL])  # delivered, not bounced: not rescanned
    assert got.body.replace(b"\r\n", b"\n") == forwarded  # not a byte added: one set of qsift's fields
    header = forwarded.split(b"\n\n", 1)[0]
    assert header.count(b"X-Qsift-Scanned:") == 1, header
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Passed ")]
    assert len(lines) == 2 and "scanned here before (X-Qsift-Scanned)" in lines[1], lines


@needs_root
@pytest.mark.parametrize(
    "forge",
    [
        # A mark of its own making: a guessed HMAC.
        lambda copy: f"{mark.FIELD}: v2 t={int(time.time())} h={'0' * 64}\n".encode() + long_message(),
        # The real mark of the message Bob got, on another body.
        lambda copy: copy.replace(b"see attached", b"see enclosed"),
        # The same body read another way: the message's own MIME field changed, below the mark.
        lambda copy: copy.replace(b"MIME-Version: 1.0\n", b"MIME-Version: 1.0 (x)\n", 1),
        # A mark of the old kind, over the body only.
        lambda copy: copy.replace(b"X-Qsift-Scanned: v2", b"X-Qsift-Scanned: v1"),
    ],
    ids=["guessed", "other-body", "other-reading", "v1"],
)
async def test_a_local_user_who_forges_a_mark_gets_the_message_scanned(tmp_path: Path, forge: Any) -> None:
    async with site(tmp_path) as where:
        forged = forge(await passed_to_bob(where))
        run = await forward_as_local_user(where, forged, ALICE, CAROL)
        assert run.code == 0 and cannot_read_the_key(run, where), run.stderr
        got = where.mta.deliveries[-1]
    # For Carol the message is oversized: scanned, bounced; the DSN goes to the sender.
    assert (got.sender, got.recipients) == (b"", [ALICE]), got
    assert b"OVERSIZED" in got.body


@needs_root
async def test_a_local_user_who_forges_a_client_field_is_no_relay_client(tmp_path: Path) -> None:
    async with site(tmp_path) as where:
        context = client_context.ClientContext(ip="127.0.0.1", relay_client=True, auth_user="alice")
        guessed = client_context.make_field(os.urandom(32), context, ALICE, [CAROL], int(time.time()))
        run = await forward_as_local_user(where, guessed + long_message(), ALICE, CAROL)
        assert run.code == 0 and cannot_read_the_key(run, where), run.stderr
        got = where.mta.deliveries[-1]
    assert (got.sender, got.recipients) == (b"", [ALICE]), got  # bounced, not ORIGINATING's pass


@needs_root
async def test_the_relay_client_qsift_queue_vouches_for_still_gets_its_bank(tmp_path: Path) -> None:
    """The control for the test above: the same message, signed with the client key, is passed."""
    async with site(tmp_path) as where:
        context = client_context.ClientContext(ip="192.0.2.7", relay_client=True)
        signed = client_context.make_field(
            where.client_key.read_bytes(), context, ALICE, [CAROL], int(time.time())
        )
        answer = await qmqp_send(where.daemon.qmqp, signed + long_message(), ALICE, [CAROL])
        assert answer.startswith("K250"), answer
        got = where.mta.deliveries[-1]
    assert (got.sender, got.recipients) == (ALICE, [CAROL])


@needs_root
async def test_a_marked_copy_from_an_smtp_client_is_scanned_again(tmp_path: Path) -> None:
    """qsift-queue under qmail-smtpd vouches that an SMTP client sent it: a copy of passed mail coming
    back from outside (or replayed) is no forward of ours."""
    async with site(tmp_path) as where:
        copy = await passed_to_bob(where)
        context = client_context.ClientContext(ip="192.0.2.7")
        signed = client_context.make_field(
            where.client_key.read_bytes(), context, ALICE, [CAROL], int(time.time())
        )
        answer = await qmqp_send(where.daemon.qmqp, signed + copy, ALICE, [CAROL])
        assert answer.startswith("K250"), answer
        got = where.mta.deliveries[-1]
    assert (got.sender, got.recipients) == (b"", [ALICE]), got  # the bounce


async def test_a_marked_copy_an_mta_names_a_client_for_is_scanned_again(tmp_path: Path) -> None:
    """Over SMTP, XFORWARD naming a client says the copy came from outside; without it (the MTA's own
    forward) the mark is taken."""
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("smtp",),
            top=TOP,
            listen_extra={"xforward_hosts": ["127.0.0.0/8"]},
        ) as daemon,
    ):

        def send(message: bytes, sender: bytes, recipient: bytes, *commands: str) -> None:
            with smtplib.SMTP("127.0.0.1", daemon.smtp, timeout=30) as client:
                client.ehlo("mta.test")
                for command in commands:
                    verb, _, arg = command.partition(" ")
                    assert client.docmd(verb, arg)[0] == 250
                client.sendmail(sender.decode(), [recipient.decode()], message)

        await asyncio.to_thread(send, long_message(), ALICE, BOB)
        copy = mta.deliveries[-1].body
        assert copy.startswith(f"{mark.FIELD}: v2 ".encode())
        await asyncio.to_thread(send, copy, BOB, CAROL, "XFORWARD ADDR=192.0.2.7")
        bounced = mta.deliveries[-1]
        # To another recipient: the same envelope again would be a retry of the bounced one, answered
        # from the outcome record.
        await asyncio.to_thread(send, copy, BOB, DAVE)
        passed = mta.deliveries[-1]
    assert (bounced.sender, bounced.recipients) == (b"", [BOB]), bounced  # the DSN to the sender
    assert (passed.sender, passed.recipients) == (BOB, [DAVE]) and passed.body == copy
