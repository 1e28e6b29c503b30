from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import ProtocolError
from qsift.model import Params
from qsift.wire.smtp_client import (
    DATA,
    QUIT,
    RSET,
    Capabilities,
    ReplyParser,
    SmtpReply,
    UnsupportedByServer,
    hello,
    mail_from,
    needs_smtputf8,
    rcpt_to,
)

POSTFIX_EHLO = (
    b"250-mail.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)
QMAIL_EHLO = b"250-example.net\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

FULL = Capabilities(
    extended=True,
    pipelining=True,
    size=0,
    eightbitmime=True,
    smtputf8=True,
    dsn=True,
    enhanced_status_codes=True,
    chunking=True,
)


def parse_all(data: bytes, **limits: int) -> list[SmtpReply]:
    parser = ReplyParser(**limits)
    parser.receive_data(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def parse_one(data: bytes, **limits: int) -> SmtpReply:
    [reply] = parse_all(data, **limits)
    return reply


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- SmtpReply ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "positive", "transient", "permanent"),
    [
        (250, True, False, False),
        (354, False, False, False),
        (451, False, True, False),
        (554, False, False, True),
    ],
)
def test_reply_classes(code: int, positive: bool, transient: bool, permanent: bool) -> None:
    reply = SmtpReply(code, ("a",))
    assert (reply.positive, reply.transient, reply.permanent) == (positive, transient, permanent)


def test_reply_text_and_line() -> None:
    reply = SmtpReply(451, ("4.3.0 try", "again later"))
    assert reply.text == "4.3.0 try again later"
    assert reply.line() == "451 4.3.0 try again later"


# --- ReplyParser: examples ----------------------------------------------------------------------------


def test_single_line_reply() -> None:
    assert parse_one(b"220 mx.example.net ESMTP\r\n") == SmtpReply(220, ("mx.example.net ESMTP",))


def test_multiline_reply_with_bare_lf_and_empty_texts() -> None:
    assert parse_one(b"250-first\n250-\r\n250 \n") == SmtpReply(250, ("first", "", ""))


def test_bare_code_line_is_a_last_line() -> None:
    assert parse_all(b"250\r\n354\n") == [SmtpReply(250, ("",)), SmtpReply(354, ("",))]


def test_text_is_decoded_with_replacement() -> None:
    assert parse_one(b"550 caf\xc3\xa9 \xff\r\n").lines == ("caf\u00e9 \ufffd",)


def test_partial_reply_needs_more_data() -> None:
    parser = ReplyParser()
    parser.receive_data(b"250-mail.example.net\r\n250-PIPE")
    assert parser.next_reply() is None
    parser.receive_data(b"LINING\r")
    assert parser.next_reply() is None
    assert parser.buffered == len(b"250-PIPELINING\r")
    parser.receive_data(b"\n250 8BITMIME\r\n220 next")
    assert parser.next_reply() == SmtpReply(250, ("mail.example.net", "PIPELINING", "8BITMIME"))
    assert parser.next_reply() is None
    assert parser.buffered == len(b"220 next")


def test_pipelined_replies_come_out_one_by_one() -> None:
    assert [r.code for r in parse_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n")] == [
        250,
        250,
        550,
        354,
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b"25\r\n",
        b"2x0 ok\r\n",
        b"150 ok\r\n",
        b"650 ok\r\n",
        b"250_ok\r\n",
        b"250ok\r\n",
        b" 250 ok\r\n",
        b"\xd9\xa2\xd9\xa5\xd9\xa0 ok\r\n",
    ],
)
def test_malformed_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        parse_all(line)


def test_continuation_with_another_code() -> None:
    with pytest.raises(ProtocolError, match="continues"):
        parse_all(b"250-one\r\n251 two\r\n")


def test_too_many_lines() -> None:
    assert parse_one(b"250-a\r\n250-b\r\n250 c\r\n", max_lines=3).lines == ("a", "b", "c")
    with pytest.raises(ProtocolError, match="lines"):
        parse_all(b"250-a\r\n250-b\r\n250-c\r\n", max_lines=3)


def test_long_line_within_one_chunk() -> None:
    assert parse_one(b"250 " + b"x" * 6 + b"\r\n", max_line_length=10).lines == ("x" * 6,)
    with pytest.raises(ProtocolError, match="longer"):
        parse_all(b"250 " + b"x" * 7 + b"\r\n", max_line_length=10)


def test_long_line_is_refused_before_its_end() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.receive_data(b"250 " + b"x" * 6 + b"\r")
    assert parser.next_reply() is None
    parser.receive_data(b"y")
    with pytest.raises(ProtocolError, match="longer"):
        parser.next_reply()
    assert parser.buffered == 0


