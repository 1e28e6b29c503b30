"""Process-tree figures from /proc: resident memory and CPU time of a daemon and all its descendants."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; everything after the last ")" is numeric.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def children(parent: int) -> list[int]:
    """The live processes whose parent is `parent`: a prefork daemon's workers."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry))
    return found


def rss_bytes(root: int) -> int:
    """Sum of the tree's resident set sizes (shared pages count once per process, as `ps` shows them)."""
    total = 0
    for pid in tree(root):
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * _PAGE
    return total


def smaps_rollup(pid: int) -> dict[str, int]:
    """The sums of /proc/PID/smaps_rollup (Rss, Pss, Private_Dirty, ...), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:  # the first names the range
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values


def pss_bytes(root: int) -> int:
    """Sum of the tree's proportional set sizes: shared (copy-on-write) pages split between sharers."""
    total = 0
    for pid in tree(root):
        try:
            total += smaps_rollup(pid).get("Pss", 0)  # a zombie has no mappings to sum
        except OSError:
            continue
    return total


def cpu_seconds(root: int) -> float:
    """User + system time of the live tree, plus what its members' reaped children used."""
    ticks = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat; here indices 11-14.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICKS
