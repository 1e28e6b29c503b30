"""`qsift config check FILE`: every error in a configuration file, each with its line; else the
configuration in effect.

The converter (convert.py) finds every problem at once and lines.py names each one's line, so a
postmaster mends a file in one pass rather than one error per start; loading for `qsift serve` goes
through the same reports (config.loads).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import TextIO

from qsift.config import Config
from qsift.config.convert import convert
from qsift.config.effective import dumps, effective
from qsift.config.lines import key_lines, line_of


@dataclass(frozen=True)
class Report:
    """One error, as `FILE:LINE: where: what` (no line when the error is about the file as a whole)."""

    file: str
    line: int | None
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}" if self.line else f"{self.file}: {self.text}"


def check_text(text: str, file: str) -> tuple[list[Report], Config | None]:
    """The errors in a configuration file's text, in line order, or none and the Config."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        return [Report(file, int(found.group(1)) if found else None, f"not TOML: {exc}")], None
    built, problems = convert(Config, raw)
    lines = key_lines(text) if problems else {}
    reports = [Report(file, line_of(lines, p.path), str(p)) for p in problems]
    return sorted(reports, key=lambda r: r.line or 0), built


def check_file(path: str, out: TextIO, err: TextIO) -> int:
    """The command: 0 and the effective configuration on `out`, 1 and every error on `err`; 2 unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}\n")
        return 2
    reports, built = check_text(text, path)
    if built is None:
        err.writelines(f"{report}\n" for report in reports)
        err.write(f"{path}: {len(reports)} error(s)\n")
        return 1
    out.write(f"# {path}: valid. The configuration in effect, defaults included:\n")
    out.write(dumps(effective(tomllib.loads(text), built)))
    return 0
