"""The Makefile's commands exist: a name in .PHONY without a rule makes `make NAME` say "Nothing to be done"
and exit 0, so a fast loop that was never written would look like one that passed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def _phony_targets(text: str) -> list[str]:
    phony = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    assert phony is not None
    return phony.group(1).split()


def test_every_phony_target_has_a_rule() -> None:
    text = MAKEFILE.read_text()
    rules = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))
    assert [name for name in _phony_targets(text) if name not in rules] == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_unit_runs_the_unit_tests_without_the_slow_ones() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(MAKEFILE.parent), "unit"], capture_output=True, text=True, check=True
    )
    assert re.search(r"pytest .*-m 'not slow' tests/unit tests/fuzz", dry_run.stdout), dry_run.stdout
