from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import ProtocolError
from qsift.wire.rspamd import (
    ACTIONS,
    HttpResponse,
    HttpResponseParser,
    RspamdReply,
    parse_reply,
    request_head,
)

# What rspamd 3.4 answered for GTUBE (captured from the real daemon): a pre-result, hence is_skipped.
GTUBE_JSON = (
    b'{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":'
    b'{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},'
    b'"message-id":"undef","time_real":0.054467}'
)
HAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nContent-Length: 13\r\n"
    b"Content-Type: application/json\r\n\r\n"
    b'{"score":0.0}'
)


def read(data: bytes, *, step: int | None = None, **limits: int) -> HttpResponse:
    parser = HttpResponseParser(**limits)
    step = step or max(1, len(data))
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    return parser.finish()


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


# --- the request --------------------------------------------------------------------------------------


def test_request_head_with_every_field() -> None:
    head = request_head(
        120,
        ip="192.0.2.1",
        helo="mx.example.net",
        sender="a@example.com",
        recipients=["b@example.org", "c@example.org"],
        queue_id="Q1",
        user="alice",
        host="mx.example.net",
    )
    assert head == (
        b"POST /checkv2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 120\r\n"
        b"IP: 192.0.2.1\r\nHelo: mx.example.net\r\nHostname: mx.example.net\r\nQueue-Id: Q1\r\n"
        b"User: alice\r\nFrom: a@example.com\r\nRcpt: b@example.org\r\nRcpt: c@example.org\r\n\r\n"
    )


def test_request_head_minimal() -> None:
    assert request_head(0, http_host="rspamd.local") == (
        b"POST /checkv2 HTTP/1.1\r\nHost: rspamd.local\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )


def test_null_sender_is_sent_as_angle_brackets() -> None:
    assert b"\r\nFrom: <>\r\n" in request_head(1, sender="")


def test_addresses_keep_their_bytes() -> None:
    raw = "j\u00f6rg@example.org".encode()
    undecodable = b"\xff@example.org".decode("utf-8", "surrogateescape")
    head = request_head(1, sender=raw.decode(), recipients=[undecodable])
    assert b"From: " + raw + b"\r\n" in head
    assert b"Rcpt: \xff@example.org\r\n" in head


@pytest.mark.parametrize(
    "fields",
    [
        {"sender": "a@b\r\nX-Evil: 1"},
        {"recipients": ["ok@b", "bad\n@b"]},
        {"helo": "a\x00b"},
        {"ip": "1.2.3.4\t"},
        {"user": "a\x7f"},
        {"queue_id": "\r"},
        {"host": "h\nx"},
        {"http_host": "h\r"},
    ],
)
def test_control_characters_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="control character"):
        request_head(1, **fields)  # type: ignore[arg-type]


def test_negative_length_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        request_head(-1)


# --- the HTTP response --------------------------------------------------------------------------------


def test_content_length_response() -> None:
    response = read(HAM_RESPONSE)
    assert (response.status, response.reason, response.body) == (200, "OK", b'{"score":0.0}')
    assert response.header("content-type") == response.header("Content-Type") == "application/json"
    assert response.header("X-Missing") is None


def test_feed_says_when_the_response_is_complete() -> None:
    parser = HttpResponseParser()
    assert not parser.feed(HAM_RESPONSE[:-1])
    assert parser.feed(HAM_RESPONSE[-1:])


def test_byte_at_a_time() -> None:
    assert read(HAM_RESPONSE, step=1) == read(HAM_RESPONSE)


def test_chunked_response_with_extension_and_trailer() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n" + (
        b"5;ext=1\r\nhello\r\n1 \r\n,\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    for step in (1, 3, len(data)):
        assert read(data, step=step).body == b"hello,"


def test_chunked_empty_body() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").body == b""


def test_body_to_eof_when_no_length_is_given() -> None:
    parser = HttpResponseParser()
    assert not parser.feed(b"HTTP/1.0 200 OK\r\n\r\n{")
    assert not parser.feed(b"}")
    assert parser.finish().body == b"{}"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    parser = HttpResponseParser()
    assert parser.feed(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert parser.finish().body == b""


def test_zero_content_length_is_complete_at_once() -> None:
    parser = HttpResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert parser.finish() == HttpResponse(200, "OK", (("content-length", "0"),), b"")


def test_interim_response_is_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\nX: 1\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 2\n\n{}"
    response = read(data, step=5)
    assert (response.status, response.headers, response.body) == (200, (("content-length", "2"),), b"{}")


def test_identical_repeated_content_length_is_fine() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx").body == b"x"


def test_status_line_without_reason() -> None:
    assert read(b"HTTP/1.1 200\r\n\r\n").reason == ""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ],
)
def test_cut_short(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="ended early"):
        read(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "Name: value"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "Name: value"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\n\r\n", "Content-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "CR LF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", "further bytes"),
    ],
)
def test_malformed(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        read(data)


def test_bytes_after_a_complete_response_in_a_later_read() -> None:
    parser = HttpResponseParser()
    assert parser.feed(HAM_RESPONSE)
    with pytest.raises(ProtocolError, match="further bytes"):
        parser.feed(b"x")


def test_identity_content_encoding_is_fine() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 1\r\n\r\nx").body == b"x"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100,  # an open line
        b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 20,  # whole lines
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100 + b"\r\n",  # one long line
    ],
)
def test_head_is_bounded(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        HttpResponseParser(max_head=64).feed(data)


def test_chunk_size_line_is_bounded() -> None:
    with pytest.raises(ProtocolError, match="longer than 1024"):
        HttpResponseParser().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"x" * 2000)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * 6, b"y" * 5),
    ],
)
def test_body_is_bounded(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"(longer than 10|too large)"):
        HttpResponseParser(max_body=10).feed(data)


