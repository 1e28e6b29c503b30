"""Quarantine end to end: a blocked message is kept before the answer, listed, shown and released."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qsift.errors import SpoolError
from qsift.store.quarantine import Quarantine
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.integration.test_destinies import banned_message

if TYPE_CHECKING:
    import pytest

QSIFT = str(Path(sys.executable).parent / "qsift")


def qsift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QSIFT, *args], capture_output=True, text=True, timeout=60, check=False)


async def test_a_bounced_banned_message_is_quarantined_listed_shown_and_released(tmp_path: Path) -> None:
    async with fake_mta() as mta:
        async with running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon:
            answer = await qmqp_send(
                daemon.qmqp, banned_message(), b"alice@example.org", [b"bob@example.net"]
            )
        assert re.fullmatch(r"K250 2\.5\.0 Ok, id=\S+, BOUNCE", answer), answer
        mail_id = answer.split("id=")[1].split(",")[0]
        config = tmp_path / "qsift.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\nmyhostname = "qsift.test"\n'
            f'[forward]\nmethod = "smtp:[127.0.0.1]:{mta.port}"\n'
        )
        listed = qsift("quarantine", "list", "--json", "--config", str(config))
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert entry["mail_id"] == mail_id and entry["category"] == "banned"
        assert entry["sender"] == "alice@example.org" and entry["recipients"] == ["bob@example.net"]
        assert Path(entry["file"]).name == f"banned-{mail_id}.gz"
        shown = qsift("quarantine", "show", "--config", str(config), mail_id)
        assert shown.returncode == 0 and "Message-ID: <banned-1@example.org>" in shown.stdout
        deliveries_before = len(mta.deliveries)  # the DSN
        released = await asyncio.to_thread(qsift, "release", "--config", str(config), mail_id)
        assert released.returncode == 0, released.stdout + released.stderr
        assert "<bob@example.net>: 250" in released.stdout
    assert len(mta.deliveries) == deliveries_before + 1
    delivered = mta.deliveries[-1]
    assert delivered.recipients == [b"bob@example.net"] and b"invoice.zip" in delivered.body
    relisted = json.loads(qsift("quarantine", "list", "--json", "--config", str(config)).stdout)
    assert relisted["released"] == ["bob@example.net"]
    assert qsift("release", "--config", str(config), "nosuchid1").returncode == 1


async def test_a_quarantine_that_cannot_be_written_means_try_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise SpoolError("cannot write quarantine: No space left on device")

    monkeypatch.setattr(Quarantine, "store", disk_full)
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, banned_message(), b"alice@example.org", [b"bob@example.net"])
    assert answer.startswith("Z451 4.3.0") and "No space left on device" in answer, answer
    assert mta.deliveries == []  # neither delivered, nor bounced, nor kept: the client keeps it


async def test_old_quarantine_and_outcome_records_are_cleared_out(tmp_path: Path) -> None:
    """With `max_age_days`, one worker deletes what is older, hourly; outcome records past the dedupe
    window go too. Here time is moved by making the entries look old."""
    async with (
        fake_mta() as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",)) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, banned_message(), b"alice@example.org", [b"bob@example.net"])
        assert "BOUNCE" in answer, answer
    state = tmp_path / "state"
    index = sqlite3.connect(state / "quarantine" / "index.sqlite")
    with index:
        index.execute("UPDATE quarantine SET time = time - 8 * 86400")
    index.close()
    outcomes = sqlite3.connect(state / "outcomes.sqlite")
    with outcomes:
        rows = outcomes.execute("SELECT count(*) FROM outcomes").fetchone()[0]
        outcomes.execute("UPDATE outcomes SET created = created - 7200")
    outcomes.close()
    assert rows >= 1  # the DSN'd recipient is settled and recorded
    top = {"quarantine": {"max_age_days": 7}}
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top, housekeeping_every=0.05
        ),
    ):
        for _ in range(100):
            if not list((state / "quarantine").glob("*.gz")):
                break
            await asyncio.sleep(0.05)
    assert list((state / "quarantine").glob("*.gz")) == []
    outcomes = sqlite3.connect(state / "outcomes.sqlite")
    assert outcomes.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 0
    outcomes.close()


def test_quarantine_purge_from_cron(tmp_path: Path) -> None:
    kept = Quarantine(str(tmp_path / "state" / "quarantine"))
    try:
        kept.store(
            "old000000001", "virus", "x", "a@example.org", ["b@example.org"], [b"m"], time.time() - 40 * 86400
        )
        kept.store("new000000001", "virus", "x", "a@example.org", ["b@example.org"], [b"m"], time.time())
    finally:
        kept.close()
    config = tmp_path / "qsift.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    done = qsift("quarantine", "purge", "--older-than", "30", "--config", str(config))
    assert done.returncode == 0 and done.stdout == "1 quarantined message(s) older than 30 days deleted\n"
    listed = qsift("quarantine", "list", "--json", "--config", str(config))
    assert [json.loads(line)["mail_id"] for line in listed.stdout.splitlines()] == ["new000000001"]
    refused = qsift("quarantine", "purge", "--older-than", "-1", "--config", str(config))
    assert refused.returncode == 2
