"""Virus checks: command-line scanners as amavisd-new's `@av_scanners` entries, and primary/backup logic.

A command-line scanner is five things, as in amavisd-new: a name, a program and its arguments (`{}` is
the directory holding the message), the exit codes (or a regex on the output) that mean clean, those that
mean infected, and a regex whose capture groups are the virus names. The HOWTO's NOD32 entry,

    ['NOD32', 'nod32', '--all --subdir {}', [0], [1,2], qr/^(?:.*?) - (.+?)(?:$| - )/m]

is in qsift's configuration:

    [[virus.scanners]]
    type = "command"
    name = "NOD32"
    command = "nod32"
    args = ["--all", "--subdir", "{}"]
    clean = [0]
    infected = [1, 2]
    virus_name = '^(?:.*?) - (.+?)(?:$| - )'

The program runs without a shell, in a private 0700 directory holding the raw message as `email.txt`
(the scanner decodes it, as clamscan and clamdscan do), under a time limit, and is killed past it.

`scan_for_viruses` runs the primary scanners together; only if every one of them failed are the backups
tried (amavisd-new's `@av_scanners_backup`). A virus found by any scanner makes the message **virus**;
if every scanner failed, the caller must answer "try later" (DESIGN.md invariant 4), never pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from qsift.checks.scanners import VirusResult, VirusScanner
from qsift.model import Category, Finding

#: Scanner output kept for the name regex and the log; the rest is read and dropped.
_OUTPUT_LIMIT = 1024 * 1024
_COPY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class CommandScanner:
    """One `[[virus.scanners]]` table with `type = "command"`."""

    name: str
    command: str
    args: tuple[str, ...]
    #: Exit codes meaning clean, or a regex that, found in the output, means clean.
    clean: tuple[int, ...] | re.Pattern[str]
    #: Exit codes meaning infected, or a regex on the output; checked before `clean`.
    infected: tuple[int, ...] | re.Pattern[str]
    #: Its capture groups, over every match in the output, are the virus names.
    virus_name: re.Pattern[str]
    timeout: float = 120.0
    tmp_dir: str | None = None

    async def scan(self, message: IO[bytes], size: int) -> VirusResult:
        program = shutil.which(self.command)
        if program is None:
            return VirusResult(self.name, error=f"{self.command}: not found")
        directory = tempfile.mkdtemp(prefix="qsift-scan-", dir=self.tmp_dir)
        try:
            os.chmod(directory, 0o700)
            await asyncio.to_thread(_copy, message, os.path.join(directory, "email.txt"))
            status, output = await self._run(program, directory)
        except TimeoutError:  # before OSError, of which it is a kind
            return VirusResult(self.name, error=f"timed out after {self.timeout:g} s")
        except OSError as exc:
            return VirusResult(self.name, error=f"cannot run {self.command}: {exc.strerror or exc}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return self._judge(status, output)

    async def _run(self, program: str, directory: str) -> tuple[int, str]:
        args = [directory if arg == "{}" else arg.replace("{}", directory) for arg in self.args]
        process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # so a timeout kills the scanner's helpers too
        )
        try:
            async with asyncio.timeout(self.timeout):
                output = await _read_bounded(process)
                status = await process.wait()
        except BaseException:
            # Timed out, or the check was cancelled and nobody waits for the answer: the scanner and its
            # helpers go, rather than run on over a copy of the message that is being removed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.shield(process.wait())
            raise
        return status, output.decode("utf-8", "replace")

    def _judge(self, status: int, output: str) -> VirusResult:
        if _matches(self.infected, status, output):
            names = tuple(dict.fromkeys(_names(self.virus_name, output))) or ("unknown virus",)
            return VirusResult(self.name, names=names)
        if _matches(self.clean, status, output):
            return VirusResult(self.name)
        last = output.strip().splitlines()[-1:] or [""]
        return VirusResult(self.name, error=f"unexpected exit status {status}: {last[0][:200]}")


def _copy(message: IO[bytes], path: str) -> None:
    with open(path, "wb") as target:
        while chunk := message.read(_COPY_CHUNK):
            target.write(chunk)


async def _read_bounded(process: asyncio.subprocess.Process) -> bytes:
    assert process.stdout is not None
    kept = bytearray()
    while chunk := await process.stdout.read(_COPY_CHUNK):
        if len(kept) < _OUTPUT_LIMIT:
            kept += chunk[: _OUTPUT_LIMIT - len(kept)]
    return bytes(kept)


def _matches(rule: tuple[int, ...] | re.Pattern[str], status: int, output: str) -> bool:
    if isinstance(rule, re.Pattern):
        return rule.search(output) is not None
    return status in rule


def _names(pattern: re.Pattern[str], output: str) -> list[str]:
    names: list[str] = []
    for match in pattern.finditer(output):
        groups = [g for g in match.groups() if g] if pattern.groups else [match.group(0)]
        names.extend(g.strip() for g in groups if g.strip())
    return names


# --- primary and backup scanners ---------------------------------------------------------------------


class VirusScannersFailed(Exception):
    """Every virus scanner, backups included, failed: the message must not be passed."""


@dataclass(frozen=True)
class VirusOutcome:
    findings: tuple[Finding, ...]
    #: Every scanner's result, for the log.
    results: tuple[VirusResult, ...]


Opener = Callable[[], IO[bytes]]


async def scan_for_viruses(
    primary: Sequence[VirusScanner], backup: Sequence[VirusScanner], open_message: Opener, size: int
) -> VirusOutcome:
    """Run the primary scanners together, the backups only if every primary failed.

    Raises VirusScannersFailed when no scanner gave an answer. A scanner that cannot check this message
    by its own limits (too big for clamd) answers "unchecked", which is an answer: the message is
    unchecked, not held back forever.
    """
    if not primary and not backup:
        return VirusOutcome((), ())
    results = await _scan_all(primary, open_message, size)
    if all(r.error for r in results):
        results += await _scan_all(backup, open_message, size)
    answered = [r for r in results if not r.error]
    if not answered:
        errors = "; ".join(f"{r.scanner}: {r.error}" for r in results)
        raise VirusScannersFailed(errors or "no virus scanner configured")
    return VirusOutcome(_findings(answered), tuple(results))


async def _scan_all(
    scanners: Sequence[VirusScanner], open_message: Opener, size: int
) -> tuple[VirusResult, ...]:
    async def one(scanner: VirusScanner) -> VirusResult:
        with open_message() as message:
            try:
                return await scanner.scan(message, size)
            except Exception as exc:  # a client bug is a failed scanner, never a lost message
                return VirusResult(scanner.name, error=f"internal error: {type(exc).__name__}: {exc}")

    return tuple(await asyncio.gather(*(one(s) for s in scanners)))


def _findings(answered: Sequence[VirusResult]) -> tuple[Finding, ...]:
    infected = [r for r in answered if r.infected]
    if infected:
        # The detail is the names alone: it becomes "INFECTED (names)" and, later, the refusal text.
        names = list(dict.fromkeys(name for r in infected for name in r.names))
        return (Finding(Category.VIRUS, 0, ", ".join(names)),)
    unchecked = [r for r in answered if r.unchecked]
    if unchecked and len(unchecked) == len(answered):
        reasons = "; ".join(f"{r.scanner}: {r.unchecked}" for r in unchecked)
        return (Finding(Category.UNCHECKED, 2, f"not virus-scanned: {reasons}"),)
    return ()