def test_failure_is_sticky_and_later_data_is_dropped() -> None:
    parser = ReplyParser()
    parser.receive_data(b"hello\r\n250 ok\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()
    parser.receive_data(b"250 ok\r\n")
    assert parser.buffered == 0
    for _ in range(2):
        with pytest.raises(ProtocolError, match="malformed"):
            parser.next_reply()


@pytest.mark.parametrize(("length", "lines"), [(2, 1), (3, 0)])
def test_limits_must_allow_a_reply(length: int, lines: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        ReplyParser(max_line_length=length, max_lines=lines)


# --- ReplyParser: properties --------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)
replies = st.lists(
    st.builds(SmtpReply, st.integers(200, 599), st.lists(text, min_size=1, max_size=5).map(tuple)),
    max_size=6,
)


def render(reply: SmtpReply, data: st.DataObject) -> bytes:
    out = b""
    for i, line in enumerate(reply.lines):
        last = i == len(reply.lines) - 1
        separator = " " if last else "-"
        if last and not line and data.draw(st.booleans()):
            separator = ""
        ending = data.draw(st.sampled_from(["\r\n", "\n"]))
        out += f"{reply.code}{separator}{line}{ending}".encode()
    return out


@given(replies, st.lists(st.integers(0, 3000), max_size=20), st.data())
def test_rendered_replies_parse_back_in_any_chunking(
    expected: list[SmtpReply], cuts: list[int], data: st.DataObject
) -> None:
    wire = b"".join(render(reply, data) for reply in expected)
    parser = ReplyParser()
    got: list[SmtpReply] = []
    for chunk in chunked(wire, cuts):
        parser.receive_data(chunk)
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    assert got == expected
    assert parser.buffered == 0


@given(
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=30),
    st.integers(3, 40),
    st.integers(1, 5),
)
def test_arbitrary_bytes_raise_only_protocol_error_in_bounded_memory(
    wire: bytes, cuts: list[int], max_line_length: int, max_lines: int
) -> None:
    parser = ReplyParser(max_line_length=max_line_length, max_lines=max_lines)
    failed = False
    for chunk in chunked(wire, cuts):
        parser.receive_data(chunk)
        # One line's worth, plus a CR that may be half of its CRLF, plus the chunk just read.
        assert parser.buffered <= max_line_length + 1 + len(chunk)
        try:
            while (reply := parser.next_reply()) is not None:
                assert 200 <= reply.code <= 599
                assert 1 <= len(reply.lines) <= max_lines
        except ProtocolError:
            failed = True
        if failed:
            with pytest.raises(ProtocolError):
                parser.next_reply()
        assert parser.buffered <= max_line_length + 1


# --- Capabilities -------------------------------------------------------------------------------------


def test_postfix_ehlo() -> None:
    assert Capabilities.from_ehlo(parse_one(POSTFIX_EHLO)) == Capabilities(
        extended=True,
        pipelining=True,
        size=10240000,
        eightbitmime=True,
        smtputf8=True,
        dsn=True,
        enhanced_status_codes=True,
        chunking=True,
    )


def test_qmail_smtpd_ehlo() -> None:
    assert Capabilities.from_ehlo(parse_one(QMAIL_EHLO)) == Capabilities(
        extended=True, pipelining=True, eightbitmime=True
    )


def test_greeting_line_is_not_a_keyword_and_case_does_not_matter() -> None:
    caps = Capabilities.from_ehlo(SmtpReply(250, ("PIPELINING", "", "  dsn  ", "Size", "auth=login")))
    assert caps == Capabilities(extended=True, dsn=True, size=0)


@pytest.mark.parametrize(("line", "size"), [("SIZE", 0), ("SIZE 0", 0), ("SIZE 12x", 0), ("SIZE \u0662", 0)])
def test_size_without_a_usable_number_means_no_limit(line: str, size: int) -> None:
    assert Capabilities.from_ehlo(SmtpReply(250, ("mx", line))).size == size


def test_basic_capabilities() -> None:
    assert Capabilities.basic() == Capabilities()
    assert not Capabilities.basic().extended


# --- hello and constants ------------------------------------------------------------------------------


def test_hello_variants() -> None:
    assert hello("qsift.example.net", lmtp=False) == b"EHLO qsift.example.net\r\n"
    assert hello("qsift.example.net", lmtp=False, extended=False) == b"HELO qsift.example.net\r\n"
    assert hello("qsift.example.net", lmtp=True) == b"LHLO qsift.example.net\r\n"
    assert hello("[192.0.2.1]", lmtp=True, extended=False) == b"LHLO [192.0.2.1]\r\n"


@pytest.mark.parametrize("name", ["", "a b", "a\r\nRSET", "a\0", "<a>"])
def test_hello_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="hello name"):
        hello(name, lmtp=False)


