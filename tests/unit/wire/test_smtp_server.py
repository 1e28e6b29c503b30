"""The sans-IO SMTP/LMTP server: every command, every refusal, the body stream and its end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.model import Answer, Reply
from qsift.wire import smtp_server as s

OK = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok, queued")


def connect(**overrides: object) -> s.SmtpServerConnection:
    settings_ = s.ServerSettings(hostname="mx.test", **overrides)  # type: ignore[arg-type]
    conn = s.SmtpServerConnection(settings_)
    conn.data_to_send()
    return conn


def feed(conn: s.SmtpServerConnection, data: bytes, *, start: bool = True) -> tuple[list[s.Event], bytes]:
    """Feed bytes, collect events up to NeedData/Paused/ConnectionClosed, return them and the output.

    Every DATA is taken (`start_data`) as it comes, as an application with room does, unless `start` is
    False: then the events stop at the Paused that follows DataStart.
    """
    conn.receive_data(data)
    events: list[s.Event] = []
    while True:
        event = conn.next_event()
        events.append(event)
        if isinstance(event, s.DataStart) and start:
            conn.start_data()
        elif isinstance(event, s.NeedData | s.Paused | s.ConnectionClosed):
            return events, conn.data_to_send()


def replies(output: bytes) -> list[bytes]:
    return [line[:3] for line in output.split(b"\r\n") if line]


def ready(conn: s.SmtpServerConnection, *, ehlo: bool = True) -> None:
    feed(conn, b"EHLO client.test\r\n" if ehlo else b"HELO client.test\r\n")


def body(events: list[s.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, s.DataChunk))


def test_greeting_and_ehlo_capabilities() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="mx.test", max_message_size=1000))
    assert isinstance(conn.next_event(), s.NeedData)  # the greeting is queued on first use either way
    assert conn.data_to_send() == b"220 mx.test ESMTP qsift\r\n"
    events, out = feed(conn, b"ehlo client.test extra words\r\n")
    assert events[0] == s.Hello("client.test", extended=True)
    assert out == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
    )


def test_helo_is_not_extended_and_refuses_parameters() -> None:
    conn = connect()
    events, out = feed(conn, b"HELO client.test\r\n")
    assert events[0] == s.Hello("client.test", extended=False) and out == b"250 mx.test\r\n"
    _, out = feed(conn, b"MAIL FROM:<a@x> BODY=8BITMIME\r\nRCPT TO:<b@x> NOTIFY=NEVER\r\n")
    assert replies(out) == [b"555", b"503"]
    _, out = feed(conn, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x> NOTIFY=NEVER\r\n")
    assert replies(out) == [b"250", b"555"]


@pytest.mark.parametrize("line", [b"HELO", b"EHLO \x01bad", b"EHLO  "])
def test_bad_hello(line: bytes) -> None:
    _, out = feed(connect(), line + b"\r\n")
    assert out.startswith(b"501 5.5.4")


def test_lmtp_greets_as_lmtp_and_wants_lhlo() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="mx.test", lmtp=True))
    assert conn.data_to_send() == b"220 mx.test LMTP qsift\r\n"
    _, out = feed(conn, b"EHLO a\r\nHELO a\r\nMAIL FROM:<>\r\n")
    assert out == b"500 5.5.1 Use LHLO\r\n" * 2 + b"503 5.5.1 Send LHLO first\r\n"
    events, out = feed(conn, b"LHLO a\r\n")
    assert events[0] == s.Hello("a", extended=True) and out.startswith(b"250-mx.test")


def test_smtp_does_not_know_lhlo() -> None:
    _, out = feed(connect(), b"LHLO a\r\nMAIL FROM:<>\r\n")
    assert out == b"500 5.5.2 Command unrecognized\r\n503 5.5.1 Send HELO/EHLO first\r\n"


def test_a_whole_pipelined_transaction() -> None:
    conn = connect()
    events, out = feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@x> SIZE=100 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=q+2Bx\r\n"
        b"RCPT TO:<b@x> NOTIFY=success,delay ORCPT=rfc822;b@x\r\nRCPT TO:<c@x>\r\nDATA\r\n",
    )
    assert replies(out)[-4:] == [b"250", b"250", b"250", b"354"]
    mail_params = (("BODY", "8BITMIME"), ("SMTPUTF8", None), ("RET", "HDRS"), ("ENVID", "q+2Bx"))
    assert s.MailFrom(b"a@x", mail_params) in events
    assert s.RcptTo(b"b@x", (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", "rfc822;b@x"))) in events
    assert isinstance(events[-2], s.DataStart)
    events, out = feed(conn, b"Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
    assert out == b""
    assert body(events) == b"Subject: hi\r\n\r\n.leading dot\r\n"
    end = events[-2]
    assert isinstance(end, s.DataEnd) and isinstance(events[-1], s.Paused)
    assert end.sender == b"a@x" and [r for r, _ in end.recipients] == [b"b@x", b"c@x"]
    assert end.mail_params == mail_params and end.size == 29 and not end.too_big
    assert isinstance(conn.next_event(), s.Paused)
    conn.answer_data([OK])
    assert isinstance(conn.next_event(), s.Quit)
    assert conn.data_to_send() == b"250 2.0.0 Ok, queued\r\n221 2.0.0 Bye\r\n"
    assert conn.closed and isinstance(conn.next_event(), s.ConnectionClosed)
    conn.receive_data(b"late bytes\r\n")  # ignored once closed
    assert conn.data_to_send() == b""


def test_lmtp_answers_once_per_recipient() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="h", lmtp=True))
    conn.data_to_send()
    feed(conn, b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    events, _ = feed(conn, b"x\r\n.\r\n")
    assert isinstance(events[-2], s.DataEnd)
    with pytest.raises(RuntimeError, match="needs 2 replies"):
        conn.answer_data([OK])
    conn.answer_data([OK, Reply(Answer.REJECT, 554, "5.7.0", "Rejected: VIRUS Eicar\r\nnext")])
    assert conn.data_to_send() == b"250 2.0.0 Ok, queued\r\n554 5.7.0 Rejected: VIRUS Eicar  next\r\n"


def test_answer_data_out_of_turn() -> None:
    with pytest.raises(RuntimeError, match="no message waits"):
        connect().answer_data([OK])


def test_sequence_errors() -> None:
    conn = connect()
    _, out = feed(conn, b"RCPT TO:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\n")
    assert replies(out) == [b"503", b"503", b"503"]
    ready(conn)
    _, out = feed(conn, b"DATA\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nDATA\r\nDATA x\r\n")
    assert out == (
        b"503 5.5.1 Need MAIL command\r\n250 2.1.0 Ok\r\n503 5.5.1 Nested MAIL command\r\n"
        b"554 5.5.1 No valid recipients\r\n501 5.5.4 Syntax: DATA\r\n"
    )
    _, out = feed(conn, b"RSET\r\nRCPT TO:<a@x>\r\n")
    assert replies(out) == [b"250", b"503"]


def test_simple_commands() -> None:
    _, out = feed(connect(), b"NOOP\r\nVRFY x\r\nHELP\r\nEXPN list\r\nSTARTTLS\r\nBDAT 10\r\nFOO\r\n\r\n")
    assert replies(out) == [b"250", b"252", b"214", b"502", b"502", b"502", b"500", b"500"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL TO:<a@x>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a@x", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@x>SIZE=1", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<@relay:a@x", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<@relay>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a\x01@x>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a b@x>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<" + b"a" * 30 + b">", b"501 5.1.7 Sender address too long"),
        (b"MAIL FROM:<> SIZE=99999", b"552 5.3.4 Message size exceeds fixed limit"),
        (b"MAIL FROM:<> SIZE=x", b"501 5.5.4 Bad value for parameter SIZE"),
        (b"MAIL FROM:<> SIZE", b"501 5.5.4 Bad value for parameter SIZE"),
        (b"MAIL FROM:<> BODY=BINARYMIME", b"555 5.5.4 BODY=BINARYMIME needs CHUNKING, which is not offered"),
        (b"MAIL FROM:<> BODY=9BIT", b"501 5.5.4 Bad value for parameter BODY"),
        (b"MAIL FROM:<> BODY", b"501 5.5.4 Bad value for parameter BODY"),
        (b"MAIL FROM:<> SMTPUTF8=yes", b"501 5.5.4 Bad value for parameter SMTPUTF8"),
        (b"MAIL FROM:<> RET=ALL", b"501 5.5.4 Bad value for parameter RET"),
        (b"MAIL FROM:<> RET", b"501 5.5.4 Bad value for parameter RET"),
        (b"MAIL FROM:<> ENVID", b"501 5.5.4 Bad value for parameter ENVID"),
        (b"MAIL FROM:<> ENVID=" + b"e" * 101, b"501 5.5.4 Bad value for parameter ENVID"),
        (b"MAIL FROM:<> AUTH=<>", b"555 5.5.4 Unsupported parameter AUTH"),
        (b"MAIL FROM:<> =x", b"501 5.5.4 Bad parameter syntax"),
        (b"MAIL FROM:<> SIZE=", b"501 5.5.4 Bad parameter syntax"),
        (b"MAIL FROM:<> RET=FULL RET=HDRS", b"501 5.5.4 Parameter RET given twice"),
        (b"RCPT TO:<a@x>", b"503 5.5.1 Need MAIL command"),
    ],
)
def test_mail_refusals(line: bytes, expected: bytes) -> None:
    conn = connect(max_message_size=1000, max_address_length=20)
    ready(conn)
    _, out = feed(conn, line + b"\r\n")
    assert out == expected + b"\r\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"RCPT FROM:<a@x>", b"501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"RCPT TO:<>", b"501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<" + b"a" * 30 + b">", b"501 5.1.3 Recipient address too long"),
        (b"RCPT TO:<a@x> NOTIFY=NEVER,SUCCESS", b"501 5.5.4 Bad value for parameter NOTIFY"),
        (b"RCPT TO:<a@x> NOTIFY=DELAY,DELAY", b"501 5.5.4 Bad value for parameter NOTIFY"),
        (b"RCPT TO:<a@x> NOTIFY", b"501 5.5.4 Bad value for parameter NOTIFY"),
        (b"RCPT TO:<a@x> ORCPT=rfc822", b"501 5.5.4 Bad value for parameter ORCPT"),
        (b"RCPT TO:<a@x> ORCPT=;a@x", b"501 5.5.4 Bad value for parameter ORCPT"),
        (b"RCPT TO:<a@x> ORCPT=rfc822;" + b"a" * 500, b"501 5.5.4 Bad value for parameter ORCPT"),
        (b"RCPT TO:<a@x> ORCPT", b"501 5.5.4 Bad value for parameter ORCPT"),
        (b"RCPT TO:<a@x> FOO=1", b"555 5.5.4 Unsupported parameter FOO"),
        (b"RCPT TO:<a@x> NOTIFY=A\x01", b"501 5.5.4 Bad parameter syntax"),
    ],
)
def test_rcpt_refusals(line: bytes, expected: bytes) -> None:
    conn = connect(max_address_length=20)
    ready(conn)
    feed(conn, b"MAIL FROM:<>\r\n")
    _, out = feed(conn, line + b"\r\n")
    assert out == expected + b"\r\n"


@pytest.mark.parametrize(
    ("path", "address"),
    [
        (b"FROM: <a@x>", b"a@x"),
        (b"from:a@x", b"a@x"),
        (b"FROM:<@r1,@r2:a@x>", b"a@x"),
        (b'FROM:<"john doe"@x>', b'"john doe"@x'),
        (b"FROM:<>", b""),
        (b"FROM:<J\xc3\xb6rg@x> SMTPUTF8", b"J\xc3\xb6rg@x"),
    ],
)
def test_lenient_paths(path: bytes, address: bytes) -> None:
    conn = connect()
    ready(conn)
    events, out = feed(conn, b"MAIL " + path + b"\r\n")
    assert out == b"250 2.1.0 Ok\r\n"
    assert isinstance(events[0], s.MailFrom) and events[0].sender == address


def test_postmaster_without_domain_and_bare_lf_commands() -> None:
    conn = connect()
    events, out = feed(conn, b"HELO c\nMAIL FROM:<>\nRCPT TO:<Postmaster>\n")
    assert replies(out) == [b"250", b"250", b"250"]
    assert s.RcptTo(b"Postmaster", ()) in events


def test_too_many_recipients_is_a_temporary_refusal() -> None:
    conn = connect(max_recipients=2)
    ready(conn)
    _, out = feed(conn, b"MAIL FROM:<>\r\n" + b"".join(b"RCPT TO:<r%d@x>\r\n" % i for i in range(3)))
    assert replies(out) == [b"250", b"250", b"250", b"452"] and b"4.5.3 Too many recipients" in out


def test_long_command_line_is_discarded_as_it_comes() -> None:
    conn = connect(max_line_length=64)
    for _ in range(10):
        events, out = feed(conn, b"X" * 50)
        assert out == b"" and isinstance(events[-1], s.NeedData)
    _, out = feed(conn, b"tail\r\nNOOP\r\n")
    assert out == b"500 5.5.6 Line too long\r\n250 2.0.0 Ok\r\n"
    _, out = feed(conn, b"N" * 70 + b"\r\n")
    assert out == b"500 5.5.6 Line too long\r\n"


def test_too_many_errors_closes_with_421() -> None:
    conn = connect(max_errors=3)
    events, out = feed(conn, b"FOO\r\n" * 10)
    assert replies(out) == [b"500"] * 4 + [b"421"]
    assert isinstance(events[-1], s.ConnectionClosed) and conn.closed


def test_reject_connection_instead_of_greeting() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="h"))
    conn.reject_connection(Reply(Answer.TEMPFAIL, 421, "4.7.1", "access denied"))
    assert conn.data_to_send() == b"421 4.7.1 access denied\r\n"
    assert conn.closed and isinstance(conn.next_event(), s.ConnectionClosed)


def test_reject_connection_after_greeting_only_closes() -> None:
    conn = connect()
    conn.reject_connection(Reply(Answer.TEMPFAIL, 421, "4.3.2", "too busy"))
    assert conn.data_to_send() == b"" and conn.closed


def open_data(**overrides: object) -> s.SmtpServerConnection:
    conn = connect(**overrides)
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    return conn


def test_only_crlf_dot_crlf_ends_the_data() -> None:
    conn = open_data()
    smuggled = b"a\r\n.\nMAIL FROM:<x@y>\r\nb\n.\r\nc\r.\r\nd\n.\n"
    events, _ = feed(conn, smuggled)
    assert not any(isinstance(e, s.DataEnd) for e in events)
    events, _ = feed(conn, b"\r\n.\r\n")
    assert isinstance(events[-2], s.DataEnd)
    assert body(events) == b"\r\n"


def test_smuggling_body_is_carried_as_content() -> None:
    conn = open_data()
    events, _ = feed(conn, b"a\r\n.\nMAIL\r\nb\n.\r\n.\r\n")
    assert body(events) == b"a\r\n\nMAIL\r\nb\n.\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_body_split_anywhere(step: int) -> None:
    conn = open_data()
    data = b"..\r\n...\r\nx\r\r\n..y\r\n.z\r\n\r\n.\r\n"
    events: list[s.Event] = []
    for start in range(0, len(data), step):
        more, _ = feed(conn, data[start : start + step])
        events += more
    assert body(events) == b".\r\n..\r\nx\r\r\n.y\r\nz\r\n\r\n"
    assert isinstance(events[-2], s.DataEnd)


def test_empty_body() -> None:
    events, _ = feed(open_data(), b".\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.size == 0 and body(events) == b""


def test_too_big_body_is_counted_not_kept() -> None:
    conn = open_data(max_message_size=10)
    events, _ = feed(conn, b"12345\r\n")
    assert body(events) == b"12345\r\n"
    events, _ = feed(conn, b"67890\r\nmore\r\n.\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.too_big and end.size == 20 and body(events) == b""


def test_client_gone_mid_message() -> None:
    conn = open_data()
    feed(conn, b"half a mess")
    events, _ = feed(conn, b"")
    assert isinstance(events[-1], s.ConnectionClosed) and conn.closed


def test_eof_after_complete_commands_processes_them_first() -> None:
    conn = connect()
    conn.receive_data(b"NOOP\r\nNOO")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), s.ConnectionClosed)
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"


def test_input_while_paused_is_kept_then_served() -> None:
    conn = open_data()
    feed(conn, b"x\r\n.\r\n")
    conn.receive_data(b"RSET\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), s.Paused)
    conn.answer_data([OK])
    assert isinstance(conn.next_event(), s.ConnectionClosed)
    assert conn.data_to_send() == b"250 2.0.0 Ok, queued\r\n250 2.0.0 Ok\r\n"


def test_flood_while_paused_closes_after_the_answer() -> None:
    conn = open_data()
    feed(conn, b"x\r\n.\r\n")
    for _ in range(100):
        conn.receive_data(b"N" * 4096)
    conn.answer_data([OK])
    assert (
        conn.data_to_send()
        == b"250 2.0.0 Ok, queued\r\n421 4.7.0 Too much pipelined input, closing connection\r\n"
    )
    assert conn.closed


def test_second_message_on_the_same_connection() -> None:
    conn = open_data()
    feed(conn, b"one\r\n.\r\n")
    conn.answer_data([OK])
    events, out = feed(conn, b"MAIL FROM:<c@x>\r\nRCPT TO:<d@x>\r\nDATA\r\ntwo\r\n.\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.sender == b"c@x" and end.recipients == [(b"d@x", ())]
    assert body(events) == b"two\r\n"
    assert replies(out) == [b"250", b"250", b"250", b"354"]


# --- the application's decision on DATA ---------------------------------------------------------------

BUSY = Reply(Answer.TEMPFAIL, 451, "4.3.2", "too busy, try later")
PIPELINING_CLOSE = b"421 4.5.0 Improper use of SMTP command pipelining, closing connection\r\n"


def ask_data(**overrides: object) -> s.SmtpServerConnection:
    """A connection whose DATA waits for start_data or refuse_data, its replies so far read."""
    conn = connect(**overrides)
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n", start=False)
    assert events[-2:] == [s.DataStart(), s.Paused()] and replies(out)[-2:] == [b"250", b"250"]
    return conn


def test_data_waits_for_the_application_with_nothing_sent() -> None:
    conn = ask_data()
    conn.receive_data(b"early")  # neither content nor a command yet
    assert isinstance(conn.next_event(), s.Paused) and conn.data_to_send() == b""
    conn.start_data()
    assert conn.data_to_send() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    events, _ = feed(conn, b" content\r\n.\r\n")
    assert body(events) == b"early content\r\n" and isinstance(events[-2], s.DataEnd)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # RFC 5321 §4.1.4: a refused command leaves the state as it was, so the envelope stays.
        (b"MAIL FROM:<c@x>\r\n", [b"503"]),
        (b"RCPT TO:<c@x>\r\n", [b"250"]),
        (b"RSET\r\nMAIL FROM:<c@x>\r\n", [b"250", b"250"]),
        (b"QUIT\r\n", [b"221"]),
        (b"NOOP\r\n", [b"250"]),
    ],
)
def test_refused_data_keeps_the_envelope(after: bytes, expected: list[bytes]) -> None:
    conn = ask_data()
    conn.refuse_data(BUSY)
    assert conn.data_to_send() == b"451 4.3.2 too busy, try later\r\n"
    _, out = feed(conn, after)
    assert replies(out) == expected


def test_data_again_after_a_refusal_asks_again_with_the_same_envelope() -> None:
    conn = ask_data()
    conn.refuse_data(BUSY)
    events, out = feed(conn, b"DATA\r\n", start=False)
    assert events[-2:] == [s.DataStart(), s.Paused()] and out == b"451 4.3.2 too busy, try later\r\n"
    conn.start_data()
    events, _ = feed(conn, b"x\r\n.\r\n")
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.sender == b"a@x" and end.recipients == [(b"b@x", ())]


def test_a_refusal_is_not_a_client_error() -> None:
    conn = ask_data(max_errors=0)
    conn.refuse_data(BUSY)
    _, out = feed(conn, b"RSET\r\n")
    assert out == b"451 4.3.2 too busy, try later\r\n250 2.0.0 Ok\r\n" and not conn.closed


@pytest.mark.parametrize(
    "early",
    [
        b"Subject: sent without waiting\r\n",
        # A message whose own lines are a transaction: read as commands they would be one (smuggling).
        b"x\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\nevil\r\n.\r\n",
        b"QUIT\r\n",
    ],
)
def test_content_sent_ahead_of_a_refusal_is_never_read(early: bytes) -> None:
    conn = ask_data()
    events, out = feed(conn, early, start=False)
    assert events == [s.Paused()] and out == b""
    conn.refuse_data(BUSY)
    assert conn.data_to_send() == b"451 4.3.2 too busy, try later\r\n" + PIPELINING_CLOSE
    assert conn.closed and isinstance(conn.next_event(), s.ConnectionClosed)


def test_content_sent_ahead_of_a_start_is_the_content() -> None:
    conn = ask_data()
    feed(conn, b"a\r\n.\nMAIL FROM:<x@y>\r\n", start=False)
    conn.start_data()
    events, out = feed(conn, b".\r\nRSET\r\n")
    assert out.startswith(b"354 ") and body(events) == b"a\r\n\nMAIL FROM:<x@y>\r\n"
    assert isinstance(events[-2], s.DataEnd) and isinstance(events[-1], s.Paused)


@pytest.mark.parametrize("start", [True, False])
def test_a_flood_ahead_of_the_decision_closes(start: bool) -> None:
    conn = ask_data()
    for _ in range(100):
        conn.receive_data(b"N" * 4096)
    if start:
        conn.start_data()
        assert conn.data_to_send() == PIPELINING_CLOSE
    else:
        conn.refuse_data(BUSY)
        assert conn.data_to_send() == b"451 4.3.2 too busy, try later\r\n" + PIPELINING_CLOSE
    assert conn.closed


def test_client_gone_while_data_waits() -> None:
    conn = ask_data()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), s.Paused)
    conn.refuse_data(BUSY)
    assert isinstance(conn.next_event(), s.ConnectionClosed)
    assert conn.data_to_send() == b"451 4.3.2 too busy, try later\r\n"


def test_lmtp_refuses_data_with_one_reply() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="h", lmtp=True))
    conn.data_to_send()
    events, _ = feed(
        conn, b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n", start=False
    )
    assert events[-2:] == [s.DataStart(), s.Paused()]
    conn.refuse_data(BUSY)
    assert conn.data_to_send() == b"451 4.3.2 too busy, try later\r\n"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.start_data(), RuntimeError, "start_data called while no DATA waits"),
        (lambda c: c.refuse_data(BUSY), RuntimeError, "refuse_data called while no DATA waits"),
    ],
)
def test_data_decision_out_of_turn(
    call: Callable[[s.SmtpServerConnection], None], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(connect())


def test_refuse_data_needs_a_refusal() -> None:
    with pytest.raises(ValueError, match="needs a 4xx or 5xx reply, got 250"):
        ask_data().refuse_data(OK)


# --- properties ---------------------------------------------------------------------------------------

line_text = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=300)
@given(st.lists(line_text, max_size=20), st.integers(1, 50))
def test_any_body_survives_stuffing_and_chunking(lines: list[bytes], step: int) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    conn = open_data()
    events: list[s.Event] = []
    wire = stuffed + b".\r\n"
    for start in range(0, len(wire), step):
        more, _ = feed(conn, wire[start : start + step])
        events += more
    assert body(events) == content
    end = events[-2]
    assert isinstance(end, s.DataEnd) and end.size == len(content)


@settings(max_examples=500)
@given(st.binary(max_size=600), st.integers(1, 64), st.booleans())
def test_arbitrary_input_never_raises(data: bytes, step: int, lmtp: bool) -> None:
    from tests.fuzz.fuzz_smtp_server import drive

    drive(data, step, lmtp=lmtp)
