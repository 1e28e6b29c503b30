"""Fuzz entry point for the X-Qsift-Client field codec.

    pip install -e '.[fuzz]' && python -m tests.fuzz client_context [corpus_dir]

The input is read three ways: as a header section for find_fields, whose offsets must hold; as field
values for verify, which must never raise; and, split at NUL bytes, as a client context (ip, host, auth
user, sender, recipients) that must make one short ASCII line and come back through find_fields and
verify, for its own envelope only. Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.wire import client_context
from qsift.wire.client_context import ClientContext

KEY = b"fuzz-key-" * 4
NOW = 1_764_000_000
_NAME = client_context.FIELD.lower().encode("ascii")


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    for _, _, value in _check_find_fields(data):
        _check_verify(value)
    _check_verify(data.decode("latin-1"))
    _check_verify(data.decode("utf-8", "surrogateescape"))
    _check_round_trip(data)


def _check_find_fields(header: bytes) -> list[tuple[int, int, str]]:
    found = client_context.find_fields(header)
    previous_end = 0
    for start, end, value in found:
        assert previous_end <= start < end <= len(header), (start, end, previous_end)
        assert start == 0 or header[start - 1] == 0x0A
        assert header[start : start + len(_NAME)].lower() == _NAME
        assert value == value.strip(" \t")
        previous_end = end
    return found


def _check_verify(value: str) -> None:
    result = client_context.verify(KEY, value, b"s@example.org", [b"r@example.net"], NOW)
    assert result is None or isinstance(result, ClientContext)


def _check_round_trip(data: bytes) -> None:
    parts = [part.decode("utf-8", "surrogateescape") for part in data.split(b"\0")]
    parts += [""] * (3 - len(parts))
    relay = bool(data[:1]) and data[0] % 2 == 1
    context = ClientContext(ip=parts[0], host=parts[1], relay_client=relay, auth_user=parts[2])
    envelope = data.split(b"\0")[3:]
    sender, recipients = (envelope[0], envelope[1:]) if envelope else (b"", [])
    field = client_context.make_field(KEY, context, sender, recipients, NOW)
    assert len(field) < 998
    assert field.isascii()
    assert field.endswith(b"\n")
    assert field.count(b"\n") == 1
    assert b"\r" not in field
    found = _check_find_fields(field + b"Subject: s\n\n" + data)
    assert found[0][:2] == (0, len(field))
    back = client_context.verify(KEY, found[0][2], sender, recipients, NOW)
    assert back is not None
    assert back.relay_client == relay
    assert client_context.make_field(KEY, back, sender, recipients, NOW) == field
    assert client_context.verify(KEY, found[0][2], sender, [*recipients, b"x"], NOW) is None
