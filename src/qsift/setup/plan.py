"""A plan of directories and files to create, and the one function that carries it out (or shows it).

Files are written whole or not at all (a temp file in the same directory, renamed into place), so
svscan never starts a half-written `run`. An existing file is replaced only with `force`: a site's own
edits to a run script or a control file are never lost to a second `qsift setup`.
"""

from __future__ import annotations

import enum
import os
import pwd
from dataclasses import dataclass
from typing import TextIO

DIR_MODE = 0o755
SCRIPT_MODE = 0o755
FILE_MODE = 0o644


@dataclass(frozen=True)
class PlannedDir:
    path: str
    #: The account that must own it because it writes there (multilog's log directory); "" for root.
    owner: str = ""


@dataclass(frozen=True)
class PlannedFile:
    path: str
    content: str
    mode: int = FILE_MODE


@dataclass(frozen=True)
class Plan:
    directories: tuple[PlannedDir, ...]
    files: tuple[PlannedFile, ...]


def carry_out(plan: Plan, *, dry_run: bool, force: bool, out: TextIO) -> int:
    """Create what is missing and say what was done; the number of existing files kept although they differ.

    With `dry_run` nothing is touched: every file is printed whole, under its path and mode.
    """
    for directory in plan.directories:
        _make_directory(directory, dry_run=dry_run, out=out)
    kept = 0
    for planned in plan.files:
        kept += not _write_file(planned, dry_run=dry_run, force=force, out=out)
    return kept


def _make_directory(directory: PlannedDir, *, dry_run: bool, out: TextIO) -> None:
    owner = f", owner {directory.owner}" if directory.owner else ""
    if os.path.isdir(directory.path):
        print(f"exists    {directory.path}/", file=out)
        return
    if dry_run:
        print(f"would create {directory.path}/ ({DIR_MODE:04o}{owner})", file=out)
        return
    os.makedirs(directory.path, exist_ok=True)
    os.chmod(directory.path, DIR_MODE)  # makedirs' mode is filtered by the umask
    print(f"created   {directory.path}/ ({DIR_MODE:04o}{owner})", file=out)
    if directory.owner:
        _give(directory, out)


def _give(directory: PlannedDir, out: TextIO) -> None:
    try:
        account = pwd.getpwnam(directory.owner)
    except KeyError:
        print(f"          no user {directory.owner!r}: create it, then chown it {directory.path}", file=out)
        return
    if os.geteuid() == 0:
        os.chown(directory.path, account.pw_uid, account.pw_gid)
    elif os.geteuid() != account.pw_uid:
        print(f"          not root: chown {directory.owner} {directory.path} before starting", file=out)


class FileOutcome(enum.Enum):
    """What became of one planned file: (the word printed after doing it, the note in a dry run)."""

    NEW = ("wrote", "new")
    UNCHANGED = ("unchanged", "unchanged")
    REPLACED = ("replaced", "replaces the existing file")
    KEPT = ("kept", "exists and differs: kept without --force")

    @property
    def done(self) -> str:
        return self.value[0]

    @property
    def planned(self) -> str:
        return self.value[1]


def _write_file(planned: PlannedFile, *, dry_run: bool, force: bool, out: TextIO) -> bool:
    """False if an existing, different file was left alone."""
    current = _read(planned.path)
    if current == planned.content:
        outcome = FileOutcome.UNCHANGED
    elif current is None:
        outcome = FileOutcome.NEW
    else:
        outcome = FileOutcome.REPLACED if force else FileOutcome.KEPT
    mode = f"{planned.mode:04o}"
    if dry_run:
        show(planned, f"{mode}, {outcome.planned}", out)
    elif outcome is FileOutcome.KEPT:
        print(f"{outcome.done:<9} {planned.path} (exists and differs; --force replaces it)", file=out)
    else:
        if outcome is not FileOutcome.UNCHANGED:
            _replace(planned)
        print(f"{outcome.done:<9} {planned.path} ({mode})", file=out)
    return outcome is not FileOutcome.KEPT


def show(planned: PlannedFile, note: str, out: TextIO) -> None:
    """A file's whole content between marker lines, its path and `note` on the first."""
    print(f"\n--- {planned.path} ({note}) ---", file=out)
    print(planned.content, end="" if planned.content.endswith("\n") else "\n", file=out)
    print("---", file=out)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _replace(planned: PlannedFile) -> None:
    directory, name = os.path.split(planned.path)
    temporary = os.path.join(directory, f".{name}.qsift-setup")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(planned.content)
            handle.flush()
            os.fchmod(handle.fileno(), planned.mode)
            os.fsync(handle.fileno())
        os.replace(temporary, planned.path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
