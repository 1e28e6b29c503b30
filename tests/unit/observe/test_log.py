"""The log's writer thread: what a worker logged just before os._exit() must still be written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_a_record_logged_right_before_os_exit_is_written() -> None:
    # os._exit() skips atexit, so without log.flush() the writer thread dies with the record queued.
    program = textwrap.dedent(
        """
        import os
        from qsift.observe import log
        log.setup(1)
        log.logger.error("worker 0: the last words")
        log.flush()
        os._exit(70)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 70
    assert "worker 0: the last words" in run.stderr, run.stderr
