"""Fuzz entry point for the AM.PDP request reader.

    pip install -e '.[fuzz]' && python -m tests.fuzz ampdp [corpus_dir]

The first two input bytes choose the chunk size and the limits; the rest is fed to RequestReader in
chunks, taking every request as it completes. Only AmpdpError may come out, and every request must keep
the reader's promises: at least one attribute, no more than the limit, and what it holds bounded.
Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.wire.ampdp import AmpdpError, RequestReader, encode_attributes


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if len(data) < 2:
        return
    step = data[0] % 64 + 1
    max_line = data[1] * 4 + 4
    max_attributes = data[1] % 16 + 1
    body = data[2:]
    reader = RequestReader(max_line=max_line, max_attributes=max_attributes)
    try:
        for start in range(0, len(body), step):
            reader.feed(body[start : start + step])
            while (request := reader.next_request()) is not None:
                pairs = [(name, value) for name, values in request.attributes.items() for value in values]
                assert 0 < len(pairs) <= max_attributes
                # What was read, written again, reads back the same.
                again = RequestReader(max_line=1 << 20)
                again.feed(encode_attributes(pairs))
                assert again.next_request() == request
    except AmpdpError:
        return
