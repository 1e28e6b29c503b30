"""What a worker's own memory holds: the private pages of each `qsift serve` worker after the attachment
mix, sorted by what is on them.

    .venv/bin/python -m bench.worker_pages --workers 4 --messages 400

A worker is forked from the parent and starts with every page shared with it; a page becomes the
worker's own (private) when the worker writes to it. PSS counts a private page whole and a shared page
split among the processes that map it, so the private pages are what a worker adds. They are of two
sorts:

- pages of the parent's Python objects that the worker wrote to. CPython 3.11 writes to every object it
  uses: the reference count of each code object it runs, function it calls, type and name string it
  looks up, and its specialising interpreter rewrites the bytecode of the functions it runs. The parent
  (bench/page_parent.py) writes a map of which page holds which kind of object when it forks; each page
  the worker owns is put under the kind that fills most of it.
- pages the worker allocated itself (its messages' buffers, libmagic's and SQLite's working memory, the
  objects it made), and those of the parent's that hold nothing the map lists (strings and numbers
  only a C structure refers to, malloc's own bookkeeping).

Pages are read from /proc/PID/pagemap (present and mapped by this process alone), so the bench must run
as root. Every destiny pass, no scanner, the same sink and mix as bench/memory.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.amavisd.procs import smaps_rollup
from bench.mail_mix import message_pool, stamped
from bench.workers import ALL_PASS, SETTLE, SOAK_BATCH, mib, running_qsift, running_sink, send_all

PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
#: The kinds of object shown on a line of their own; the rest are summed as "other objects".
_SHOWN = ("code", "str", "function", "type", "tuple", "dict")


@dataclass
class Pages:
    """One worker's private memory, in pages."""

    pss: int = 0
    private: int = 0
    #: Private pages of the parent's objects, by the kind that fills most of the page.
    parents: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Other private pages of the anonymous mappings, by mapping: "[heap]" (malloc's main heap) or "anon".
    own: collections.Counter[str] = field(default_factory=collections.Counter)


def private_pages(pid: int) -> dict[int, str]:
    """{page number: "[heap]" or "anon"} for the present pages of `pid`'s writable anonymous mappings
    that no other process maps."""
    found: dict[int, str] = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            match = _MAPPING.match(line.rstrip("\n"))
            if match is None or "w" not in match.group(3) or match.group(4) not in ("", "[heap]"):
                continue
            first, last = int(match.group(1), 16) // PAGE, int(match.group(2), 16) // PAGE
            pagemap.seek(first * 8)
            entries = pagemap.read((last - first) * 8)
            for index, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
                if entry & _PRESENT and entry & _EXCLUSIVE:
                    found[first + index] = match.group(4) or "anon"
    return found


def sort_pages(pid: int, parent_map: dict[int, dict[str, int]]) -> Pages:
    values = smaps_rollup(pid)
    pages = Pages(pss=values["Pss"], private=values["Private_Dirty"])
    for page, mapping in private_pages(pid).items():
        kinds = parent_map.get(page)
        if kinds:
            pages.parents[max(kinds, key=kinds.__getitem__)] += 1
        else:
            pages.own[mapping] += 1
    return pages


def measure(
    home: Path, pool: list[tuple[str, bytes]], workers: int, count: int, concurrency: int
) -> tuple[list[Pages], int]:
    """Each worker's pages, and how many pages the parent's objects lie on."""
    map_path = home / "parent-pages.json"
    command = (sys.executable, "-m", "bench.page_parent", str(map_path))
    refused: list[str] = []
    with (
        running_sink() as sink,
        running_qsift(
            home / "q", workers=workers, sink_port=sink.port, sections=ALL_PASS, command=command
        ) as server,
    ):
        pids = server.worker_pids()
        for start in range(0, count, SOAK_BATCH):
            batch = stamped(pool, min(SOAK_BATCH, count - start), "pages", start)
            refused += asyncio.run(send_all(server.port, batch, concurrency))[2]
        time.sleep(SETTLE)
        if server.worker_pids() != pids:
            raise SystemExit(f"workers {pids} became {server.worker_pids()}: not a valid run")
        with map_path.open() as saved:
            parent_map = {int(page): kinds for page, kinds in json.load(saved).items()}
        found = [sort_pages(pid, parent_map) for pid in pids]
    if refused or sink.count != count:
        raise SystemExit(f"not a valid run: {len(refused)} refused, {sink.count} of {count} at the sink")
    return found, len(parent_map)


def report(workers: int, count: int, found: list[Pages], parent_pages: int) -> None:
    def per_worker(pages: float) -> str:
        return f"{pages * PAGE / len(found) / 2**20:.1f}"

    parents = sum((p.parents for p in found), collections.Counter[str]())
    own = sum((p.own for p in found), collections.Counter[str]())
    print(f"\nworkers = {workers}, {count} messages: MiB per worker (mean of {len(found)})")
    print("| | MiB |\n|---|---|")
    print(f"| PSS | {mib(sum(p.pss for p in found) / len(found))} |")
    print(
        f"| private, all mappings (smaps Private_Dirty) | {mib(sum(p.private for p in found) / len(found))} |"
    )
    print(f"| private pages of the parent's objects | {per_worker(sum(parents.values()))} |")
    for kind in _SHOWN:
        print(f"| … mostly {kind} | {per_worker(parents[kind])} |")
    print(f"| … other objects | {per_worker(sum(n for k, n in parents.items() if k not in _SHOWN))} |")
    print(f"| other private pages, malloc's main heap | {per_worker(own['[heap]'])} |")
    print(f"| other private pages, other anonymous memory | {per_worker(own['anon'])} |")
    print(
        f"The parent's objects lie on {parent_pages} pages ({mib(parent_pages * PAGE)} MiB);"
        f" a worker made {sum(parents.values()) / len(found):.0f} of them its own."
    )
    top = ", ".join(f"{kind} {per_worker(n)}" for kind, n in parents.most_common(12) if kind not in _SHOWN)
    print(f"Other objects' pages, the largest kinds: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[4])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: other processes' page maps are root's to read")
    pool = message_pool()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(pool)} messages in the pool", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="qsift-pages-"))
    try:
        for workers in args.workers:
            found, parent_pages = measure(
                workdir / f"w{workers}", pool, workers, args.messages, args.concurrency
            )
            report(workers, args.messages, found, parent_pages)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
