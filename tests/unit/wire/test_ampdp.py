from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import ProtocolError
from qsift.wire.ampdp import (
    AmpdpError,
    Request,
    RequestReader,
    SetReply,
    decode_text,
    encode_attributes,
    encode_reply,
    encode_value,
)

# What amavisd-release 2.13 writes for `amavisd-release spam-AbCdEfGhIj12.gz SECRET <a@example.org>`.
AMAVISD_RELEASE = (
    b"request=release\r\nmail_id=AbCdEfGhIj12\r\nquar_type=Z\r\nsecret_id=SECRETSECRET\r\n"
    b"mail_file=spam-AbCdEfGhIj12.gz\r\nrecipient=<a@example.org>\r\n\r\n"
)
# modoboa-amavis ends its lines with a bare LF.
MODOBOA = b"request=release\nmail_id=AbCdEfGhIj12\nsecret_id=S\nquar_type=Q\nrecipient=a%40example.org\n\n"


def read_all(data: bytes, step: int = 1 << 20, **limits: int) -> list[Request]:
    reader = RequestReader(**limits)
    requests = []
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        while (request := reader.next_request()) is not None:
            requests.append(request)
    return requests


@pytest.mark.parametrize(
    ("data", "attributes"),
    [
        (
            AMAVISD_RELEASE,
            {
                "request": ("release",),
                "mail_id": ("AbCdEfGhIj12",),
                "quar_type": ("Z",),
                "secret_id": ("SECRETSECRET",),
                "mail_file": ("spam-AbCdEfGhIj12.gz",),
                "recipient": ("<a@example.org>",),
            },
        ),
        (
            MODOBOA,
            {
                "request": ("release",),
                "mail_id": ("AbCdEfGhIj12",),
                "secret_id": ("S",),
                "quar_type": ("Q",),
                "recipient": ("a@example.org",),
            },
        ),
        (b"recipient=a\nrecipient=b\nrecipient=c\n\n", {"recipient": ("a", "b", "c")}),
        (b"request: release\r\n\r\n", {"request": ("release",)}),
        (b"request:\t release\r\n\r\n", {"request": ("release",)}),
        (b"mail_file=\r\n\r\n", {"mail_file": ("",)}),
        (b"re%71uest=a%20b%25c\r\n\r\n", {"request": ("a b%c",)}),
        (b"x=%C3%A9t%e9\r\n\r\n", {"x": ("\u00e9t\udce9",)}),
        (b"x=a=b\r\n\r\n", {"x": ("a=b",)}),
        (b"x=%zz%4\r\n\r\n", {"x": ("%zz%4",)}),
        (b"\r\n\n\r\nx=1\r\n\r\n", {"x": ("1",)}),  # empty lines before a request are skipped
    ],
)
def test_requests(data: bytes, attributes: dict[str, tuple[str, ...]]) -> None:
    assert read_all(data) == [Request(attributes)]
    assert read_all(data, step=1) == [Request(attributes)]


def test_several_requests_on_one_connection() -> None:
    requests = read_all(AMAVISD_RELEASE + MODOBOA + AMAVISD_RELEASE, step=7)
    assert [r.first("quar_type") for r in requests] == ["Z", "Q", "Z"]


def test_first_and_all() -> None:
    (request,) = read_all(b"recipient=a\nrecipient=b\n\n")
    assert request.first("recipient") == "a"
    assert request.all("recipient") == ("a", "b")
    assert request.first("mail_id") is None
    assert request.all("mail_id") == ()


def test_a_request_in_progress_is_pending() -> None:
    reader = RequestReader()
    assert not reader.pending
    reader.feed(b"request=rel")
    assert reader.next_request() is None and reader.pending
    reader.feed(b"ease\r\n")
    assert reader.next_request() is None and reader.pending
    reader.feed(b"\r\n")
    assert reader.next_request() == Request({"request": ("release",)})
    assert not reader.pending


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"no separator\r\n\r\n", "not name=value"),
        (b"=value\r\n\r\n", "not name=value"),
        (b": value\r\n\r\n", "not name=value"),
        (b"na\x00me=value\r\n\r\n", "not name=value"),
        (b"x=" + b"a" * 5000, "longer than 4096"),
        (b"x=" + b"a" * 5000 + b"\r\n\r\n", "longer than 4096"),
        (b"x=1\n" * 1025 + b"\n", "more than 1024 attributes"),
    ],
)
def test_hostile_input_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(AmpdpError, match=message):
        read_all(data)


