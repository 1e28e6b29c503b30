from __future__ import annotations

import os
from pathlib import Path

import pytest

from qsift.queue_client.custom_error import (
    INDIMAIL_CUSTOM_ERROR,
    convention_from_env,
    split_status,
    text_for_answer,
    write_text,
)
from qsift.queue_client.outcome import Fatal
from qsift.wire.qmail_queue import ExitCode


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"QSIFT_CUSTOM_ERROR": ""}, None),
        ({"QSIFT_CUSTOM_ERROR": "off"}, None),
        ({"QSIFT_CUSTOM_ERROR": " NotQmail "}, (6, 82)),
        ({"QSIFT_CUSTOM_ERROR": "simscan"}, (4, 82)),
        ({"QSIFT_CUSTOM_ERROR": "indimail"}, (2, INDIMAIL_CUSTOM_ERROR)),
        ({"QSIFT_CUSTOM_ERROR": "indimail", "ERROR_FD": "5"}, (5, 88)),
        ({"QSIFT_CUSTOM_ERROR": "indimail", "ERROR_FD": "-1"}, None),
    ],
)
def test_conventions(env: dict[str, str], expected: tuple[int, int] | None) -> None:
    convention = convention_from_env(env)
    assert (None if convention is None else (convention.fd, convention.exit_code)) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"QSIFT_CUSTOM_ERROR": "qmail"},
        {"QSIFT_CUSTOM_ERROR": "indimail", "ERROR_FD": "two"},
        {"QSIFT_CUSTOM_ERROR": "indimail", "ERROR_FD": "-2"},
    ],
)
def test_bad_settings_are_configuration_errors(env: dict[str, str]) -> None:
    with pytest.raises(Fatal) as caught:
        convention_from_env(env)
    assert caught.value.code == ExitCode.CONFIG_ERROR


@pytest.mark.parametrize(
    ("letter", "text", "expected"),
    [
        ("D", "554 5.7.0 rejected: VIRUS Eicar", ("5.7.0", "rejected: VIRUS Eicar")),
        ("D", "5.7.1 banned", ("5.7.1", "banned")),
        ("Z", "451 4.3.2 too busy, try later", ("4.3.2", "too busy, try later")),
        (
            "D",
            "sorry, I can't accept addresses like that (#5.1.3)",
            ("5.1.3", "sorry, I can't accept addresses like that"),
        ),
        ("D", "Error: message too large", ("5.3.0", "Error: message too large")),
        ("Z", "Error: queue file write error", ("4.3.0", "Error: queue file write error")),
        ("D", "554 4.7.0 odd", ("5.3.0", "4.7.0 odd")),  # the letter decides the class
        ("Z", "ok (#5.1.1)", ("4.3.0", "ok (#5.1.1)")),
        ("D", "5.1234.1 x", ("5.3.0", "5.1234.1 x")),
        ("D", "", ("5.3.0", "")),
    ],
)
def test_split_status(letter: str, text: str, expected: tuple[str, str]) -> None:
    assert split_status(letter, text) == expected


def test_text_for_answer() -> None:
    assert text_for_answer("D", b"554 5.7.0 rejected: VIRUS Eicar\r\n") == b"Drejected: VIRUS Eicar (#5.7.0)"
    assert text_for_answer("Z", b"\xff busy") == "Z\ufffd busy (#4.3.0)".encode()


def test_write_text_to_a_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        assert write_text(write_end, b"Dno (#5.7.0)")
        os.close(write_end)
        assert os.read(read_end, 100) == b"Dno (#5.7.0)"
    finally:
        os.close(read_end)


def test_write_text_only_to_pipes(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as handle:
        assert not write_text(handle.fileno(), b"Dno")
    assert (tmp_path / "f").read_bytes() == b""


def test_write_text_to_a_closed_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    assert not write_text(write_end, b"Dno")


def test_write_text_to_a_pipe_nobody_reads() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        assert not write_text(write_end, b"Dno")
    finally:
        os.close(write_end)
