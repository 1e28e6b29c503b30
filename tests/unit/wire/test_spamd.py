from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import ProtocolError
from qsift.wire import spamd
from qsift.wire.spamd import PING_REQUEST, ResponseParser, SpamdResponse, parse_symbols, request_head

# What spamd 4.0.1 wrote for GTUBE over SYMBOLS SPAMC/1.5 (captured from the real daemon).
GTUBE_REPLY = (
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 68\r\nSpam: True ; 1003.3 / 5.0\r\n\r\n"
    b"GTUBE,MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO"
)


def parse(data: bytes, *, step: int | None = None, **limits: int) -> SpamdResponse:
    parser = ResponseParser(**limits)
    step = step or max(1, len(data))
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    return parser.finish()


# --- the request --------------------------------------------------------------------------------------


def test_request_head_in_libspamc_order() -> None:
    assert request_head("SYMBOLS", 42, "alice") == (
        b"SYMBOLS SPAMC/1.5\r\nUser: alice\r\nContent-length: 42\r\n\r\n"
    )


def test_request_head_without_user() -> None:
    assert request_head("CHECK", 0, None) == b"CHECK SPAMC/1.5\r\nContent-length: 0\r\n\r\n"


@pytest.mark.parametrize("user", ["bob", "user@example.org", "first.last+tag", "x_y-z", "A" * 255])
def test_user_names_accepted(user: str) -> None:
    assert f"User: {user}\r\n".encode() in request_head("SYMBOLS", 1, user)


@pytest.mark.parametrize(
    "user", ["", "bad user", "a\r\nContent-length: 0", "tab\there", "-leading", "é", "A" * 256, "a:b"]
)
def test_user_names_refused(user: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        request_head("SYMBOLS", 1, user)


@pytest.mark.parametrize("command", ["PING", "TELL", "symbols", "SYMBOLS SPAMC/1.5\r\n", ""])
def test_unknown_or_messageless_command_refused(command: str) -> None:
    with pytest.raises(ValueError, match="command"):
        request_head(command, 1, None)


def test_negative_length_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        request_head("SYMBOLS", -1, None)


def test_ping_request_has_the_empty_line_of_protocol_1_5() -> None:
    assert PING_REQUEST == b"PING SPAMC/1.5\r\n\r\n"


# --- the reply ----------------------------------------------------------------------------------------


def test_gtube_reply() -> None:
    reply = parse(GTUBE_REPLY)
    assert reply == SpamdResponse(0, "EX_OK", True, 1003.3, 5.0, GTUBE_REPLY.split(b"\r\n\r\n")[1])
    assert parse_symbols(reply.body)[0] == "GTUBE"


def test_byte_at_a_time_gives_the_same_reply() -> None:
    assert parse(GTUBE_REPLY, step=1) == parse(GTUBE_REPLY)


def test_ham_with_no_rules_and_a_negative_score() -> None:
    reply = parse(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.1 / 5.0\r\n\r\n")
    assert (reply.is_spam, reply.score, reply.threshold, reply.body) == (False, -0.1, 5.0, b"")
    assert parse_symbols(reply.body) == ()


def test_check_reply_has_no_content_length() -> None:
    reply = parse(b"SPAMD/1.1 0 EX_OK\r\nSpam: Yes ; 6 / 5.0\r\n\r\n")
    assert (reply.is_spam, reply.score, reply.body) == (True, 6.0, b"")


def test_body_without_content_length_runs_to_eof() -> None:
    assert parse(b"SPAMD/1.1 0 EX_OK\r\n\r\nA,B\r\n").body == b"A,B\r\n"


def test_pong_is_a_status_line_alone() -> None:
    assert parse(b"SPAMD/1.5 0 PONG\r\n") == SpamdResponse(0, "PONG", None, None, None, b"")


def test_failure_is_a_status_line_alone() -> None:
    reply = parse(
        b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 5 bytes, got 4 bytes)\r\n"
    )
    assert reply.code == 76
    assert reply.message.startswith("Bad header line")


def test_status_line_without_message() -> None:
    assert parse(b"SPAMD/1.0 0\n\n").message == ""


def test_bare_lf_and_lower_case_and_unknown_headers_are_accepted() -> None:
    reply = parse(b"SPAMD/1.1 0 EX_OK\nX-Future: yes\ncontent-length: 1\nspam:false;1.5/5\n\nA")
    assert (reply.is_spam, reply.score, reply.threshold, reply.body) == (False, 1.5, 5.0, b"A")


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"SPAMD/1.1 0 EX_O",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\nSpam: True ; 1 / 5",
        b"SPAMD/1.1 0 EX_OK\r\n\r",
    ],
)
def test_truncated_head(reply: bytes) -> None:
    with pytest.raises(ProtocolError, match="ended"):
        parse(reply)


