"""Fuzz entry point for the decoder: the streaming MIME reader, the containers, the bounds.

    pip install -e '.[fuzz]' && python -m tests.fuzz decode [corpus_dir]

Any bytes are a message. Nothing may raise, every part has a path, and the bounds hold: no more parts
than allowed, no deeper than allowed. Importable without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.decode.walk import DecodeLimits, decode_message

_LIMITS = DecodeLimits(max_depth=4, max_parts=40, max_total_bytes=1 << 20, time_limit=5, seven_zip=False)


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    decoded = decode_message(data, _LIMITS)
    assert len(decoded.parts) <= _LIMITS.max_parts
    assert all(part.path and part.depth <= _LIMITS.max_depth for part in decoded.parts)
