"""Command-line scanners (amavisd-new's @av_scanners entries) and the primary/backup logic."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path

import pytest

from qsift.checks.scanners import VirusResult
from qsift.checks.virus import CommandScanner, VirusScannersFailed, scan_for_viruses
from qsift.model import Category
from tests.unit.checks.test_content_parts import until

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

# A scanner in the manner of clamscan and NOD32: scans the directory it is given, prints a line per
# infected file, exits 0 clean, 1 infected, 2 on trouble; FAKE_SCANNER_MODE makes it misbehave.
FAKE_SCANNER = """
import os, sys, time
mode = os.environ.get("FAKE_SCANNER_MODE", "")
if mode == "hang":
    time.sleep(60)
if mode == "hang-with-helper":  # a helper of its own in its session, as clamscan's unpackers would be
    import subprocess
    helper = subprocess.Popen(["sleep", "60"])
    with open(os.environ["FAKE_SCANNER_PIDS"] + ".tmp", "w") as pids:
        pids.write(f"{os.getpid()} {helper.pid}")
    os.rename(os.environ["FAKE_SCANNER_PIDS"] + ".tmp", os.environ["FAKE_SCANNER_PIDS"])
    time.sleep(60)
if mode == "error":
    print("LibClamAV Error: cannot open database"); sys.exit(2)
directory = sys.argv[-1]
found = 0
for name in sorted(os.listdir(directory)):
    data = open(os.path.join(directory, name), "rb").read()
    if b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in data:
        print(f"{directory}/{name}: Eicar-Test-Signature FOUND"); found += 1
    else:
        print(f"{directory}/{name}: OK")
sys.exit(1 if found else 0)
"""


@pytest.fixture
def scanner_program(tmp_path: Path) -> str:
    program = tmp_path / "fakescan"
    program.write_text(f"#!{sys.executable}\n{FAKE_SCANNER}")
    program.chmod(0o755)
    return str(program)


def command_scanner(program: str, **overrides: object) -> CommandScanner:
    settings: dict[str, object] = {
        "name": "FakeScan",
        "command": program,
        "args": ("--no-summary", "{}"),
        "clean": (0,),
        "infected": (1,),
        "virus_name": re.compile(r"^.*?: (?!Infected Archive)(.*) FOUND$", re.MULTILINE),
        "timeout": 10.0,
    }
    settings.update(overrides)
    return CommandScanner(**settings)  # type: ignore[arg-type]


async def test_infected_clean_and_names(scanner_program: str) -> None:
    scanner = command_scanner(scanner_program)
    found = await scanner.scan(io.BytesIO(b"Subject: x\n\n" + EICAR), 80)
    assert found == VirusResult("FakeScan", names=("Eicar-Test-Signature",))
    clean = await scanner.scan(io.BytesIO(b"Subject: x\n\nhello\n"), 20)
    assert clean == VirusResult("FakeScan")


async def test_regex_clean_and_infected_rules(scanner_program: str) -> None:
    scanner = command_scanner(
        scanner_program, clean=re.compile(r": OK$", re.M), infected=re.compile(r"FOUND$", re.M)
    )
    assert (await scanner.scan(io.BytesIO(EICAR), 68)).infected
    assert not (await scanner.scan(io.BytesIO(b"hi"), 2)).infected


async def test_unexpected_status_is_an_error(scanner_program: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SCANNER_MODE", "error")
    result = await command_scanner(scanner_program).scan(io.BytesIO(b"hi"), 2)
    assert result.error == "unexpected exit status 2: LibClamAV Error: cannot open database"


async def test_a_hanging_scanner_is_killed(scanner_program: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SCANNER_MODE", "hang")
    started = asyncio.get_running_loop().time()
    result = await command_scanner(scanner_program, timeout=0.5).scan(io.BytesIO(b"hi"), 2)
    assert result.error == "timed out after 0.5 s"
    assert asyncio.get_running_loop().time() - started < 5


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent to reap it has ended)."""
    try:
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except FileNotFoundError:
        return False


async def test_a_cancelled_scan_ends_the_scanner_and_its_helpers(
    scanner_program: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SCANNER_MODE", "hang-with-helper")
    monkeypatch.setenv("FAKE_SCANNER_PIDS", str(pids_file))
    scan = asyncio.create_task(command_scanner(scanner_program, timeout=60).scan(io.BytesIO(b"hi"), 2))
    assert await until(pids_file.exists, 10)
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert all(running(pid) for pid in pids)
    scan.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scan
    assert await until(lambda: not any(running(pid) for pid in pids), 5)


async def test_a_missing_program_is_an_error() -> None:
    result = await command_scanner("/nonexistent/scanner").scan(io.BytesIO(b"hi"), 2)
    assert result.error == "/nonexistent/scanner: not found"


async def test_the_private_directory_is_removed(scanner_program: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    await command_scanner(scanner_program, tmp_dir=str(work)).scan(io.BytesIO(EICAR), 68)
    assert list(work.iterdir()) == []


class Fixed:
    def __init__(self, result: VirusResult) -> None:
        self.name = result.scanner
        self.result = result
        self.calls = 0

    async def scan(self, message: object, size: int) -> VirusResult:
        self.calls += 1
        return self.result


def opener() -> io.BytesIO:
    return io.BytesIO(b"message")


async def test_backups_run_only_when_every_primary_failed() -> None:
    broken = Fixed(VirusResult("clamd", error="connection refused"))
    working = Fixed(VirusResult("clamd-2"))
    backup = Fixed(VirusResult("clamscan", names=("Eicar",)))
    outcome = await scan_for_viruses([broken, working], [backup], opener, 7)
    assert outcome.findings == () and backup.calls == 0
    outcome = await scan_for_viruses([broken], [backup], opener, 7)
    assert [(f.category, f.detail) for f in outcome.findings] == [(Category.VIRUS, "Eicar")]


async def test_every_scanner_failed_raises() -> None:
    broken = Fixed(VirusResult("clamd", error="connection refused"))
    with pytest.raises(VirusScannersFailed, match="clamd: connection refused; clamscan: timed out"):
        await scan_for_viruses([broken], [Fixed(VirusResult("clamscan", error="timed out"))], opener, 7)


async def test_any_scanner_finding_a_virus_wins_and_names_are_merged() -> None:
    results = [VirusResult("a", names=("X", "Y")), VirusResult("b"), VirusResult("c", names=("Y", "Z"))]
    outcome = await scan_for_viruses([Fixed(r) for r in results], [], opener, 7)
    assert [f.detail for f in outcome.findings] == ["X, Y, Z"]


async def test_too_big_for_every_scanner_is_unchecked() -> None:
    big = Fixed(VirusResult("clamd", unchecked="larger than StreamMaxLength (25 MiB)"))
    outcome = await scan_for_viruses([big], [], opener, 7)
    assert [(f.category, f.minor) for f in outcome.findings] == [(Category.UNCHECKED, 2)]


async def test_a_client_bug_is_a_failed_scanner_not_a_crash() -> None:
    class Broken:
        name = "buggy"

        async def scan(self, message: object, size: int) -> VirusResult:
            raise ZeroDivisionError("oops")

    with pytest.raises(VirusScannersFailed, match="buggy: internal error: ZeroDivisionError: oops"):
        await scan_for_viruses([Broken()], [], opener, 7)


async def test_no_scanner_configured_is_no_finding() -> None:
    assert (await scan_for_viruses([], [], opener, 7)).findings == ()
