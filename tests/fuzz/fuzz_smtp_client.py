"""Fuzz entry point for the SMTP/LMTP client codec.

    pip install -e '.[fuzz]' && python -m tests.fuzz smtp_client [corpus_dir]

The first two input bytes choose the chunk size and the limits; the rest is fed to ReplyParser in
chunks, and every reply that comes out is read as an EHLO reply. The same bytes, cut into an address and
parameters, go through the command builders, which may refuse them but must never produce more than one
command line. Only qsift's ProtocolError (from the parser) and ValueError or UnsupportedByServer (from
the builders) may come out. Importable without atheris, so tests can run it.
"""

from __future__ import annotations

import contextlib

from qsift.errors import ProtocolError
from qsift.model import Params
from qsift.wire import smtp_client
from qsift.wire.smtp_client import Capabilities


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if len(data) < 2:
        return
    step = data[0] % 64 + 1
    limit = data[1]
    body = data[2:]
    caps = _fuzz_replies(body, step, max_line_length=limit % 64 + 3, max_lines=limit % 8 + 1)
    _fuzz_commands(body, caps)


def _fuzz_replies(body: bytes, step: int, *, max_line_length: int, max_lines: int) -> list[Capabilities]:
    parser = smtp_client.ReplyParser(max_line_length=max_line_length, max_lines=max_lines)
    caps: list[Capabilities] = []
    try:
        for start in range(0, len(body), step):
            parser.receive_data(body[start : start + step])
            assert parser.buffered <= max_line_length + 1 + step
            # Each reply consumes at least one line end, so this bound is never reached.
            for _ in range(step + 1):
                reply = parser.next_reply()
                if reply is None:
                    break
                assert 200 <= reply.code <= 599
                assert 1 <= len(reply.lines) <= max_lines
                assert all(len(line) <= max_line_length for line in reply.lines)
                caps.append(Capabilities.from_ehlo(reply))
            else:
                raise AssertionError("parser produced replies without consuming bytes")
            assert parser.buffered <= max_line_length + 1
    except ProtocolError:
        # Once broken, always broken.
        try:
            parser.next_reply()
        except ProtocolError:
            return caps
        raise AssertionError("parser recovered after a ProtocolError") from None
    return caps


def _fuzz_commands(body: bytes, parsed: list[Capabilities]) -> None:
    address, _, rest = body.partition(b" ")
    params = _params(rest)
    full = Capabilities(extended=True, size=0, eightbitmime=True, smtputf8=True, dsn=True)
    for caps in [Capabilities(), full, *parsed[:3]]:
        smtputf8 = smtp_client.needs_smtputf8(address, [address], params)
        with contextlib.suppress(ValueError, smtp_client.UnsupportedByServer):
            _check_line(smtp_client.mail_from(address, params, caps, size=len(body), smtputf8=smtputf8))
        with contextlib.suppress(ValueError):
            _check_line(smtp_client.rcpt_to(address, params, caps))
    with contextlib.suppress(ValueError):
        _check_line(smtp_client.hello(address.decode("utf-8", "surrogateescape"), lmtp=False))


def _params(raw: bytes) -> Params:
    result: list[tuple[str, str | None]] = []
    for word in raw.split(b" "):
        keyword, equals, value = word.decode("utf-8", "surrogateescape").partition("=")
        result.append((keyword.upper(), value if equals else None))
    return tuple(result)


def _check_line(line: bytes) -> None:
    """One command, nothing smuggled: a single CRLF at the end and one pair of angle brackets at most."""
    assert line.endswith(b"\r\n")
    command = line[:-2]
    assert not any(c in command for c in b"\r\n\0")
    assert command.count(b"<") <= 1
    assert command.count(b">") <= 1
