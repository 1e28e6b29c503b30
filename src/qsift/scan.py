"""`qsift scan`: the daemon's content checks on message files, offline, with nothing delivered.

For a postmaster asking "what would qsift make of this message?" and for tests: the checks of the
pipeline the daemon runs (made by the same `build_pipeline`), with the same configuration, printed for
people or as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from qsift.checks.content import Verdict
from qsift.decode.parts import Part
from qsift.pipeline.checking import Checks


def run_scan(paths: Sequence[str], checks: Checks, *, as_json: bool, out: TextIO) -> int:
    """Check each file and print its verdict; 0 unless a file could not be read (2)."""
    return asyncio.run(_scan_all(paths, checks, as_json=as_json, out=out))


async def _scan_all(paths: Sequence[str], checks: Checks, *, as_json: bool, out: TextIO) -> int:
    status = 0
    try:
        for path in paths:
            try:
                message = await asyncio.to_thread(Path(path).read_bytes)
            except OSError as exc:
                print(f"qsift scan: {path}: {exc.strerror or exc}", file=sys.stderr)
                status = 2
                continue
            _print(path, await checks.offline(message), as_json=as_json, out=out)
    finally:
        await checks.close()
    return status


def _print(path: str, verdict: Verdict, *, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(verdict_json(path, verdict), ensure_ascii=False) + "\n")
    else:
        out.write(verdict_text(path, verdict))


def verdict_json(path: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "file": path,
        "category": verdict.category.value,
        "categories": [c.value for c in verdict.categories],
        "details": [
            {"category": f.category.value, "minor": f.minor, "detail": f.detail, "part": f.part}
            for f in verdict.findings
        ],
        "parts": [_part_json(p) for p in verdict.parts],
        "auth": [
            {"method": r.method, "result": r.result, "reason": r.reason, "properties": dict(r.properties)}
            for r in verdict.auth.all
        ],
    }


def _part_json(part: Part) -> dict[str, Any]:
    return {
        "path": part.path,
        "declared_type": part.declared_type,
        "filename": part.filename,
        "detected_type": part.detected_type,
        "description": part.description,
        "size": part.size,
        "digest": part.digest,
        "depth": part.depth,
        "container": part.container,
        "unchecked": part.unchecked,
    }


def verdict_text(path: str, verdict: Verdict) -> str:
    lines = [f"{path}: {verdict.log_text()}"]
    for finding in verdict.findings:
        minor = f"-{finding.minor}" if finding.minor else ""
        lines.append(f"  {finding.category.value}{minor}: {finding.detail}")
    lines.append("  parts:")
    for part in verdict.parts:
        indent = "    " + "  " * part.depth
        name = f" {part.filename!r}" if part.filename else ""
        declared = part.declared_type or "-"
        detected = part.detected_type or "?"
        note = f" [{part.unchecked}]" if part.unchecked else ""
        lines.append(f"{indent}{part.path}  {declared}{name}  {detected}  {part.size} B{note}")
    return "\n".join(lines) + "\n"
