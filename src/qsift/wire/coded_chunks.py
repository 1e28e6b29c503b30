"""A message streamed through an incremental coder: each chunk fed in, what the coder held back at the end.

The coders here (the DATA and LF encoders, the long-line fitter) take bytes in any chunking and may keep a
few back (a trailing CR, an unfinished line) until the next chunk or the end shows what they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


def coded_chunks(
    chunks: Iterable[bytes], feed: Callable[[bytes], bytes], finish: Callable[[], bytes]
) -> Iterator[bytes]:
    """What `feed` makes of each chunk, then what `finish` hands back; empty pieces are not yielded."""
    for chunk in chunks:
        coded = feed(chunk)
        if coded:
            yield coded
    tail = finish()
    if tail:
        yield tail
