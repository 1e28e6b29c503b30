from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsift.queue_client.message import MEMORY_LIMIT, SEND_SIZE, Message, _open_spool, read_message
from qsift.queue_client.outcome import Fatal
from qsift.wire.qmail_queue import ExitCode


def from_pipe(data: bytes, tmpdir: str) -> Message:
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        return read_message(read_end, tmpdir)
    finally:
        writer.join(30)
        os.close(read_end)


def pieces(message: Message) -> Iterator[bytes]:
    return message.request_pieces(b"<", b">")


def test_small_message_from_a_pipe_stays_in_memory(tmp_path: Path) -> None:
    message = from_pipe(b"Subject: x\n\nbody\n", str(tmp_path))
    assert message.size == 17
    assert list(pieces(message)) == [b"<Subject: x\n\nbody\n>"]


def test_empty_message(tmp_path: Path) -> None:
    message = from_pipe(b"", str(tmp_path))
    assert message.size == 0
    assert list(pieces(message)) == [b"<>"]


def test_big_message_from_a_pipe_is_spooled_and_sent_in_bounded_pieces(tmp_path: Path) -> None:
    data = os.urandom(3 * MEMORY_LIMIT + 12345)
    message = from_pipe(data, str(tmp_path))
    assert message.size == len(data)
    sent = list(pieces(message))
    assert b"".join(sent) == b"<" + data + b">"
    assert max(len(piece) for piece in sent) <= SEND_SIZE
    assert list(tmp_path.iterdir()) == []  # the spool file has no name


def test_regular_file_is_measured_from_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "message"
    path.write_bytes(b"skip" + b"x" * (SEND_SIZE + 10))
    with path.open("rb") as handle:
        handle.seek(4)
        message = read_message(handle.fileno(), str(tmp_path))
        assert message.size == SEND_SIZE + 10
        sent = list(pieces(message))
    assert sent == [b"<", b"x" * SEND_SIZE, b"x" * 10, b">"]


def test_regular_file_that_shrinks_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "message"
    path.write_bytes(b"x" * 100)
    with path.open("rb") as handle:
        message = read_message(handle.fileno(), str(tmp_path))
        path.write_bytes(b"x" * 10)
        with pytest.raises(Fatal) as caught:
            list(pieces(message))
    assert caught.value.code == ExitCode.READ_ERROR


def test_unreadable_descriptor_is_a_read_error(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with pytest.raises(Fatal) as caught:
            read_message(write_end, str(tmp_path))
    finally:
        os.close(write_end)
    assert caught.value.code == ExitCode.READ_ERROR


def test_closed_descriptor_is_a_read_error(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(Fatal) as caught:
        read_message(read_end, str(tmp_path))
    assert caught.value.code == ExitCode.READ_ERROR


def test_missing_spool_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(Fatal) as caught:
        from_pipe(b"x" * (MEMORY_LIMIT + 1), str(tmp_path / "missing"))
    assert caught.value.code == ExitCode.WRITE_ERROR
    assert "cannot create a temp file" in caught.value.text


def test_spool_without_o_tmpfile(tmp_path: Path) -> None:
    # Systems without O_TMPFILE get a named temp file, unlinked at once.
    spool = _open_spool(str(tmp_path), tmpfile_flag=None)
    try:
        assert list(tmp_path.iterdir()) == []
        os.write(spool, b"kept")
        assert os.pread(spool, 10, 0) == b"kept"
    finally:
        os.close(spool)


def test_spool_without_o_tmpfile_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(Fatal) as caught:
        _open_spool(str(tmp_path / "missing"), tmpfile_flag=None)
    assert caught.value.code == ExitCode.WRITE_ERROR