def test_constants() -> None:
    assert (DATA, RSET, QUIT) == (b"DATA\r\n", b"RSET\r\n", b"QUIT\r\n")


# --- needs_smtputf8 -----------------------------------------------------------------------------------


def test_needs_smtputf8() -> None:
    assert not needs_smtputf8(b"a@example.net", [b"b@example.net"], (("BODY", "8BITMIME"),))
    assert not needs_smtputf8(b"", [], ())
    assert needs_smtputf8(b"j\xc3\xb6rg@example.net", [b"b@example.net"], ())
    assert needs_smtputf8(b"a@example.net", [b"b@example.net", b"\xe7\x94\xa8\xe6\x88\xb7@example.cn"], ())
    assert needs_smtputf8(b"a@example.net", [b"b@example.net"], (("smtputf8", None),))


# --- mail_from ----------------------------------------------------------------------------------------


def test_mail_from_plain_and_null_sender() -> None:
    assert mail_from(b"a@example.net", (), Capabilities()) == b"MAIL FROM:<a@example.net>\r\n"
    assert mail_from(b"", (), FULL) == b"MAIL FROM:<>\r\n"


def test_mail_from_carries_known_parameters_to_a_server_that_offers_them() -> None:
    params: Params = (
        ("SIZE", "1"),
        ("BODY", "8BITMIME"),
        ("RET", "HDRS"),
        ("ENVID", "QQ314159"),
        ("SMTPUTF8", None),
        ("AUTH", "<>"),
        ("XFOO", None),
    )
    assert mail_from(b"a@example.net", params, FULL, size=2048) == (
        b"MAIL FROM:<a@example.net> SIZE=2048 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SMTPUTF8\r\n"
    )


def test_mail_from_without_ehlo_has_no_parameters() -> None:
    params: Params = (("BODY", "8BITMIME"), ("RET", "FULL"))
    basic = Capabilities(size=1000, eightbitmime=True, dsn=True)
    assert mail_from(b"a@example.net", params, basic, size=10) == b"MAIL FROM:<a@example.net>\r\n"


def test_mail_from_drops_what_the_server_does_not_offer() -> None:
    params: Params = (("BODY", "8BITMIME"), ("RET", "FULL"), ("ENVID", "x"), ("SMTPUTF8", None))
    qmail = Capabilities.from_ehlo(parse_one(QMAIL_EHLO))
    assert (
        mail_from(b"a@example.net", params, qmail, size=10) == b"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n"
    )
    assert (
        mail_from(b"a@example.net", params, Capabilities(extended=True)) == b"MAIL FROM:<a@example.net>\r\n"
    )


def test_mail_from_size() -> None:
    sized = Capabilities(extended=True, size=10240000)
    assert mail_from(b"a@x", (("SIZE", "5"),), sized) == b"MAIL FROM:<a@x>\r\n"
    assert mail_from(b"a@x", (), sized, size=0) == b"MAIL FROM:<a@x> SIZE=0\r\n"
    assert mail_from(b"a@x", (), Capabilities(extended=True), size=7) == b"MAIL FROM:<a@x>\r\n"
    with pytest.raises(ValueError, match="negative"):
        mail_from(b"a@x", (), sized, size=-1)


@pytest.mark.parametrize("body", ["BINARYMIME", "binarymime"])
def test_mail_from_never_offers_binarymime(body: str) -> None:
    assert mail_from(b"a@x", (("BODY", body),), FULL) == b"MAIL FROM:<a@x>\r\n"


def test_mail_from_keeps_the_first_of_repeated_parameters() -> None:
    params: Params = (("BODY", "7BIT"), ("body", "8BITMIME"), ("SMTPUTF8", None), ("SMTPUTF8", None))
    assert mail_from(b"a@x", params, FULL) == b"MAIL FROM:<a@x> BODY=7BIT SMTPUTF8\r\n"


