"""amavisd-new's forms of a quarantined message's rows, without a database."""

from __future__ import annotations

import pytest

from qsift.store.amavisd_forms import (
    CHUNK_SIZE,
    envelope_fields,
    header_fields,
    maddr_domain,
    maddr_email,
    split_chunks,
)


@pytest.mark.parametrize(
    ("size", "lengths"),
    [(0, [0]), (1, [1]), (CHUNK_SIZE, [CHUNK_SIZE]), (2 * CHUNK_SIZE + 1, [CHUNK_SIZE, CHUNK_SIZE, 1])],
)
def test_chunks_are_16384_bytes_but_the_last(size: int, lengths: list[int]) -> None:
    text = bytes(n % 251 for n in range(size))
    chunks = list(split_chunks(text))
    assert [len(c) for c in chunks] == lengths
    assert b"".join(chunks) == text


def test_maddr_keys() -> None:
    assert maddr_email("User@Mail.Example.COM") == b"user@mail.example.com"
    assert maddr_email("") == b""
    assert maddr_email("j\udcf6rg@x.org") == b"j\xf6rg@x.org"
    assert maddr_domain(b"user@mail.example.com.") == "com.example.mail"
    assert maddr_domain(b"") == ""


def test_envelope_fields_as_amavisd_new_writes_them() -> None:
    assert envelope_fields("abc123DEF456", "", ["a@x.org", "b@x.org"]) == (
        b"X-Envelope-From: <>\n"
        b"X-Envelope-To: <a@x.org>,\n <b@x.org>\n"
        b"X-Envelope-To-Blocked: <a@x.org>,\n <b@x.org>\n"
        b"X-Quarantine-ID: <abc123DEF456>\n"
    )


def test_header_fields_unfolded_decoded_and_cut() -> None:
    head = b"From: =?utf-8?q?J=C3=B6rg?= <j@x.org>\nSubject: a\n  folded\nMessage-ID:  <id@x> \n\nbody"
    assert header_fields(head) == ("J\u00f6rg <j@x.org>", "a folded", "<id@x>")
    long = b"Subject: " + b"x" * 400 + b"\r\n\r\nbody"
    assert header_fields(long) == ("", "x" * 255, "")
    assert header_fields(b"Subject: \xff\x00bad\n\n") == ("", "\ufffdbad", "")
