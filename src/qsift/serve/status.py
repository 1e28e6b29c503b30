"""What each worker is doing, for `qsift status` and SIGUSR1: amavisd-nanny's view, in files.

On SIGUSR1 (the parent passes it on) every worker writes `<state_dir>/status/worker-<n>.json`: its pid,
messages handled, memory, and each session in progress (listener, peer, for how long). Files, not a
shared database: each worker writes only its own, atomically (write, fsync-free rename), so a reader
never sees half of one and a dead worker cannot corrupt anyone else's.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class SessionInfo:
    listener: str
    peer: str
    started: float


def status_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "status")


def write_status(directory: str, index: int, handled: int, sessions: list[SessionInfo]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = time.time()
    report = {
        "worker": index,
        "pid": os.getpid(),
        "written": now,
        "messages": handled,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "sessions": [{**asdict(s), "seconds": round(now - s.started, 1)} for s in sessions],
    }
    path = os.path.join(directory, f"worker-{index}.json")
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    os.replace(temporary, path)


def read_status(directory: str, since: float = 0.0) -> list[dict[str, object]]:
    """The workers' reports written at or after `since`, by worker number."""
    reports = []
    for path in sorted(Path(directory).glob("worker-*.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and float(report.get("written", 0)) >= since:
            reports.append(report)
    return sorted(reports, key=lambda r: int(r.get("worker", 0)))


def render(reports: list[dict[str, object]]) -> str:
    """One line per worker, one indented line per session in progress."""
    if not reports:
        return "no worker answered (is qsift running, and is this its state_dir?)\n"
    lines = []
    for report in reports:
        sessions = report.get("sessions")
        assert isinstance(sessions, list)
        state = f"{len(sessions)} in progress" if sessions else "idle"
        lines.append(
            f"worker {report['worker']} pid {report['pid']}: {state}, {report['messages']} messages, "
            f"max RSS {report['max_rss_kib']} KiB"
        )
        for session in sessions:
            lines.append(f"    {session['listener']} [{session['peer']}] for {session['seconds']} s")
    return "\n".join(lines) + "\n"
