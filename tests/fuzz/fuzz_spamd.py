"""Fuzz entry point for the spamd reply codec.

    pip install -e '.[fuzz]' && python -m tests.fuzz spamd [corpus_dir]

The first two input bytes choose the chunk size and the limits; the rest is fed to ResponseParser in
chunks, then finish() is called as at EOF, and a returned body goes through parse_symbols. Only qsift's
ProtocolError may come out, and a reply that parses must keep every promise the parser makes.
Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.errors import ProtocolError
from qsift.wire import spamd


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if len(data) < 2:
        return
    step = data[0] % 64 + 1
    max_head = data[1] * 2 + 1
    max_body = data[1] * 4
    body = data[2:]
    parser = spamd.ResponseParser(max_head=max_head, max_body=max_body)
    try:
        for start in range(0, len(body), step):
            parser.feed(body[start : start + step])
        reply = parser.finish()
    except ProtocolError:
        return
    _check(body, reply, max_head, max_body)
    try:
        names = spamd.parse_symbols(reply.body)
    except ProtocolError:
        return
    assert all(name and "," not in name and name.isascii() and name.isprintable() for name in names)


def _check(data: bytes, reply: spamd.SpamdResponse, max_head: int, max_body: int) -> None:
    assert data.startswith(b"SPAMD/")
    assert 0 <= reply.code <= 999
    assert len(reply.body) <= max_body
    assert data.endswith(reply.body)
    assert len(data) - len(reply.body) <= max_head
    assert (reply.is_spam is None) == (reply.score is None) == (reply.threshold is None)
    for number in (reply.score, reply.threshold):
        assert number is None or abs(number) < 1e13
    assert not any(c in reply.message for c in "\r\n\0")
