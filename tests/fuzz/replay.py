"""Run saved fuzz inputs through an entry, without atheris: a crash file, or a corpus under coverage.

    python -m tests.fuzz.replay ENTRY PATH ...      (files, or directories of them)
    coverage run -m tests.fuzz.replay qmqp .fuzz/qmqp/corpus && coverage report

It stops at the first input that raises, with the traceback and the input's path, and exits 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


def inputs(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        yield from sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    entry = importlib.import_module(f"tests.fuzz.fuzz_{argv[1]}")
    count = 0
    for path in inputs(argv[2:]):
        try:
            entry.TestOneInput(path.read_bytes())
        except Exception:
            traceback.print_exc()
            print(f"{path}: raised", file=sys.stderr)
            return 1
        count += 1
    print(f"{count} input(s) passed fuzz_{argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
