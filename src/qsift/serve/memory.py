"""What the parent does for its workers' memory before it forks them (measured in docs/benchmarks.md).

A worker that took 100 messages of the attachment mix had grown from 28 to 106 MiB RSS; after 10,000,
to 163-183 MiB. Three causes, and what is done about each here:

- glibc gives every thread that allocates an arena of its own, and an arena keeps what was freed in
  it: the six threads of asyncio's default pool (decoding, hashing, the outcome record) held 11-16 MiB
  each. The arenas are capped, and blocks of `_MMAP_THRESHOLD` and more always get a mapping of their
  own, which goes back to the system when freed (by default glibc raises that threshold to the largest
  block freed so far, up to 32 MiB, so after one 10 MB attachment every buffer below it stays in the
  arenas for good).
- libmagic's database, mapped once per handle (decode/filetype.py now keeps one per process), is
  loaded here, so the workers share the handle rather than each loading its own; the regular
  expressions common parts reach are compiled here too, which libmagic keeps with the handle.
- Objects the parent made (modules, the configuration) are moved out of the collector's reach: a
  worker's full collections otherwise write to every one of them and unshare the pages they sit on,
  which showed as a slow climb of the workers' PSS between 1,000 and 10,000 messages.

Tried and left out, as they changed nothing measurable (docs/benchmarks.md): one arena instead of two,
`malloc_trim(0)` after 1,000 messages (1 MiB back), and warming OpenSSL's digests in the parent.

The settings are inherited through fork, so the parent makes them once for every worker it starts.
"""

from __future__ import annotations

import ctypes
import gc
import platform

from qsift.decode.filetype import load_database

# mallopt(3) parameters, from glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Arenas for a whole worker: its threads mostly wait on the GIL or on I/O, so they seldom contend for one.
_ARENA_MAX = 2
#: Blocks from this size up are mapped on their own and unmapped when freed: message buffers, decoded
#: attachments. glibc's initial threshold, kept fixed.
_MMAP_THRESHOLD = 128 * 1024


def prepare_workers() -> None:
    """Set up the allocator, load what the workers share, and freeze the parent's objects: call once in
    the parent, before the first fork."""
    _cap_allocator()
    load_database()
    gc.freeze()


def _cap_allocator() -> None:
    if platform.libc_ver()[0] != "glibc":
        return  # mallopt's parameters are glibc's; other C libraries keep their own defaults
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_ARENA_MAX, _ARENA_MAX)
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
