"""`qsift serve` as bench/worker_pages.py runs it: the real parent, which also writes, at the moment it
forks its first worker, which of its memory pages hold which kind of Python object.

    python -m bench.page_parent MAP_FILE serve --config FILE

It imports nothing of the bench's (only qsift and the standard library), so its memory is the parent's as
`qsift serve` has it. The map is made in a child forked at that moment (the same pages, the same
addresses), so that making it changes nothing in the parent the workers fork from. Objects the collector
tracks are listed with what they hold directly (a function's code, a code object's constants and names, a
dict's keys); integers, strings and bytes no container refers to are missed, and their pages count as
"not the parent's objects".
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import types
from collections.abc import Iterator

from qsift import cli
from qsift.serve import memory

PAGE = os.sysconf("SC_PAGE_SIZE")


def _held(thing: object) -> Iterator[object]:
    """What `thing` refers to that the collector does not list itself (code objects, names, constants),
    so that their pages are in the map too."""
    if isinstance(thing, types.FunctionType):
        code = thing.__code__
        yield code
        yield from code.co_consts
        yield from code.co_names
        yield from code.co_varnames
    elif isinstance(thing, dict):
        yield from list(thing)


def _kind(thing: object) -> str:
    return "code" if isinstance(thing, types.CodeType) else type(thing).__name__


def write_map(path: str) -> None:
    """{page number: {kind of object: bytes of it on the page}} for every object the parent holds, as JSON."""
    gc.unfreeze()  # the frozen objects are not listed otherwise; this is the child's copy
    pages: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    seen: set[int] = set()
    for tracked in gc.get_objects():
        for thing in (tracked, *_held(tracked)):
            if id(thing) in seen:
                continue
            seen.add(id(thing))
            start, end = id(thing), id(thing) + sys.getsizeof(thing)
            for page in range(start // PAGE, (end - 1) // PAGE + 1):
                lap = min(end, (page + 1) * PAGE) - max(start, page * PAGE)
                pages[page][_kind(thing)] += lap
    with open(path, "w") as out:
        json.dump({page: dict(kinds) for page, kinds in pages.items()}, out)


def main() -> int:
    map_path, argv = sys.argv[1], sys.argv[2:]
    prepare = memory.prepare_workers

    def prepare_and_map() -> None:
        prepare()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                write_map(map_path)
                code = 0
            finally:
                os._exit(code)
        os.waitpid(pid, 0)

    memory.prepare_workers = prepare_and_map
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