def test_mail_from_smtputf8() -> None:
    assert mail_from(b"j\xc3\xb6rg@x", (), FULL, smtputf8=True) == b"MAIL FROM:<j\xc3\xb6rg@x> SMTPUTF8\r\n"
    qmail = Capabilities.from_ehlo(parse_one(QMAIL_EHLO))
    # Asked for by the client but not needed by this message: dropped, as for any other extension.
    assert mail_from(b"a@x", (("SMTPUTF8", None),), qmail) == b"MAIL FROM:<a@x>\r\n"
    with pytest.raises(UnsupportedByServer) as raised:
        mail_from(b"j\xc3\xb6rg@x", (), qmail, smtputf8=True)
    assert (raised.value.smtp_code, raised.value.enhanced_status) == (553, "5.6.7")
    with pytest.raises(UnsupportedByServer):
        mail_from(b"a@x", (), Capabilities(), smtputf8=True)


def test_mail_from_parameter_values_are_encoded_as_they_came() -> None:
    value = b"r\xc3\xa9f\xff".decode("utf-8", "surrogateescape")
    assert mail_from(b"a@x", (("ENVID", value),), FULL) == b"MAIL FROM:<a@x> ENVID=r\xc3\xa9f\xff\r\n"


@pytest.mark.parametrize("sender", [b"a\r\nRSET", b"a\n", b"a\r", b"a\0b", b"a>b", b"<a"])
def test_mail_from_refuses_bad_senders(sender: bytes) -> None:
    with pytest.raises(ValueError, match="sender"):
        mail_from(sender, (), FULL)


@pytest.mark.parametrize(
    "params",
    [
        (("BODY", "8BIT\r\nRSET"),),
        (("RET", "FU LL"),),
        (("ENVID", ""),),
        (("ENVID", "a\0"),),
        (("ENVID", "\x7f"),),
        (("BODY", None),),
        (("RET", None),),
    ],
)
def test_mail_from_refuses_bad_values_it_would_send(params: Params) -> None:
    with pytest.raises(ValueError, match="parameter"):
        mail_from(b"a@x", params, FULL)


@pytest.mark.parametrize("keyword", ["", "BO DY", "BODY\r\nRSET", "X_FOO", "B\u00d6DY", "K="])
def test_mail_from_refuses_malformed_keywords_even_unsent(keyword: str) -> None:
    with pytest.raises(ValueError, match="keyword"):
        mail_from(b"a@x", ((keyword, None),), Capabilities())


# --- rcpt_to ------------------------------------------------------------------------------------------


def test_rcpt_to_carries_dsn_parameters_only() -> None:
    params: Params = (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;b@example.net"), ("XFOO", "1"))
    assert rcpt_to(b"b@example.net", params, FULL) == (
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net\r\n"
    )


def test_rcpt_to_drops_dsn_parameters_without_dsn() -> None:
    params: Params = (("NOTIFY", "NEVER"),)
    qmail = Capabilities.from_ehlo(parse_one(QMAIL_EHLO))
    assert rcpt_to(b"b@x", params, qmail) == b"RCPT TO:<b@x>\r\n"
    assert rcpt_to(b"b@x", params, Capabilities(dsn=True)) == b"RCPT TO:<b@x>\r\n"


def test_rcpt_to_keeps_the_first_of_repeated_parameters() -> None:
    params: Params = (("NOTIFY", "NEVER"), ("notify", "SUCCESS"))
    assert rcpt_to(b"b@x", params, FULL) == b"RCPT TO:<b@x> NOTIFY=NEVER\r\n"


@pytest.mark.parametrize("recipient", [b"", b"b\r\nDATA", b"b\0", b"<b>"])
def test_rcpt_to_refuses_bad_recipients(recipient: bytes) -> None:
    with pytest.raises(ValueError, match="recipient"):
        rcpt_to(recipient, (), FULL)


@pytest.mark.parametrize(
    "params",
    [(("ORCPT", "rfc822;b @x"),), (("NOTIFY", None),), (("NOTIFY", "NEVER\r\nDATA"),), (("NO TIFY", "x"),)],
)
def test_rcpt_to_refuses_bad_parameters(params: Params) -> None:
    with pytest.raises(ValueError, match="parameter"):
        rcpt_to(b"b@x", params, FULL)


def test_angle_brackets_in_xtext_values_go_out_escaped() -> None:
    # xtext allows "<" and ">"; some clients send ORCPT=rfc822;<b@x>. The escape means the same.
    assert rcpt_to(b"b@x", (("ORCPT", "rfc822;<b@x>"),), FULL) == b"RCPT TO:<b@x> ORCPT=rfc822;+3Cb@x+3E\r\n"
    assert mail_from(b"a@x", (("ENVID", "<id>"),), FULL).startswith(b"MAIL FROM:<a@x> ")
    assert b"ENVID=+3Cid+3E" in mail_from(b"a@x", (("ENVID", "<id>"),), FULL)
