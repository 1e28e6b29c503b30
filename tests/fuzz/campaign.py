"""Run every fuzz entry for a bounded time, seeded, and print what each reached (`make fuzz`).

    python -m tests.fuzz.campaign [--seconds 60] [--messages ../shared/corpus] [--work .fuzz] [ENTRY ...]

Each entry runs in its own process (libFuzzer exits at the first crash) under `python -m tests.fuzz`,
with two corpus directories: WORK/ENTRY/corpus, which libFuzzer grows and which is kept between runs,
and WORK/ENTRY/seeds, rebuilt each run from tests/fuzz/seeds.py (and, for the decoder, the messages of
--messages that fit its input length). A crash, a hang past --hang-seconds or running out of memory
leaves its input in WORK/ENTRY/ and makes the exit status 1; the log of each run is WORK/ENTRY/log.
Then the corpus and seeds are replayed under coverage.py (tests/fuzz/replay.py) for the share of the
entry's own modules' lines and branches they reach, a figure libFuzzer's cov/ft counts do not give.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.fuzz import seeds

ROOT = Path(__file__).resolve().parents[2]
# The longest input each entry is given: the decoder reads whole messages, the line fitter lines over
# 998 octets, the codecs sessions.
MAX_LEN = dict.fromkeys(seeds.COMMITTED, 4096) | {"decode": 64 * 1024, "long_lines": 16 * 1024}
# The modules each entry is there to exercise: the coverage column is theirs (lines and branches).
TARGETS = {
    "ampdp": ["wire/ampdp.py"],
    "clamd": ["wire/clamd.py"],
    "client_context": ["wire/client_context.py"],
    "decode": ["decode/*.py"],
    "long_lines": ["wire/long_lines.py"],
    "qmqp": ["wire/qmqp.py", "wire/netstring.py"],
    "smtp_client": ["wire/smtp_client.py"],
    "smtp_server": ["wire/smtp_server*.py", "wire/smtp_args.py"],
    "spamd": ["wire/spamd.py"],
}
# libFuzzer's progress lines: "#4096 pulse cov: 158 ft: 612 corp: 137/3638b lim: 1170 exec/s: ...".
_PROGRESS = re.compile(rb"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\d+[KMG]?b)", re.MULTILINE)
_EXECUTED = re.compile(rb"^stat::number_of_executed_units: (\d+)", re.MULTILINE)
_ARTIFACT = re.compile(rb"Test unit written to (\S+)")


@dataclass(frozen=True)
class Figures:
    entry: str
    seeds: int
    seconds: int
    executions: int
    coverage: int
    features: int
    corpus_units: int
    corpus_size: str
    found: str
    #: Line and branch coverage of the entry's TARGETS by its corpus and seeds, as coverage.py reports it.
    target_coverage: str = "-"

    def row(self) -> str:
        rate = self.executions // max(self.seconds, 1)
        return (
            f"| {self.entry} | {self.seeds} | {self.seconds} | {self.executions:,} | {rate:,} | "
            f"{self.coverage} | {self.features} | {self.corpus_units} ({self.corpus_size}) | "
            f"{self.target_coverage} | {self.found} |"
        )


HEADER = (
    "| entry | seeds | seconds | executions | exec/s | cov | ft | corpus (units, size) "
    "| target lines+branches | found |\n|---|---|---|---|---|---|---|---|---|---|"
)


def run_entry(entry: str, *, work: Path, seconds: int, hang_seconds: int, messages: Path | None) -> Figures:
    directory = work / entry
    corpus, seed_dir = directory / "corpus", directory / "seeds"
    corpus.mkdir(parents=True, exist_ok=True)
    for old in seed_dir.glob("*"):
        old.unlink()
    count = seeds.write(seeds.seeds(entry), seed_dir)
    if entry == "decode" and messages is not None and messages.is_dir():
        count += seeds.write(seeds.corpus_messages(messages, MAX_LEN[entry]), seed_dir)
    command = [
        sys.executable,
        "-m",
        "tests.fuzz",
        entry,
        f"-max_total_time={seconds}",
        f"-timeout={hang_seconds}",
        f"-max_len={MAX_LEN[entry]}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={directory}/",
        str(corpus),
        str(seed_dir),
    ]
    # Loading the seeds takes part of the time; the margin only catches a run that does not stop.
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=seconds + 600, check=False)
        log, found = done.stdout + done.stderr, b""
    except subprocess.TimeoutExpired as stuck:
        log, found = (stuck.stdout or b"") + (stuck.stderr or b""), b"did not stop"
    (directory / "log").write_bytes(log)
    # Wall time, seeds loading included, and short of --seconds when a finding stopped the run.
    figures = _figures(entry, count, round(time.monotonic() - started), log, found)
    return replace(figures, target_coverage=target_coverage(entry, directory, [corpus, seed_dir]))


def target_coverage(entry: str, directory: Path, inputs: list[Path]) -> str:
    """Replay the inputs under coverage.py (no atheris there), and total the entry's TARGETS."""
    data = directory / "coverage.data"
    data.unlink(missing_ok=True)
    coverage = [sys.executable, "-m", "coverage"]
    run = [*coverage, "run", "--branch", f"--data-file={data}", "--source=qsift"]
    replay = [*run, "-m", "tests.fuzz.replay"]
    ran = subprocess.run([*replay, entry, *map(str, inputs)], cwd=ROOT, capture_output=True, check=False)
    if ran.returncode != 0:
        return "replay failed"
    include = ",".join(str(ROOT / "src" / "qsift" / target) for target in TARGETS[entry])
    report = [*coverage, "report", f"--data-file={data}", f"--include={include}", "--format=total"]
    total = subprocess.run(report, cwd=ROOT, capture_output=True, check=False, text=True)
    return f"{total.stdout.strip()} %" if total.returncode == 0 else "-"


def _figures(entry: str, count: int, seconds: int, log: bytes, found: bytes) -> Figures:
    progress = _PROGRESS.findall(log)
    last = progress[-1] if progress else (b"0", b"0", b"0", b"0", b"0b")
    executed = _EXECUTED.findall(log)
    artifacts = _ARTIFACT.findall(log)
    if artifacts:
        found = b", ".join(artifacts)
    return Figures(
        entry=entry,
        seeds=count,
        seconds=seconds,
        executions=int(executed[-1] if executed else last[0]),
        coverage=int(last[1]),
        features=int(last[2]),
        corpus_units=int(last[3]),
        corpus_size=last[4].decode(),
        found=found.decode(errors="replace") or "nothing",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.campaign", description=__doc__.split("\n")[0])
    parser.add_argument("entries", nargs="*", metavar="ENTRY", help=f"of {', '.join(seeds.COMMITTED)}")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per entry")
    parser.add_argument("--hang-seconds", type=int, default=10, help="one input taking longer is a hang")
    parser.add_argument("--messages", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--work", type=Path, default=ROOT / ".fuzz")
    options = parser.parse_args(argv)
    unknown = sorted(set(options.entries) - set(seeds.COMMITTED))
    if unknown:
        parser.error(f"no such entry: {', '.join(unknown)}")
    print(HEADER, flush=True)
    anything_found = False
    for entry in options.entries or seeds.COMMITTED:
        figures = run_entry(
            entry,
            work=options.work.resolve(),
            seconds=options.seconds,
            hang_seconds=options.hang_seconds,
            messages=options.messages,
        )
        print(figures.row(), flush=True)
        anything_found |= figures.found != "nothing"
    return 1 if anything_found else 0


if __name__ == "__main__":
    sys.exit(main())
