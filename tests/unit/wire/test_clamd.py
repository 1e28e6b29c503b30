from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import ProtocolError
from qsift.wire.clamd import (
    INSTREAM_END,
    MAX_CHUNK,
    Reply,
    ReplyParser,
    ScanReply,
    command,
    instream_chunk,
    parse_scan_reply,
)

# Names as clamd writes them, from the official database and from this repository's test database.
virus_name = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,40}(\.UNOFFICIAL)?", fullmatch=True)
reply_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=80)


# --- commands and chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("PING", b"zPING\0"),
        ("INSTREAM", b"zINSTREAM\0"),
        ("IDSESSION", b"zIDSESSION\0"),
        ("END", b"zEND\0"),
        ("SCAN /var/tmp/a file", b"zSCAN /var/tmp/a file\0"),
    ],
)
def test_command_framing(name: str, wire: bytes) -> None:
    assert command(name) == wire


@pytest.mark.parametrize("name", ["", "ping", "PING\0", "PING\n", "SCAN /a\0b", "PİNG", " PING"])
def test_command_refuses_what_clamd_would_misread(name: str) -> None:
    with pytest.raises(ValueError, match="not a clamd command"):
        command(name)


def test_instream_chunk_is_length_then_data() -> None:
    assert instream_chunk(b"abc") == b"\0\0\0\3abc"
    assert struct.pack("!L", 0) == INSTREAM_END


def test_instream_chunk_refuses_an_empty_chunk() -> None:
    with pytest.raises(ValueError, match="ends the stream"):
        instream_chunk(b"")


def test_instream_chunk_refuses_what_the_length_cannot_say() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_CHUNK + 1

    with pytest.raises(ValueError, match="32-bit"):
        instream_chunk(Huge(b"x"))


@given(st.binary(min_size=1, max_size=3000))
def test_instream_chunk_round_trips(data: bytes) -> None:
    framed = instream_chunk(data)
    (length,) = struct.unpack("!L", framed[:4])
    assert length == len(data)
    assert framed[4:] == data


# --- the reply parser -----------------------------------------------------------------------------------


def test_reply_without_session() -> None:
    assert ReplyParser().feed(b"stream: OK\0") == [Reply("stream: OK")]


def test_reply_in_a_session_gives_the_request_number() -> None:
    replies = ReplyParser().feed(b"1: stream: OK\x0012: stream: Eicar-Test-Signature FOUND\0")
    assert replies == [Reply("stream: OK", 1), Reply("stream: Eicar-Test-Signature FOUND", 12)]


@pytest.mark.parametrize("raw", [b"0: PONG", b"01: PONG", b"1:PONG", b"x: PONG", b"12345678901: PONG"])
def test_a_malformed_number_is_not_a_request_number(raw: bytes) -> None:
    # "0" is never a request number (clamd counts from 1), and the prefix is always "<n>: ".
    assert ReplyParser().feed(raw + b"\0") == [Reply(raw.decode())]


def test_reply_split_anywhere() -> None:
    parser = ReplyParser()
    assert parser.feed(b"3: str") == []
    assert parser.pending == 6
    assert parser.feed(b"eam: O") == []
    assert parser.feed(b"K\x004: PO") == [Reply("stream: OK", 3)]
    assert parser.feed(b"NG\0") == [Reply("PONG", 4)]
    assert parser.pending == 0


def test_stray_bytes_show_as_replacement_characters() -> None:
    assert ReplyParser().feed(b"/tmp/\xff: OK\0") == [Reply("/tmp/\ufffd: OK")]


def test_reply_at_the_length_limit_is_read() -> None:
    assert ReplyParser(max_length=10).feed(b"x" * 10 + b"\0") == [Reply("x" * 10)]


def test_overlong_reply_is_refused_without_waiting_for_its_end() -> None:
    parser = ReplyParser(max_length=10)
    assert parser.feed(b"x" * 10) == []
    with pytest.raises(ProtocolError, match="longer than 10"):
        parser.feed(b"x")
    assert parser.pending == 0
    with pytest.raises(ProtocolError, match="already broken"):
        parser.feed(b"\0")


