"""spamd's CPU per message by kind of message, and what sending it a slimmed copy changes.

    .venv/bin/python -m bench.spamd_cost                     # the bench pool, whole and slimmed
    .venv/bin/python -m bench.spamd_cost --corpus            # plus ../shared/corpus's spamassassin folder
    .venv/bin/python -m bench.spamd_cost --spamd-option=--max-conn-per-child=1   # spamd's own settings

One fresh spamd (tests/spamd_daemon.py, one child, so requests are served one at a time) is asked about
every message of bench/mail_mix.py's pool, EICAR included, one after the other: first the message whole,
then the copy qsift's spamd client sends (wire/slim_mail.py), interleaved message by message so load
from other work on the machine falls on both alike. CPU is user + system time of spamd's process tree
from /proc (ticks of 10 ms: the figures are sums over many messages, divided). Reported per kind of
message: count, bytes sent, CPU per message each way, how many scores changed and by how much, how many
lists of rules hit changed, and whether any score crossed 5.0 or qsift's default levels.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from tests.spamd_daemon import running_spamd

from bench.mail_mix import CORPUS, message_pool
from qsift.checks.spam import SpamdScanner
from qsift.checks.spam_levels import SpamLevels

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(parent: int) -> float:
    """CPU seconds of `parent`, its reaped children and its live children."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == parent:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == parent:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def kind(name: str, size: int) -> str:
    if not name.startswith("generated/"):
        return name.split("/")[0]
    for bound, label in ((50_000, "< 50 kB"), (200_000, "50-200 kB"), (409_600, "200-400 kB")):
        if size < bound:
            return f"generated {label}"
    return "generated >= 400 kB"


@dataclass
class Sent:
    kind: str
    size: int
    cpu: float
    score: float
    rules: tuple[str, ...]


async def ask(scanner: SpamdScanner, spamd_pid: int, message: bytes, name: str) -> Sent:
    started = tree_cpu(spamd_pid)
    result = await scanner.check(io.BytesIO(message), len(message))
    if result.error or result.score is None:
        raise RuntimeError(f"{name}: {result.error or result.skipped}")
    return Sent(
        kind(name, len(message)), len(message), tree_cpu(spamd_pid) - started, result.score, result.rules
    )


async def run(
    pool: list[tuple[str, bytes]], address: str, spamd_pid: int, sizes: int, *, cut_text: bool
) -> None:
    whole = SpamdScanner("whole", address, timeout=300, max_size=1 << 40, slim=False)
    slim = SpamdScanner(
        "slim", address, timeout=300, max_size=sizes, slim=True, cut_text_attachments=cut_text
    )
    rows: dict[str, list[tuple[Sent, Sent, int]]] = collections.defaultdict(list)
    levels = SpamLevels()
    crossings: list[str] = []
    for name, message in pool:
        before = await ask(whole, spamd_pid, message, name)
        sample = slim.sample(io.BytesIO(message), len(message))
        after = await ask(slim, spamd_pid, message, name)
        rows[before.kind].append((before, after, len(sample)))
        for label, level in (("5.0", 5.0), ("tag2", levels.tag2_level), ("kill", levels.kill_level)):
            if (before.score >= level) != (after.score >= level):
                crossings.append(f"{name}: {before.score} -> {after.score} crosses {label} {level}")
        if before.score != after.score or set(before.rules) != set(after.rules):
            print(
                f"  {name}: {before.score} -> {after.score}"
                f"  lost {sorted(set(before.rules) - set(after.rules))}"
                f"  gained {sorted(set(after.rules) - set(before.rules))}",
                flush=True,
            )
    print(
        f"\n{'kind':24} {'msgs':>5} {'kB whole':>9} {'kB sent':>8} {'ms whole':>9} {'ms slim':>8}"
        f" {'changed':>8} {'max |d|':>8} {'rules':>6}"
    )
    every = [row for kind_rows in rows.values() for row in kind_rows]
    for label, kind_rows in [*sorted(rows.items()), ("all", every)]:
        changes = [abs(b.score - a.score) for b, a, _ in kind_rows if b.score != a.score]
        rule_changes = sum(set(b.rules) != set(a.rules) for b, a, _ in kind_rows)
        print(
            f"{label:24} {len(kind_rows):5d}"
            f" {statistics.mean(b.size for b, _, _ in kind_rows) / 1000:9.1f}"
            f" {statistics.mean(s for _, _, s in kind_rows) / 1000:8.1f}"
            f" {1000 * statistics.mean(b.cpu for b, _, _ in kind_rows):9.1f}"
            f" {1000 * statistics.mean(a.cpu for _, a, _ in kind_rows):8.1f}"
            f" {len(changes):8d} {max(changes, default=0):8.2f} {rule_changes:6d}"
        )
    today = [b.cpu if b.size <= sizes else 0.0 for b, _, _ in every]
    print(f"all, whole but skipped over {sizes} bytes as before: {1000 * statistics.mean(today):.1f} ms")
    print("\n".join(["", "crossings:", *crossings]) if crossings else "\nno score crossed a level")


def corpus_extra() -> list[tuple[str, bytes]]:
    folder = CORPUS / "spamassassin"
    return [
        (f"spamassassin/{path.relative_to(folder)}", path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=0, help="only the first N of the pool (0: all)")
    parser.add_argument("--corpus", action="store_true", help="add ../shared/corpus/spamassassin")
    parser.add_argument("--max-size", type=int, default=400 * 1024, help="the slimmed copy's limit")
    parser.add_argument("--keep-text-attachments", action="store_true", help="cut_text_attachments = false")
    parser.add_argument("--spamd-option", action="append", default=[], help="passed to spamd as it is")
    args = parser.parse_args()
    pool = message_pool(eicar=True)
    if args.messages:
        pool = pool[: args.messages]
    if args.corpus:
        pool += corpus_extra()
    with running_spamd(max_children=1, options=tuple(args.spamd_option)) as spamd:
        pid = int((Path(spamd.socket_path).parent / "spamd.pid").read_text().split()[0])
        asyncio.run(
            run(pool, spamd.unix_address, pid, args.max_size, cut_text=not args.keep_text_attachments)
        )


if __name__ == "__main__":
    main()
