"""Run one fuzz entry under atheris, with qsift's code instrumented so libFuzzer can follow coverage.

    pip install -e '.[fuzz]' && python -m tests.fuzz qmqp [libFuzzer options] [corpus_dir ...]

ENTRY names tests/fuzz/fuzz_ENTRY.py. `make fuzz` runs every entry for a bounded time with seeds
(tests/fuzz/campaign.py); this is the way to run one by hand, e.g. to replay a crash file.
"""

from __future__ import annotations

import importlib
import sys

# Only what is imported inside atheris.instrument_imports() gets the coverage probes, so qsift must not
# be imported before it: an entry run as a script has already imported qsift when its own code runs, and
# ran blind (libFuzzer: "no interesting inputs were found", corp: 1/1b after millions of runs).
INSTRUMENTED = ["qsift"]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit(f"usage: python -m tests.fuzz ENTRY [libFuzzer options] [corpus_dir ...]\n{__doc__}")
    loaded = [name for name in INSTRUMENTED if name in sys.modules]
    if loaded:
        sys.exit(f"{', '.join(loaded)} imported before instrumentation: the fuzzer would run blind")
    atheris = importlib.import_module("atheris")
    with atheris.instrument_imports(include=INSTRUMENTED):
        entry = importlib.import_module(f"tests.fuzz.fuzz_{argv[1]}")
    atheris.Setup([argv[0], *argv[2:]], entry.TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
