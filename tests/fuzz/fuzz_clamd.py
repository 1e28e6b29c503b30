"""Fuzz entry point for the clamd codec.

    pip install -e '.[fuzz]' && python -m tests.fuzz clamd [corpus_dir]

The first input byte chooses the chunk size, the second the parser's length limit; the rest is fed to
ReplyParser in chunks, and every reply, and the whole input as text, to parse_scan_reply. Only qsift's
ProtocolError may come out, the parser must hold no more than its limit, and a scan reply may be "ok"
only where clamd said OK. Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.errors import ProtocolError
from qsift.wire import clamd


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if len(data) < 2:
        return
    step = data[0] % 64 + 1
    limit = data[1] * 4 + 1
    body = data[2:]
    for reply in _fuzz_parser(body, step, limit):
        _check_scan_reply(reply.text)
        assert reply.request is None or reply.request > 0
    _check_scan_reply(body.decode("utf-8", errors="replace"))


def _fuzz_parser(body: bytes, step: int, limit: int) -> list[clamd.Reply]:
    parser = clamd.ReplyParser(max_length=limit)
    replies: list[clamd.Reply] = []
    try:
        for start in range(0, len(body), step):
            replies += parser.feed(body[start : start + step])
            assert parser.pending <= limit
    except ProtocolError:
        pass
    assert all("\0" not in r.text for r in replies)
    return replies


def _check_scan_reply(text: str) -> None:
    reply = clamd.parse_scan_reply(text)
    assert reply.status in ("ok", "found", "error")
    lines = [line.strip() for line in text.replace("\0", "\n").split("\n") if line.strip()]
    if reply.status == "ok":
        assert lines and all(line.endswith(": OK") for line in lines), text
    elif reply.status == "found":
        assert reply.names and all(any(line.endswith(f" {n} FOUND") for line in lines) for n in reply.names)
    else:
        assert reply.message and not reply.names