def test_body_shorter_than_content_length() -> None:
    with pytest.raises(ProtocolError, match="Content-length said 3"):
        parse(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n\r\nAB")


def test_body_longer_than_content_length_fails_as_it_arrives() -> None:
    parser = ResponseParser()
    parser.feed(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n\r\nABC")
    with pytest.raises(ProtocolError, match="longer than 3"):
        parser.feed(b"D")


@pytest.mark.parametrize(
    "status",
    [
        b"HTTP/1.1 200 OK",
        b"SPAMD/1.1 EX_OK",
        b"SPAMD/x 0 EX_OK",
        b"SPAMD/1.1 1234 EX_OK",
        b"SPAMD/1.1 0 EX\x00OK",
        b"spamd/1.1 0 EX_OK",
        b"SPAMD/1.1 -1 EX_OK",
    ],
)
def test_bad_status_line(status: bytes) -> None:
    with pytest.raises(ProtocolError, match="status line"):
        parse(status + b"\r\n\r\n")


@pytest.mark.parametrize(
    "header",
    [
        b"Spam: Maybe ; 1 / 5",
        b"Spam: True ; lots / 5.0",
        b"Spam: True ; 1.0 / ",
        b"Spam: True ; nan / 5.0",
        b"Spam: True ; inf / 5.0",
        b"Spam: True ; 1e400 / 5.0",
        b"Spam: True ; 1" + b"0" * 20 + b" / 5.0",
        b"Spam: True 1.0 / 5.0",
    ],
)
def test_bad_spam_header(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="Spam header"):
        parse(b"SPAMD/1.1 0 EX_OK\r\n" + header + b"\r\n\r\n")


def test_second_spam_header() -> None:
    with pytest.raises(ProtocolError, match="second Spam"):
        parse(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\nSpam: False ; 1 / 5\r\n\r\n")


@pytest.mark.parametrize(
    "header",
    [
        b"Content-length: ten",
        b"Content-length: -1",
        b"Content-length: 1234567890123",
        b"Content-length: 1\r\nContent-length: 1",
    ],
)
def test_bad_content_length(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="Content-length"):
        parse(b"SPAMD/1.1 0 EX_OK\r\n" + header + b"\r\n\r\n")


@pytest.mark.parametrize("line", [b"no colon here", b": no name", b"Bad Name: x", b"Ctl: a\x01b"])
def test_header_not_name_value(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="Name: value"):
        parse(b"SPAMD/1.1 0 EX_OK\r\n" + line + b"\r\n\r\n")


def test_content_length_over_the_body_limit_fails_at_the_header() -> None:
    parser = ResponseParser(max_body=10)
    with pytest.raises(ProtocolError, match="over the limit"):
        parser.feed(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\n")


def test_body_without_length_is_bounded() -> None:
    parser = ResponseParser(max_body=10)
    parser.feed(b"SPAMD/1.1 0 EX_OK\r\n\r\n" + b"A" * 10)
    with pytest.raises(ProtocolError, match="longer than 10"):
        parser.feed(b"A")


def test_head_is_bounded_while_a_line_is_still_open() -> None:
    parser = ResponseParser(max_head=50)
    parser.feed(b"SPAMD/1.1 0 EX_OK\r\nX: " + b"a" * 20)
    with pytest.raises(ProtocolError, match="head longer than 50"):
        parser.feed(b"a" * 20)


def test_head_is_bounded_across_whole_lines() -> None:
    parser = ResponseParser(max_head=50)
    with pytest.raises(ProtocolError, match="head longer than 50"):
        parser.feed(b"SPAMD/1.1 0 EX_OK\r\n" + b"X: y\r\n" * 10)


def test_a_big_body_in_the_same_read_as_the_head_does_not_count_as_head() -> None:
    body = b"A," * 5000
    data = b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 9 / 5\r\n\r\n%s" % (len(body), body)
    assert parse(data, max_head=100).body == body


# --- SYMBOLS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"", ()),
        (b"\r\n", ()),
        (b"GTUBE", ("GTUBE",)),
        (b"GTUBE,NO_RELAYS\r\n", ("GTUBE", "NO_RELAYS")),
        (b"GTUBE, NO_RELAYS\n", ("GTUBE", "NO_RELAYS")),
        (b"__META,T_TEST,URIBL_BLOCKED", ("__META", "T_TEST", "URIBL_BLOCKED")),
    ],
)
def test_parse_symbols(body: bytes, names: tuple[str, ...]) -> None:
    assert parse_symbols(body) == names


@pytest.mark.parametrize("body", [b"A,,B", b"A,B C", b"A,\xff", b",A", b"A\x00B"])
def test_bad_symbols(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="rule name"):
        parse_symbols(body)


# --- properties ---------------------------------------------------------------------------------------

rule = st.from_regex(r"[A-Z_][A-Z0-9_]{0,30}", fullmatch=True)
score = st.decimals(min_value=-999, max_value=9999, places=1, allow_nan=False, allow_infinity=False)


@given(
    st.booleans(),
    score,
    score,
    st.lists(rule, max_size=20),
    st.booleans(),
    st.integers(1, 40),
)
def test_any_valid_reply_in_any_chunking(
    is_spam: bool, points: object, threshold: object, rules: list[str], crlf: bool, step: int
) -> None:
    body = ",".join(rules).encode() + (b"\r\n" if crlf else b"")
    data = b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %s / %s\r\n\r\n%s" % (
        len(body),
        b"True" if is_spam else b"False",
        str(points).encode(),
        str(threshold).encode(),
        body,
    )
    reply = parse(data, step=step)
    assert reply == SpamdResponse(0, "EX_OK", is_spam, float(str(points)), float(str(threshold)), body)
    assert parse_symbols(reply.body) == tuple(rules)


@given(st.binary(max_size=300), st.integers(1, 30))
def test_random_bytes_raise_only_protocol_error(data: bytes, step: int) -> None:
    try:
        reply = parse(data, step=step, max_head=200, max_body=100)
    except ProtocolError:
        return
    assert len(reply.body) <= 100
    assert 0 <= reply.code <= 999


def test_module_does_no_io() -> None:
    # The import-linter contract in pyproject.toml enforces this; a cheap check that nothing slipped in.
    assert not {"asyncio", "socket", "time", "logging"} & set(vars(spamd))
