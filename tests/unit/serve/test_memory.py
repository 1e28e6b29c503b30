"""What the parent prepares for its workers' memory, checked in a process of its own (the settings are
process-wide: the test run's own process must not get them)."""

from __future__ import annotations

import subprocess
import sys

# A forked child detecting types from several threads at once: it must not map libmagic's database again
# (each mapping counts in the RSS), and the parent's objects must be out of the collector's reach.
CHILD = """
import gc, os, threading
from qsift.serve.memory import prepare_workers
from qsift.decode.filetype import detect

def mappings():
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith("magic.mgc"))

prepare_workers()
loaded = mappings()
assert loaded >= 1, loaded
assert gc.get_freeze_count() > 0
pid = os.fork()
if pid == 0:
    answers, detected, done = [], threading.Barrier(7), threading.Event()

    def detect_and_stay():  # a pool thread lives on, and so would a handle of its own
        answers.append(detect(b"%PDF-1.4\\n")[0])
        detected.wait()
        done.wait()

    threads = [threading.Thread(target=detect_and_stay) for _ in range(6)]
    for thread in threads:
        thread.start()
    detected.wait()
    mapped = mappings()
    done.set()
    for thread in threads:
        thread.join()
    os._exit(0 if answers == ["pdf"] * 6 and mapped == loaded else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child mapped libmagic again or detected wrongly"
"""


def test_workers_share_the_parents_libmagic_handle_and_frozen_objects() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
