"""XFORWARD in the sans-IO SMTP/LMTP server, rule by rule of Postfix's XFORWARD_README."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.wire import smtp_server as s
from qsift.wire.smtp_args import XFORWARD_ATTRIBUTES, decode_xtext
from tests.unit.wire.test_smtp_server import OK, feed, replies

OFFER = b"250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n"


def connect(*, lmtp: bool = False, hello: bool = True, **overrides: object) -> s.SmtpServerConnection:
    conn = s.SmtpServerConnection(
        s.ServerSettings(hostname="mx.test", lmtp=lmtp, xforward=True, **overrides)  # type: ignore[arg-type]
    )
    conn.data_to_send()
    if hello:
        feed(conn, b"LHLO mta.test\r\n" if lmtp else b"EHLO mta.test\r\n")
    return conn


def message(conn: s.SmtpServerConnection, commands: bytes = b"") -> tuple[s.DataEnd, bytes]:
    """Send `commands`, then one whole transaction; answer it; the DataEnd and every reply."""
    events, out = feed(conn, commands + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nhi\r\n.\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd), events
    conn.answer_data([OK])
    return end, out + conn.data_to_send()


def xforward(conn: s.SmtpServerConnection, *lines: bytes) -> bytes:
    _, out = feed(conn, b"".join(b"XFORWARD " + line + b"\r\n" for line in lines))
    return out


def test_a_client_not_allowed_is_not_offered_it_and_refused_as_postfix_refuses() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="mx.test"))
    conn.data_to_send()
    _, out = feed(conn, b"EHLO mta.test\r\n")
    assert b"XFORWARD" not in out
    _, out = feed(conn, b"XFORWARD ADDR=192.0.2.7\r\n")
    assert out == b"550 5.7.0 Error: insufficient authorization\r\n"
    end, _ = message(conn)
    assert end.xforward == {}


@pytest.mark.parametrize("lmtp", [False, True])
def test_offered_in_the_ehlo_and_lhlo_reply(lmtp: bool) -> None:
    conn = connect(lmtp=lmtp, hello=False)
    _, out = feed(conn, b"LHLO mta.test\r\n" if lmtp else b"EHLO mta.test\r\n")
    assert out.endswith(b"250-DSN\r\n" + OFFER + b"250 ENHANCEDSTATUSCODES\r\n")


def test_the_readme_example() -> None:
    conn = connect()
    out = xforward(
        conn, b"NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP ", b"HELO=spike.porcupine.org"
    )
    assert out == b"250 2.0.0 Ok\r\n" * 2
    end, out = message(conn)
    assert replies(out) == [b"250", b"250", b"354", b"250"]
    assert end.xforward == {
        "NAME": "spike.porcupine.org",
        "ADDR": "168.100.189.2",
        "PROTO": "ESMTP",
        "HELO": "spike.porcupine.org",
    }


def test_what_postfix_sends() -> None:
    conn = connect(lmtp=True)
    out = xforward(
        conn,
        b"NAME=mua.example.org ADDR=192.0.2.7 PORT=54321",
        b"PROTO=ESMTP HELO=[192.0.2.7] IDENT=4dQ7bX2LkQz9sVm SOURCE=REMOTE",
    )
    assert replies(out) == [b"250", b"250"]
    end, _ = message(conn)
    assert end.xforward == {
        "NAME": "mua.example.org",
        "ADDR": "192.0.2.7",
        "PORT": "54321",
        "PROTO": "ESMTP",
        "HELO": "[192.0.2.7]",
        "IDENT": "4dQ7bX2LkQz9sVm",
        "SOURCE": "REMOTE",
    }


def test_command_and_attribute_names_in_any_case() -> None:
    conn = connect()
    _, out = feed(conn, b"xforward name=a.test Addr=192.0.2.1 sOuRcE=local\r\n")
    assert out == b"250 2.0.0 Ok\r\n"
    assert message(conn)[0].xforward == {"NAME": "a.test", "ADDR": "192.0.2.1", "SOURCE": "LOCAL"}


def test_values_are_xtext() -> None:
    conn = connect()
    assert xforward(conn, b"NAME=a+2Eb HELO=+5Bx+5D IDENT=+2B+2B") == b"250 2.0.0 Ok\r\n"
    assert message(conn)[0].xforward == {"NAME": "a.b", "HELO": "[x]", "IDENT": "++"}


@pytest.mark.parametrize("word", [b"[UNAVAILABLE]", b"[unavailable]", b"[TempUnavail]", b"+5BUNAVAILABLE+5D"])
def test_unavailable_in_any_case_and_tempunavail(word: bytes) -> None:
    conn = connect()
    names = (b"NAME", b"ADDR", b"PORT", b"PROTO", b"HELO", b"IDENT", b"SOURCE")
    assert xforward(conn, b" ".join(name + b"=" + word for name in names)) == b"250 2.0.0 Ok\r\n"
    assert message(conn)[0].xforward == dict.fromkeys(XFORWARD_ATTRIBUTES)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (b"IPV6:2001:db8::1", "2001:db8::1"),
        (b"ipv6:2001:DB8::7", "2001:DB8::7"),
        (b"2001:db8::1", "2001:db8::1"),  # Postfix's own client sends it bare
        (b"IPv6:::ffff:192.0.2.7", "::ffff:192.0.2.7"),
        (b"192.0.2.7", "192.0.2.7"),
    ],
)
def test_addr_loses_its_ipv6_prefix(value: bytes, address: str) -> None:
    conn = connect()
    assert xforward(conn, b"ADDR=" + value) == b"250 2.0.0 Ok\r\n"
    assert message(conn)[0].xforward == {"ADDR": address}


def test_commands_accumulate_and_a_later_value_wins() -> None:
    conn = connect()
    out = xforward(conn, b"NAME=a.test ADDR=192.0.2.1", b"ADDR=192.0.2.2 HELO=h", b"NAME=[UNAVAILABLE]")
    assert replies(out) == [b"250"] * 3
    assert message(conn)[0].xforward == {"NAME": None, "ADDR": "192.0.2.2", "HELO": "h"}


def test_reset_after_the_final_dot() -> None:
    conn = connect()
    end, _ = message(conn, b"XFORWARD ADDR=192.0.2.7\r\n")
    assert end.xforward == {"ADDR": "192.0.2.7"}
    assert message(conn)[0].xforward == {}
    assert message(conn, b"XFORWARD ADDR=192.0.2.8\r\n")[0].xforward == {"ADDR": "192.0.2.8"}


@pytest.mark.parametrize(
    "between",
    [
        b"RSET\r\n",
        b"MAIL FROM:<c@x>\r\nRSET\r\n",
        b"MAIL FROM:<c@x>\r\nRCPT TO:<d@x>\r\nRSET\r\n",
        b"EHLO mta.test\r\n",  # an implicit RSET (RFC 5321 §4.1.4)
    ],
)
def test_reset_by_rset_and_ehlo(between: bytes) -> None:
    conn = connect()
    end, _ = message(conn, b"XFORWARD ADDR=192.0.2.7 NAME=n\r\n" + between)
    assert end.xforward == {}


def test_refused_inside_a_mail_transaction() -> None:
    conn = connect()
    xforward(conn, b"ADDR=192.0.2.7")
    _, out = feed(
        conn, b"MAIL FROM:<a@x>\r\nXFORWARD ADDR=192.0.2.99\r\nRCPT TO:<b@x>\r\nXFORWARD NAME=n\r\n"
    )
    assert out == (
        b"250 2.1.0 Ok\r\n503 5.5.1 Mail transaction in progress\r\n"
        b"250 2.1.5 Ok\r\n503 5.5.1 Mail transaction in progress\r\n"
    )
    events, _ = feed(conn, b"DATA\r\nhi\r\n.\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.xforward == {"ADDR": "192.0.2.7"}


@pytest.mark.parametrize(
    ("hello", "expected"),
    [
        (b"", b"503 5.5.1 Send EHLO first"),
        (b"HELO mta.test\r\n", b"503 5.5.1 Send EHLO first"),  # HELO did not offer it
    ],
)
def test_refused_before_ehlo(hello: bytes, expected: bytes) -> None:
    conn = connect(hello=False)
    _, out = feed(conn, hello + b"XFORWARD ADDR=192.0.2.7\r\n")
    assert out.endswith(expected + b"\r\n")


def test_lmtp_wants_lhlo_first() -> None:
    _, out = feed(connect(lmtp=True, hello=False), b"XFORWARD ADDR=192.0.2.7\r\n")
    assert out == b"503 5.5.1 Send LHLO first\r\n"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (b"", b"Syntax: XFORWARD attribute=value..."),
        (b"   ", b"Syntax: XFORWARD attribute=value..."),
        (b"NAME", b"Syntax: XFORWARD NAME=value"),
        (b"NAME=", b"Syntax: XFORWARD NAME=value"),
        (b"LOGIN=alice", b"Bad XFORWARD attribute name: LOGIN"),
        (b"=x", b"Bad XFORWARD attribute name: "),
        (b"N\xc3\xa9=x", b"Bad XFORWARD attribute name: N\\xc3\\xa9"),
        (b"NAME=" + b"n" * 256, b"XFORWARD NAME value too long"),
        (b"NAME=a+2", b"Bad XFORWARD NAME syntax"),  # "+" needs two hex digits
        (b"NAME=a+2e", b"Bad XFORWARD NAME syntax"),  # upper case ones (RFC 1891 §5)
        (b"NAME=a+ZZ", b"Bad XFORWARD NAME syntax"),
        (b"NAME=a=b", b"Bad XFORWARD NAME syntax"),  # "=" is not an xchar
        (b"NAME=a\x01b", b"Bad XFORWARD NAME syntax"),
        (b"NAME=a\xc3\xa9", b"Bad XFORWARD NAME syntax"),
        (b"NAME=a+20b", b"Bad XFORWARD NAME syntax"),  # decoded: no whitespace,
        (b"HELO=a+0D+0Ab", b"Bad XFORWARD HELO syntax"),  # no control characters,
        (b"HELO=a+C3+A9", b"Bad XFORWARD HELO syntax"),  # no non-ASCII,
        (b"HELO=a+40b", b"Bad XFORWARD HELO syntax"),  # nothing special in a header
        (b"HELO=<a>", b"Bad XFORWARD HELO syntax"),
        (b"IDENT=a;b", b"Bad XFORWARD IDENT syntax"),
        (b"ADDR=mua.example.org", b"Bad XFORWARD ADDR syntax"),
        (b"ADDR=IPV6:bogus", b"Bad XFORWARD ADDR syntax"),
        (b"ADDR=192.0.2.256", b"Bad XFORWARD ADDR syntax"),
        (b"PORT=x", b"Bad XFORWARD PORT syntax"),
        (b"PORT=65536", b"Bad XFORWARD PORT syntax"),
        (b"PORT=000025", b"Bad XFORWARD PORT syntax"),
        (b"PROTO=" + b"P" * 65, b"Bad XFORWARD PROTO syntax"),
        (b"SOURCE=ELSEWHERE", b"Bad XFORWARD SOURCE syntax"),
    ],
)
def test_syntax_errors(arg: bytes, expected: bytes) -> None:
    conn = connect()
    out = xforward(conn, b"ADDR=192.0.2.7 " + arg if arg.strip() else arg)
    assert out == b"501 5.5.4 " + expected + b"\r\n"
    # A refused command changes nothing, not even the attributes before the bad one.
    assert message(conn)[0].xforward == {}


def test_longest_values_allowed() -> None:
    conn = connect()
    name = b"n" * 255
    out = xforward(conn, b"NAME=" + name + b" PROTO=" + b"P" * 64 + b" PORT=65535 IDENT=+2B+2B" + b"i" * 249)
    assert out == b"250 2.0.0 Ok\r\n"
    assert message(conn)[0].xforward == {
        "NAME": name.decode(),
        "PROTO": "P" * 64,
        "PORT": "65535",
        "IDENT": "++" + "i" * 249,
    }


def test_refusals_count_towards_max_errors() -> None:
    conn = connect(max_errors=2)
    _, out = feed(conn, b"XFORWARD FOO=1\r\n" * 4)
    assert replies(out) == [b"501"] * 3 + [b"421"] and conn.closed


# --- properties ---------------------------------------------------------------------------------------

_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '<>()\\";@')


def xtext(value: bytes, extra: frozenset[int]) -> bytes:
    """RFC 1891 xtext, written apart from the codec; `extra` bytes are encoded though they need not be."""
    return b"".join(
        b"+%02X" % byte
        if byte in (0x2B, 0x3D) or not 0x21 <= byte <= 0x7E or byte in extra
        else bytes([byte])
        for byte in value
    )


@settings(max_examples=300)
@given(st.binary(max_size=60), st.frozensets(st.integers(0, 255)))
def test_xtext_round_trip(value: bytes, extra: frozenset[int]) -> None:
    assert decode_xtext(xtext(value, extra)) == value


free_text = st.text(_VALUE_CHARS, min_size=1, max_size=40).filter(
    lambda v: v.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
)
unavailable = st.sampled_from(["[UNAVAILABLE]", "[unavailable]", "[TEMPUNAVAIL]", "[Tempunavail]"])
attribute_values = {
    "NAME": free_text,
    "HELO": free_text,
    "IDENT": free_text,
    "PROTO": free_text,
    "ADDR": st.ip_addresses().map(str),
    "PORT": st.integers(0, 65535).map(str),
    "SOURCE": st.sampled_from(["LOCAL", "REMOTE"]),
}


@settings(max_examples=200)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(XFORWARD_ATTRIBUTES),
            st.one_of(unavailable, st.just("")),
            min_size=1,
        ).flatmap(
            lambda chosen: st.fixed_dictionaries(
                {name: attribute_values[name] if not word else st.just(word) for name, word in chosen.items()}
            )
        ),
        min_size=1,
        max_size=4,
    ),
    st.frozensets(st.integers(0x21, 0x7E)),
    st.integers(1, 40),
)
def test_any_valid_commands_accumulate(
    commands: list[dict[str, str]], extra: frozenset[int], step: int
) -> None:
    conn = connect()
    wire = b"".join(
        b"XFORWARD"
        + b"".join(
            b" " + name.swapcase().encode() + b"=" + xtext(value.encode(), extra)
            for name, value in cmd.items()
        )
        + b"\r\n"
        for cmd in commands
    )
    wire += b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n.\r\n"
    events: list[s.Event] = []
    for start in range(0, len(wire), step):
        events += feed(conn, wire[start : start + step])[0]
    expected: dict[str, str | None] = {}
    for cmd in commands:
        for name, value in cmd.items():
            expected[name] = None if value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]") else value
    end = next(e for e in events if isinstance(e, s.DataEnd))
    assert end.xforward == expected


xforward_lines = st.sampled_from(
    [
        b"XFORWARD NAME=mua.example.org ADDR=192.0.2.7 PORT=54321\r\n",
        b"XFORWARD PROTO=ESMTP HELO=x IDENT=ABC SOURCE=REMOTE\r\n",
        b"xforward addr=IPV6:2001:db8::1 name=[TEMPUNAVAIL]\r\n",
        b"XFORWARD ADDR=bogus\r\n",
        b"XFORWARD NAME=a+2\r\n",
        b"XFORWARD\r\n",
        b"EHLO mta.test\r\n",
        b"LHLO mta.test\r\n",
        b"HELO mta.test\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@x>\r\n",
        b"DATA\r\nbody\r\n.\r\n",
        b"RSET\r\n",
    ]
)


@settings(max_examples=300)
@given(st.lists(xforward_lines, max_size=30), st.integers(1, 64), st.booleans())
def test_xforward_sessions_through_the_fuzz_entry(lines: list[bytes], step: int, lmtp: bool) -> None:
    from tests.fuzz.fuzz_smtp_server import drive

    drive(b"".join(lines), step, lmtp=lmtp, xforward=True)