def test_trailer_has_its_own_bound() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        trailer=b"X: " + b"a" * 100 + b"\r\n"
    )
    with pytest.raises(ProtocolError, match="longer than 64"):
        HttpResponseParser(max_head=64).feed(data)


# --- the JSON reply -----------------------------------------------------------------------------------


def test_gtube_reply() -> None:
    assert parse_reply(200, GTUBE_JSON) == RspamdReply(
        15.0, 15.0, "reject", ("GTUBE",), "Gtube pattern", True
    )


def test_minimal_reply() -> None:
    body = b'{"score": 1, "required_score": 15, "action": "no action"}'
    assert parse_reply(200, body) == RspamdReply(1.0, 15.0, "no action", ())


def test_custom_action_and_symbol_order() -> None:
    body = json.dumps(
        {"score": 3.5, "required_score": 7, "action": "quarantine", "symbols": {"B": {}, "A": {}}}
    ).encode()
    reply = parse_reply(200, body)
    assert (reply.action, reply.symbols) == ("quarantine", ("B", "A"))
    assert "quarantine" not in ACTIONS


def test_the_fields_rspamd_asks_to_add_are_named() -> None:
    document = {
        "score": 1,
        "required_score": 15,
        "action": "no action",
        "dkim-signature": "v=1; a=rsa-sha256; d=example.org; b=x",
        "milter": {
            "add_headers": {"Authentication-Results": {"value": "mx; dkim=pass", "order": 0}, "X\r": {}}
        },
    }
    reply = parse_reply(200, json.dumps(document).encode())
    assert reply.header_fields == ("DKIM-Signature", "Authentication-Results", "X ")
    assert parse_reply(200, json.dumps({**document, "milter": []}).encode()).header_fields == (
        "DKIM-Signature",
    )


def test_smtp_message_is_made_safe_for_a_reply_line() -> None:
    body = b'{"score":1,"required_score":2,"action":"reject","messages":{"smtp_message":"a\\r\\n550 b"}}'
    assert parse_reply(200, body).smtp_message == "a  550 b"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"error": "invalid request\\r\\n"}', "rspamd answered HTTP 400: invalid request  "),
        (b"<html>bad gateway</html>", "rspamd answered HTTP 400: <html>bad gateway</html>"),
        (b'{"error": 5}', 'rspamd answered HTTP 400: {"error": 5}'),
        (b"[1]", "rspamd answered HTTP 400: [1]"),
    ],
)
def test_error_status(body: bytes, text: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_reply(400, body)
    assert str(raised.value) == text


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"score": NaN, "required_score": 1, "action": "x"}', "not JSON"),
        (b'{"score": Infinity, "required_score": 1, "action": "x"}', "not JSON"),
        (b'{"score": 1e400, "required_score": 1, "action": "x"}', "out of range"),
        (b'{"score": 1' + b"0" * 400 + b', "required_score": 1, "action": "x"}', "out of range"),
        (b'{"score": "1", "required_score": 1, "action": "x"}', "bad score"),
        (b'{"score": true, "required_score": 1, "action": "x"}', "bad score"),
        (b'{"score": 1, "action": "x"}', "bad required_score"),
        (b'{"score": 1, "required_score": 1}', "bad action"),
        (b'{"score": 1, "required_score": 1, "action": ""}', "bad action"),
        (b'{"score": 1, "required_score": 1, "action": "x", "is_skipped": 1}', "is_skipped"),
        (b'{"score": 1, "required_score": 1, "action": "x", "symbols": []}', "symbols"),
        (b'{"score": 1, "required_score": 1, "action": "x", "messages": []}', "messages"),
        (b'{"score": 1, "required_score": 1, "action": "x", "messages": {"smtp_message": 1}}', "messages"),
    ],
)
def test_bad_reply(body: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_reply(200, body)


# --- properties ---------------------------------------------------------------------------------------


@given(st.binary(max_size=300), st.integers(1, 30))
def test_random_bytes_raise_only_protocol_error(data: bytes, step: int) -> None:
    try:
        response = read(data, step=step, max_head=200, max_body=100)
    except ProtocolError:
        return
    assert len(response.body) <= 100
    assert 200 <= response.status <= 999
    with contextlib.suppress(ProtocolError):
        parse_reply(response.status, response.body)


@given(
    st.lists(st.binary(min_size=1, max_size=30), max_size=8),
    st.sampled_from(["length", "chunked", "eof"]),
    st.integers(1, 40),
)
def test_any_framing_in_any_chunking_gives_the_body(parts: list[bytes], framing: str, step: int) -> None:
    body = b"".join(parts)
    if framing == "length":
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    elif framing == "chunked":
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*parts)
    else:
        data = b"HTTP/1.0 200 OK\r\n\r\n" + body
    assert read(data, step=step).body == body


@given(
    st.floats(-1e6, 1e6),
    st.floats(0, 1e6),
    st.sampled_from(ACTIONS),
    st.lists(st.from_regex(r"[A-Z_]{1,20}", fullmatch=True), unique=True, max_size=10),
    st.text(max_size=50),
)
def test_reply_round_trip(
    score: float, required: float, action: str, symbols: list[str], message: str
) -> None:
    document = {
        "score": score,
        "required_score": required,
        "action": action,
        "symbols": {name: {"name": name, "score": 1.0} for name in symbols},
        "messages": {"smtp_message": message},
    }
    reply = parse_reply(200, json.dumps(document).encode())
    assert (reply.score, reply.required_score, reply.action, reply.symbols) == (
        score,
        required,
        action,
        tuple(symbols),
    )
    assert not any(ord(c) < 32 or ord(c) == 127 for c in reply.smtp_message)
