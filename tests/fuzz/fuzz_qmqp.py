"""Fuzz entry point for the QMQP and netstring codecs.

    pip install -e '.[fuzz]' && python -m tests.fuzz qmqp [corpus_dir]

The first two input bytes choose the chunk size and the limits; the rest is fed to RequestParser in
chunks, to ResponseParser and to netstring.decode. Only qsift's ProtocolError may come out, and the
events must keep every promise the parser makes. Importable without atheris, so tests can run it.
"""

from __future__ import annotations

import contextlib

from qsift.errors import ClientError, ProtocolError
from qsift.wire import netstring, qmqp


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if len(data) < 2:
        return
    step = data[0] % 64 + 1
    limit = data[1]
    body = data[2:]
    _fuzz_request(body, step, max_message=limit * 4, max_recipients=limit % 8 + 1, max_address=limit % 32 + 1)
    _fuzz_response(body, step)
    with contextlib.suppress(ProtocolError):
        netstring.decode(body, max_length=limit * 4)


def _fuzz_request(body: bytes, step: int, *, max_message: int, max_recipients: int, max_address: int) -> None:
    parser = qmqp.RequestParser(
        max_message_size=max_message, max_recipients=max_recipients, max_address_length=max_address
    )
    events: list[qmqp.Event] = []
    try:
        for start in range(0, len(body), step):
            parser.receive_data(body[start : start + step])
            # Each event consumes a byte or ends the request, so this bound is never reached.
            for _ in range(step + 8):
                event = parser.next_event()
                if isinstance(event, qmqp.NeedData):
                    break
                events.append(event)
            else:
                raise AssertionError("parser produced events without consuming bytes")
    except ProtocolError:
        pass
    _check(events, max_message, max_recipients, max_address)


def _check(events: list[qmqp.Event], max_message: int, max_recipients: int, max_address: int) -> None:
    finals = [i for i, e in enumerate(events) if isinstance(e, qmqp.RequestEnd | qmqp.RequestRejected)]
    assert finals in ([], [len(events) - 1]), events
    body = sum(len(e.data) for e in events if isinstance(e, qmqp.MessageChunk))
    assert body <= max_message
    ends = [e.size for e in events if isinstance(e, qmqp.MessageEnd)]
    assert ends in ([], [body])
    addresses = [e.address for e in events if isinstance(e, qmqp.Sender | qmqp.Recipient)]
    assert all(len(a) <= max_address and not any(c in a for c in b"\0\r\n") for a in addresses)
    assert sum(isinstance(e, qmqp.Recipient) for e in events) <= max_recipients
    if finals and isinstance(events[-1], qmqp.RequestEnd):
        assert ends
        assert any(isinstance(e, qmqp.Recipient) for e in events)
    if finals and isinstance(events[-1], qmqp.RequestRejected):
        assert isinstance(events[-1].error, ClientError)


def _fuzz_response(body: bytes, step: int) -> None:
    parser = qmqp.ResponseParser(max_length=1024)
    try:
        for start in range(0, len(body), step):
            result = parser.feed(body[start : start + step])
            if result is not None:
                assert result[0] in "KZD"
    except ProtocolError:
        pass