def test_overlong_reply_is_refused_even_when_it_ends_in_the_same_read() -> None:
    with pytest.raises(ProtocolError):
        ReplyParser(max_length=4).feed(b"OK\0" + b"x" * 5 + b"\0")


@given(st.lists(reply_text, max_size=5), st.data())
def test_parser_gives_back_what_was_sent_however_it_is_cut(texts: list[str], data: st.DataObject) -> None:
    wire = b"".join(t.encode() + b"\0" for t in texts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = ReplyParser(max_length=1000)
    got: list[Reply] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += parser.feed(wire[start:end])
    assert [r.text if r.request is None else f"{r.request}: {r.text}" for r in got] == texts
    assert parser.pending == 0


@given(st.binary(max_size=200), st.integers(1, 50))
def test_parser_holds_at_most_its_limit(data: bytes, limit: int) -> None:
    parser = ReplyParser(max_length=limit)
    try:
        for replies in (parser.feed(data[i : i + 7]) for i in range(0, len(data), 7)):
            assert all(len(r.text.encode()) <= limit * 3 for r in replies)
            assert parser.pending <= limit
    except ProtocolError:
        pass


# --- scan replies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stream: OK", ScanReply("ok")),
        ("stream: Win.Test.EICAR_HDB-1 FOUND", ScanReply("found", ("Win.Test.EICAR_HDB-1",))),
        ("/var/mail/a: b: c: Eicar FOUND", ScanReply("found", ("Eicar",))),
        (
            "INSTREAM size limit exceeded. ERROR",
            ScanReply("error", message="INSTREAM size limit exceeded."),
        ),
        ("stream: Can't allocate memory ERROR", ScanReply("error", message="stream: Can't allocate memory")),
        ("UNKNOWN COMMAND", ScanReply("error", message="UNKNOWN COMMAND (clamd too old for INSTREAM?)")),
        ("HELLO", ScanReply("error", message="unexpected reply from clamd: 'HELLO'")),
        ("OK", ScanReply("error", message="unexpected reply from clamd: 'OK'")),
        ("Eicar FOUND", ScanReply("error", message="unexpected reply from clamd: 'Eicar FOUND'")),
        ("", ScanReply("error", message="empty reply from clamd")),
        ("\0 \n", ScanReply("error", message="empty reply from clamd")),
    ],
)
def test_scan_reply(text: str, expected: ScanReply) -> None:
    assert parse_scan_reply(text) == expected


def test_several_found_lines_give_every_name_once() -> None:
    text = "/m: A.One FOUND\0/m: B.Two FOUND\n/m: A.One FOUND\0/m: OK\0"
    assert parse_scan_reply(text) == ScanReply("found", ("A.One", "B.Two"))


def test_a_name_found_wins_over_an_error_elsewhere() -> None:
    text = "/m/a: Can't open file ERROR\0/m/b: Eicar FOUND"
    assert parse_scan_reply(text) == ScanReply("found", ("Eicar",), "/m/a: Can't open file")


def test_one_error_among_oks_is_an_error() -> None:
    assert parse_scan_reply("/a: OK\n/b: lstat() failed. ERROR") == ScanReply(
        "error", message="/b: lstat() failed."
    )


def test_an_unreadable_line_among_oks_is_an_error() -> None:
    assert parse_scan_reply("/a: OK\0garbage").status == "error"


def test_unexpected_text_is_quoted_short() -> None:
    reply = parse_scan_reply("x" * 1000)
    assert reply.status == "error"
    assert len(reply.message) < 250


@given(virus_name, st.text(st.characters(codec="ascii", exclude_characters="\0\n"), max_size=30))
def test_any_name_after_any_path_is_found(name: str, path: str) -> None:
    assert parse_scan_reply(f"{path or 'stream'}: {name} FOUND") == ScanReply("found", (name,))


@given(reply_text)
def test_never_ok_unless_clamd_said_ok(text: str) -> None:
    reply = parse_scan_reply(text)
    assert reply.status in ("ok", "found", "error")
    if reply.status == "ok":
        assert all(line.strip().endswith(": OK") for line in text.split("\n") if line.strip())
    if reply.status == "found":
        assert reply.names and all(f" {n} FOUND" in text for n in reply.names)
    else:
        assert reply.names == ()