def test_a_line_at_the_limit_passes() -> None:
    line = b"x=" + b"a" * 94 + b"\r\n"
    assert len(line) == 98
    assert read_all(line + b"\r\n", max_line=98) == [Request({"x": ("a" * 94,)})]
    with pytest.raises(AmpdpError):
        read_all(line + b"\r\n", max_line=97)


def test_a_broken_reader_stays_broken() -> None:
    reader = RequestReader()
    reader.feed(b"garbage\n")
    with pytest.raises(AmpdpError):
        reader.next_request()
    assert not reader.pending  # what it held is dropped
    with pytest.raises(AmpdpError, match="broke earlier"):
        reader.next_request()
    with pytest.raises(AmpdpError, match="broke earlier"):
        reader.feed(b"x=1\n\n")


def test_an_ampdp_error_is_a_protocol_error() -> None:
    assert issubclass(AmpdpError, ProtocolError)


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (SetReply(250, "2.0.0", "Ok, released"), b"setreply=250 2.0.0 Ok,%20released\r\n"),
        (SetReply(450, "4.5.0", "Failure: 100% \r\n"), b"setreply=450 4.5.0 Failure:%20100%25%20%0d%0a\r\n"),
        (SetReply(250, "2.0.0", "Ok \u00e9"), b"setreply=250 2.0.0 Ok%20%c3%a9\r\n"),
    ],
)
def test_setreply_lines(reply: SetReply, wire: bytes) -> None:
    assert reply.encode() == wire


def test_a_reply_has_its_setreply_lines_first_and_ends_with_an_empty_line() -> None:
    wire = encode_reply(
        [SetReply(450, "4.5.0", "Failure: no such message")],
        [("return_value", "tempfail"), ("exit_code", "75")],
    )
    assert wire == (
        b"setreply=450 4.5.0 Failure:%20no%20such%20message\r\nreturn_value=tempfail\r\nexit_code=75\r\n\r\n"
    )


def test_what_the_clients_check_holds_for_an_ok_reply() -> None:
    wire = encode_reply([SetReply(250, "2.0.0", "Ok, released to <a@example.org>: 250 2.0.0 queued")])
    assert wire.startswith(b"setreply=250")  # MailZu, amacube
    assert decode_text(wire).split("\r\n")[0].startswith("setreply=250 2.0.0 Ok")  # modoboa
    assert len(wire) < 512


names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
values = st.text(st.characters(codec="utf-8"), max_size=60)


@given(st.lists(st.tuples(names, values), min_size=1, max_size=20), st.integers(1, 50))
def test_round_trip(attributes: list[tuple[str, str]], step: int) -> None:
    wire = encode_attributes(attributes)
    (request,) = read_all(wire, step=step)
    expected: dict[str, list[str]] = {}
    for name, value in attributes:
        expected.setdefault(name, []).append(value)
    assert request == Request({name: tuple(vs) for name, vs in expected.items()})


@given(st.text(st.characters(codec="utf-8"), max_size=200))
def test_an_encoded_value_is_plain_printable_ascii(value: str) -> None:
    encoded = encode_value(value)
    assert all(0x21 <= byte <= 0x7E for byte in encoded)
    assert decode_text(encoded) == value


@given(st.binary(max_size=600), st.integers(1, 64))
def test_any_bytes_give_requests_or_an_ampdp_error(data: bytes, step: int) -> None:
    try:
        requests = read_all(data, step=step, max_line=100, max_attributes=5)
    except AmpdpError:
        return
    for request in requests:
        assert 0 < sum(len(v) for v in request.attributes.values()) <= 5
