"""The issue's message end to end: a banned program next to an SZDD part whose RFC 2231 name holds a NUL.

It used to end the whole decode ("decoder failure"), so the message passed as UNCHECKED; `qsift scan` and
the daemon must both call it BANNED, and the daemon refuse it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.unit.decode.test_containment import ISSUE_MESSAGE

if TYPE_CHECKING:
    import pytest

QSIFT = str(Path(sys.executable).parent / "qsift")


def test_qsift_scan_calls_the_issue_message_banned(tmp_path: Path) -> None:
    (tmp_path / "issue.eml").write_bytes(ISSUE_MESSAGE)
    result = subprocess.run(
        [QSIFT, "scan", "--json", str(tmp_path / "issue.eml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["category"] == "banned" and verdict["categories"] == ["banned"], verdict["details"]
    assert [d["part"] for d in verdict["details"] if d["category"] == "banned"] == ["2", "3"]
    member = next(p for p in verdict["parts"] if p["path"] == "3/x\x00.exe")
    assert member["detected_type"] == "exe-ms"


async def test_the_daemon_refuses_the_issue_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={"destiny": {"banned": "reject"}},
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, ISSUE_MESSAGE, b"a@example.org", [b"b@example.net"])
    assert answer.startswith("D"), answer
    assert mta.deliveries == []
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Blocked "))
    assert summary.startswith("Blocked BANNED (application/octet-stream,.exe-ms,invoice.pdf.exe"), summary
