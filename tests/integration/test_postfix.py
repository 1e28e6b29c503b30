"""qsift behind a real Postfix, set up with what `qsift setup postfix` writes (docs/postfix.md).

A private Postfix instance (its own config, queue and log under a temporary directory, loopback ports):
its smtpd takes a message, the `content_filter` hands it to qsift's SMTP listener with XFORWARD, qsift
forwards it to the re-injection smtpd with XFORWARD of its own, and Postfix relays it to a sink. The
test reads Postfix's own log to see that the client and qsift's mail_id came through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsift.setup import postfix as setup_postfix
from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import free_port, running_daemon
from tests.integration.test_destinies import banned_message

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin")
QSIFT = str(Path(sys.executable).parent / "qsift")

pytestmark = [
    pytest.mark.skipif(POSTFIX is None, reason="Postfix is not installed (Debian package postfix)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting Postfix needs root"),
]

CLEAN = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: through Postfix\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <postfix-1@example.org>\r\n\r\nhello\r\n"
)


class Postfix:
    def __init__(self, base: Path, smtpd_port: int, sink_port: int) -> None:
        self.base = base
        self.conf = base / "conf"
        self.log = base / "maillog"
        self.smtpd_port = smtpd_port
        self.sink_port = sink_port

    def write_config(self, qsift_port: int, reinject_port: int, content_filter: str | None = None) -> None:
        for name in ("conf", "queue", "data", "snippets"):
            (self.base / name).mkdir()
        shutil.chown(self.base / "data", "postfix")
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.base / 'queue'}\n"
            f"data_directory = {self.base / 'data'}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            "myhostname = mx.test\nmydestination =\nmynetworks = 127.0.0.0/8\n"
            f"relayhost = [127.0.0.1]:{self.sink_port}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\n"
            f"maillog_file = {self.log}\nmaillog_file_prefixes = {self.base}\n"
            "smtp_tls_security_level = none\nsmtpd_tls_security_level = none\n"
        )
        (self.conf / "master.cf").write_text(self._master_cf())
        snippets = self.base / "snippets"
        made = subprocess.run(
            [
                QSIFT, "setup", "postfix", "--write", str(snippets),
                "--listen", f"127.0.0.1:{qsift_port}", "--reinject", f"127.0.0.1:{reinject_port}",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        with (self.conf / "master.cf").open("a") as master:
            master.write((snippets / "master.cf.qsift").read_text())
        with (self.conf / "main.cf").open("a") as main:
            main.write((snippets / "main.cf.qsift").read_text())
            if content_filter is not None:  # a later line wins
                main.write(f"content_filter = {content_filter}\n")

    def _master_cf(self) -> str:
        """Debian's master.cf without chroot (nothing is copied into the queue directory here) and with
        the public smtpd on a loopback port of the test's."""
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1].strip() and not line.startswith("#") and len(fields) >= 8:
                fields[4] = "n"
                if fields[:2] == ["smtp", "inet"]:
                    fields[0] = f"127.0.0.1:{self.smtpd_port}"
                line = " ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert POSTFIX is not None
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60, check=False
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log_text(), re.MULTILINE)
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in Postfix's log:\n{self.log_text()[-4000:]}")


@contextlib.contextmanager
def running_postfix(
    base: Path,
    smtpd_port: int,
    sink_port: int,
    qsift_port: int,
    reinject_port: int,
    content_filter: str | None = None,
) -> Iterator[Postfix]:
    postfix = Postfix(base, smtpd_port, sink_port)
    postfix.write_config(qsift_port, reinject_port, content_filter)
    checked = postfix.command("check")
    assert checked.returncode == 0, checked.stderr + postfix.log_text()
    started = postfix.command("start")
    assert started.returncode == 0, started.stderr + postfix.log_text()
    try:
        postfix.wait_for_log(r"postfix/master\[\d+\]: daemon started")
        yield postfix
    finally:
        postfix.command("stop")
        for _ in range(150):  # `postfix status` fails once the master is gone
            if postfix.command("status").returncode != 0:
                break
            time.sleep(0.1)


