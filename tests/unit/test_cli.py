"""Every `qsift` command answers bad input with one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qsift import cli

BAD_INPUT = [
    [],
    ["bogus"],
    ["--config", "x"],
    ["quarantine"],
    ["quarantine", "show"],
    ["quarantine", "show", "../x"],
    ["quarantine", "show", "a/b/c/d/e/f"],
    ["quarantine", "show", "--config", "{config}", "/etc/passwd"],
    ["release", "../x"],
    ["release", "--config", "{config}", "a" * 33],
    ["quarantine", "list", "--limit", "-1"],
    ["quarantine", "list", "--limit", "ten"],
    ["quarantine", "list", "--config", "{missing}"],
    ["quarantine", "list", "--config", "{directory}"],
    ["quarantine", "list", "--config", "{not_toml}"],
    ["quarantine", "purge", "--older-than", "-1"],
    ["quarantine", "purge", "--older-than", "nan"],
    ["quarantine", "purge", "--older-than", "inf"],
    ["quarantine", "purge"],
    ["status", "--wait", "-1"],
    ["status", "--wait", "nan"],
    ["status", "--wait", "0"],
    ["scan"],
    ["scan", "--config", "{missing}", "message.eml"],
    ["serve", "--config", "{not_toml}"],
    ["config"],
    ["config", "check"],
    ["config", "check", "{missing}"],
    ["config", "check", "{directory}"],
    ["store"],
    ["store", "init"],
    ["store", "init", "--config", "{config}"],
    ["store", "init", "--config", "{missing}"],
    ["setup"],
    ["setup", "postfix", "--maxproc", "x"],
    ["setup", "postfix", "--maxproc", "-1"],
    ["setup", "postfix", "--listen", "nonsense"],
]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "qsift.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    not_toml = tmp_path / "passwd"
    not_toml.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return {
        "config": str(config),
        "missing": str(tmp_path / "missing.toml"),
        "directory": str(tmp_path),
        "not_toml": str(not_toml),
    }


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, list[str]]:
    try:
        code: int | str | None = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("argv", BAD_INPUT, ids=" ".join)
def test_bad_input_gets_one_line_and_exit_2(
    argv: list[str], paths: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run([arg.format(**paths) for arg in argv], capsys)
    assert (code, len(err)) == (2, 1), err


def test_a_quarantine_that_cannot_be_opened_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    config = tmp_path / "qsift.toml"
    config.write_text(f'state_dir = "{tmp_path / "file"}"\n')
    code, err = run(["quarantine", "list", "--config", str(config)], capsys)
    assert (code, len(err)) == (1, 1), err
    assert err[0].startswith("qsift: cannot open quarantine")


def test_a_valid_mail_id_not_quarantined_is_exit_1(
    paths: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["quarantine", "show", "--config", paths["config"], "nosuchid1"], capsys)
    assert (code, err) == (1, ["qsift: no quarantined message nosuchid1"])


def test_the_setup_planners_are_loaded_for_qsift_setup_alone() -> None:
    """Every `qsift serve` process, parent and workers, would carry them (about 0.3 MiB each)."""
    program = (
        "import sys\n"
        "from qsift import cli\n"
        "from qsift.serve import supervisor\n"
        "cli._parser().parse_args(['serve'])\n"
        "print(sorted(name for name in sys.modules if name.startswith('qsift.setup.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['qsift.setup.arguments']", done.stdout + done.stderr
