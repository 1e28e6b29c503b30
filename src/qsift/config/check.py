"""`qsift config check FILE`: every error in a configuration file, each with its line; else the
configuration in effect.

The schema (config/tables.py) finds every problem at once, each with its line (config/lines.py), so a
postmaster mends a file in one pass rather than one error per start; loading for `qsift serve` goes
through the same reports (config.loads). Only a file clean by that measure goes on to the builder
(config.py), whose own checks stay behind the schema's and stop at the first error.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any, TextIO

from qsift import config as config_module
from qsift.config.effective import dumps, effective
from qsift.config.lines import key_lines, line_of
from qsift.config.schema import describe, validate
from qsift.config.tables import ROOT
from qsift.errors import ConfigError


@dataclass(frozen=True)
class Report:
    """One error, as `FILE:LINE: where: what` (no line when the error is about the file as a whole)."""

    file: str
    line: int | None
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}" if self.line else f"{self.file}: {self.text}"


def schema_reports(text: str, file: str) -> tuple[list[Report], dict[str, Any]]:
    """What the TOML syntax and the schema find wrong in a configuration file's text, in line order,
    and the parsed file (empty when it is not TOML)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        return [Report(file, int(found.group(1)) if found else None, f"not TOML: {exc}")], {}
    problems = validate(ROOT, raw)
    lines = key_lines(text) if problems else {}
    reports = [Report(file, line_of(lines, p.path), f"{describe(p.path)}: {p.message}") for p in problems]
    return sorted(reports, key=lambda r: r.line or 0), raw


def check_text(text: str, file: str) -> tuple[list[Report], dict[str, Any] | None]:
    """The errors in a configuration file's text, and when there are none, the configuration in effect."""
    reports, raw = schema_reports(text, file)
    if reports:
        return reports, None
    try:
        built = config_module.from_mapping(raw, source=file)
    except ConfigError as exc:
        return [Report(file, None, str(exc).removeprefix(f"{file}: "))], None
    return [], effective(raw, built)


def check_file(path: str, out: TextIO, err: TextIO) -> int:
    """The command: 0 and the effective configuration on `out`, 1 and every error on `err`; 2 unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}\n")
        return 2
    reports, values = check_text(text, path)
    if values is None:
        err.writelines(f"{report}\n" for report in reports)
        err.write(f"{path}: {len(reports)} error(s)\n")
        return 1
    out.write(f"# {path}: valid. The configuration in effect, defaults included:\n")
    out.write(dumps(values))
    return 0
