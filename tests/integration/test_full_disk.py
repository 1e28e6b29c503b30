"""A real full disk: qsift's spool, quarantine and outcome record on a small tmpfs that fills up.

Whatever cannot be written makes the answer temporary (the client keeps the message); nothing is
delivered half, and once there is room again the retry goes through exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon, smtp_send
from tests.integration.test_destinies import SENDER, banned_message

BOB = b"bob@example.net"


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`; skipped where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes; the filler file, to delete for room."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def big_message(size: int) -> bytes:
    head = b"From: alice@example.org\nTo: bob@example.net\nSubject: big\nMessage-ID: <big-1@example.org>\n\n"
    line = b"x" * 76 + b"\n"
    return head + line * (size // len(line))


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


async def test_a_message_that_cannot_be_spooled_is_refused_for_now_then_taken(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        message = big_message(2 * 1024 * 1024)  # past memory_spool (1 MiB): it goes to the disk
        async with (
            fake_mta() as mta,
            running_daemon(disk, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp", "smtp")) as daemon,
        ):
            filler = fill(disk, 256 * 1024)
            answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB])
            assert answer.startswith("Z") and "No space left on device" in answer, answer
            transcript = await smtp_send(daemon.smtp, message, SENDER, [BOB])
            code, _ = transcript.final[0]
            assert 400 <= code < 500, transcript.final
            assert mta.deliveries == []
            filler.unlink()
            answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB])
            assert answer.startswith("K250"), answer
        assert len(mta.accepted) == 1
        # Nothing of the refused attempts is left behind: only the durable state is on the disk.
        left = {str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file()}
        assert left <= {"state/mark.key", "state/outcomes.sqlite", "state/quarantine/index.sqlite"}, left


async def test_a_quarantine_on_a_full_disk_means_try_later_then_the_bounce(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        message = banned_message()
        async with (
            fake_mta() as mta,
            running_daemon(disk, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
        ):
            filler = fill(disk, 0)
            answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB])
            assert re.match(r"Z451 4\.3\.0 id=\S+ - cannot quarantine", answer), answer
            assert mta.deliveries == []  # not bounced either: the client keeps it
            filler.unlink()
            answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB])
            assert re.fullmatch(r"K250 2\.5\.0 Ok, id=\S+, BOUNCE", answer), answer
        assert len(mta.deliveries) == 1 and mta.deliveries[0].sender == b""  # the one DSN
        kept = list((disk / "state" / "quarantine").glob("banned-*.gz"))
        assert len(kept) == 1, kept


async def test_delivered_but_not_recorded_is_still_accepted_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The downstream has the message: a Z now would make the client's retry a certain duplicate, while
    a missing record only makes one possible if the client also loses this K (stages.py, _record)."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        message = big_message(20 * 1024)  # in memory: only the record needs the disk
        async with (
            fake_mta() as mta,
            running_daemon(disk, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
        ):
            fill(disk, 0)
            answer = await qmqp_send(daemon.qmqp, message, SENDER, [BOB])
        assert answer.startswith("K250"), answer
        assert len(mta.accepted) == 1
        assert any("delivered but not recorded" in r.getMessage() for r in caplog.records)
