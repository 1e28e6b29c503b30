"""8-bit envelope addresses (RFC 6531): only in a transaction that declared SMTPUTF8, and then in UTF-8."""

from __future__ import annotations

import pytest

from qsift.wire import smtp_server as s

MAIL_OK = b"250 2.1.0 Ok"
RCPT_OK = b"250 2.1.5 Ok"
UNDECLARED = b"553 5.6.7 Must declare SMTPUTF8 to send unicode address"

CASES = [
    # (MAIL, RCPT, the two replies)
    (b"MAIL FROM:<\xe9\xe9@example.org>", None, [UNDECLARED]),
    (b"MAIL FROM:<j\xc3\xb6rg@example.org>", None, [UNDECLARED]),
    (b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8", b"RCPT TO:<b@example.net>", [MAIL_OK, RCPT_OK]),
    (b"MAIL FROM:<a@b\xc3\xa9.org> smtputf8", b"RCPT TO:<\xc3\xa9@example.net>", [MAIL_OK, RCPT_OK]),
    (b"MAIL FROM:<\xe9\xe9@example.org> SMTPUTF8", None, [b"553 5.1.7 Bad sender address syntax: not UTF-8"]),
    (b"MAIL FROM:<a@example.org>", b"RCPT TO:<\xc3\xa9@example.net>", [MAIL_OK, UNDECLARED]),
    (
        b"MAIL FROM:<a@example.org> SMTPUTF8",
        b"RCPT TO:<\xe9@example.net>",
        [MAIL_OK, b"553 5.1.3 Bad recipient address syntax: not UTF-8"],
    ),
    (b"MAIL FROM:<> BODY=8BITMIME", b"RCPT TO:<b@example.net>", [MAIL_OK, RCPT_OK]),
]


@pytest.mark.parametrize(("mail", "rcpt", "expected"), CASES)
def test_8bit_addresses(mail: bytes, rcpt: bytes | None, expected: list[bytes]) -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="mx.test"))
    conn.receive_data(b"EHLO client.test\r\n" + mail + b"\r\n" + (rcpt + b"\r\n" if rcpt else b""))
    events = []
    while not isinstance(event := conn.next_event(), s.NeedData):
        events.append(event)
    replies = conn.data_to_send().split(b"\r\n")
    assert replies[-len(expected) - 1 : -1] == expected
    assert sum(isinstance(e, s.MailFrom) for e in events) == (expected[0] == MAIL_OK)
    assert sum(isinstance(e, s.RcptTo) for e in events) == (expected[-1] == RCPT_OK and rcpt is not None)


def test_smtputf8_is_for_its_transaction_only() -> None:
    conn = s.SmtpServerConnection(s.ServerSettings(hostname="mx.test"))
    conn.receive_data(
        b"EHLO c\r\nMAIL FROM:<a@x> SMTPUTF8\r\nRSET\r\nMAIL FROM:<a@x>\r\nRCPT TO:<\xc3\xa9@x>\r\n"
    )
    while not isinstance(conn.next_event(), s.NeedData):
        pass
    assert conn.data_to_send().split(b"\r\n")[-2] == UNDECLARED
