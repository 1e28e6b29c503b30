"""bench/worker_pages.py's two readings: which pages a forked process made its own, and which kind of
object the parent has on each page."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

from bench.page_parent import PAGE, write_map
from bench.worker_pages import private_pages


def test_only_the_pages_a_forked_child_wrote_become_its_own() -> None:
    buffer = bytearray(64 * PAGE)
    start = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
    first = -(-start // PAGE)  # the first whole page of the buffer
    for page in range(first, first + 60):
        buffer[page * PAGE - start] = 1  # resident in the parent before the fork
    written_r, written_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for page in range(first, first + 8):
            buffer[page * PAGE - start] = 2
        os.write(written_w, b"w")
        os.read(done_r, 1)
        os._exit(0)
    try:
        os.read(written_r, 1)
        own = private_pages(pid)
    finally:
        os.write(done_w, b"d")
        os.waitpid(pid, 0)
    assert all(page in own for page in range(first, first + 8))
    assert not any(page in own for page in range(first + 8, first + 60))


def test_the_map_puts_a_functions_code_on_its_page(tmp_path: Path) -> None:
    def marked() -> int:
        return 1

    write_map(str(tmp_path / "map"))
    with (tmp_path / "map").open() as saved:
        pages = json.load(saved)
    code = marked.__code__
    assert pages[str(id(code) // PAGE)].get("code", 0) > 0
    assert pages[str(id(marked) // PAGE)].get("function", 0) > 0