def submit(port: int, message: bytes, sender: str, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mua.example.org")
        client.sendmail(sender, [recipient], message)


async def delivered(sink: FakeMta, count: int, timeout: float = 60) -> None:
    for _ in range(int(timeout * 10)):
        if len(sink.accepted) >= count:
            break
        await asyncio.sleep(0.1)
    assert len(sink.accepted) >= count, [d.recipients for d in sink.deliveries]


def listener_from_setup(qsift_port: int) -> dict[str, object]:
    """The [[listen]] table `qsift setup postfix` writes for this port (xforward_hosts included)."""
    text = setup_postfix.qsift_toml(setup_postfix.PostfixOptions(listen=f"127.0.0.1:{qsift_port}"))
    [listener] = tomllib.loads(text)["listen"]
    return {key: value for key, value in listener.items() if key != "protocol"}


async def test_mail_goes_through_postfix_and_qsift_and_both_logs_agree(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    base = Path(tempfile.mkdtemp(prefix="qsift-postfix-", dir="/tmp"))  # Postfix's user must reach it
    base.chmod(0o755)
    smtpd_port, qsift_port, reinject_port = free_port(), free_port(), free_port()
    (base / "qsift").mkdir()
    try:
        async with (
            fake_mta() as sink,
            running_daemon(
                base / "qsift",
                f"smtp:[127.0.0.1]:{reinject_port}",
                protocols=("smtp",),
                listen_extra=listener_from_setup(qsift_port),
            ),
        ):
            with running_postfix(base, smtpd_port, sink.port, qsift_port, reinject_port) as postfix:
                await asyncio.to_thread(submit, smtpd_port, CLEAN, "alice@example.org", "bob@example.net")
                await delivered(sink, 1)
                got = sink.deliveries[-1]
                assert got.recipients == [b"bob@example.net"] and b"through Postfix" in got.body
                assert b"X-Qsift-Scanned:" in got.body  # qsift's mark: it passed through qsift
                # Postfix's re-injection smtpd names the real client and qsift's mail_id.
                found = postfix.wait_for_log(
                    r"postfix/reinject/smtpd\[\d+\]: \w+: client=\S*\[127\.0\.0\.1\], "
                    r"orig_queue_id=([^,\s]+), orig_client=\S*\[127\.0\.0\.1\]"
                )
                assert re.fullmatch(r"[A-Za-z0-9_-]{12}", found.group(1)), found.group(0)
                # Postfix is the host setup lets send XFORWARD: qsift took it (IDENT: Postfix's queue ID).
                assert any(
                    re.search(r"XFORWARD from \[127\.0\.0\.1\]: .*IDENT=\w+", r.getMessage())
                    for r in caplog.records
                ), [r.getMessage() for r in caplog.records]
                # A banned file: qsift bounces it; its DSN goes back through Postfix to the sender.
                banned = banned_message()
                await asyncio.to_thread(submit, smtpd_port, banned, "alice@example.org", "bob@example.net")
                await delivered(sink, 2)
                dsn = sink.deliveries[-1]
                assert dsn.sender == b"" and dsn.recipients == [b"alice@example.org"], dsn
                assert b"BANNED" in dsn.body
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_content_filter_naming_two_nodes_goes_on_to_the_second_in_the_same_attempt() -> None:
    """Several filter nodes behind Postfix (docs/cluster.md): Postfix 3.5 and later take a list of next
    hops, tried in order. The first node answers the dot with 451, as a qsift node whose PostgreSQL is
    down does; Postfix hands the message to the second at once, and it is delivered once."""
    base = Path(tempfile.mkdtemp(prefix="qsift-postfix-", dir="/tmp"))
    base.chmod(0o755)
    smtpd_port, qsift_port, reinject_port = free_port(), free_port(), free_port()
    (base / "qsift").mkdir()
    refusing = Script(final_reply="451 4.3.0 id=x - cannot read the shared outcome record: PostgreSQL down")
    try:
        async with (
            fake_mta(refusing) as first,
            fake_mta() as sink,
            running_daemon(
                base / "qsift",
                f"smtp:[127.0.0.1]:{reinject_port}",
                protocols=("smtp",),
                listen_extra=listener_from_setup(qsift_port),
            ),
        ):
            hops = f"qsift:[127.0.0.1]:{first.port}, [127.0.0.1]:{qsift_port}"
            with running_postfix(base, smtpd_port, sink.port, qsift_port, reinject_port, hops) as postfix:
                await asyncio.to_thread(submit, smtpd_port, CLEAN, "alice@example.org", "bob@example.net")
                await delivered(sink, 1)
                postfix.wait_for_log(r"postfix/qsift/smtp\[\d+\]: \w+: host \S+ said: 451 4\.3\.0")
                postfix.wait_for_log(
                    rf"postfix/qsift/smtp\[\d+\]: \w+: .*relay=\S+:{qsift_port}, .*status=sent"
                )
        assert len(first.accepted) == 0 and len(sink.accepted) == 1
        assert b"X-Qsift-Scanned:" in sink.accepted[0].body
    finally:
        shutil.rmtree(base, ignore_errors=True)
