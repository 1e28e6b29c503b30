"""Fuzz entry point for the line fitter (wire/long_lines.py).

    pip install -e '.[fuzz]' && python -m tests.fuzz long_lines [corpus_dir]

The first input byte chooses the chunk size; the rest is a message, fitted in two passes as the forward
fits it. Nothing may come out but bytes; the result may not depend on the chunking; a message with no line
over 998 octets passes unchanged; and a message with one passes, after the fitting, with none left where
the fitter may change it (checked here for a message without MIME structure: the whole body is one part).
Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.wire.long_lines import MAX_LINE, LineFitter, LongLineFinder


def _fit(message: bytes, step: int, refit: frozenset[int] = frozenset()) -> tuple[bytes, set[int]]:
    fitter = LineFitter(refit)
    out = b"".join(fitter.feed(message[i : i + step]) for i in range(0, len(message), step))
    return out + fitter.finish(), fitter.long_parts


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if not data:
        return
    step = data[0] % 64 + 1
    message = data[1:]
    finder = LongLineFinder()
    for start in range(0, len(message), step):
        finder.update(message[start : start + step])
    whole, parts = _fit(message, len(message) or 1)
    chunked, chunked_parts = _fit(message, step)
    assert (whole, parts) == (chunked, chunked_parts)
    if not finder.found:
        assert whole == message
        return
    fitted, _ = _fit(message, step, frozenset(parts))
    assert fitted == _fit(message, len(message) or 1, frozenset(parts))[0]
    if parts == {0} and b"content-type" not in message.lower():
        assert all(len(line.removesuffix(b"\r")) <= MAX_LINE for line in fitted.split(b"\n"))
