from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.wire.dsn import MAX_FIELD, DsnRequest, FailedRecipient, build_dsn

HEADERS = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from client.example.org (client.example.org [192.0.2.1])\r\n"
    b"\tby mx.example.com with ESMTP id 1A2B3C\r\n"
    b"\tfor <bob@example.com>; Tue, 10 May 2022 02:27:08 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: invoice\r\n"
)

BOB = FailedRecipient(
    address="bob@example.com",
    status="5.7.0",
    diagnostic="554 5.7.0 Reject, id=ab12 - BANNED: .exe-ms,invoice.pdf.exe",
    original_recipient="rfc822;bob@example.com",
)
CAROL = FailedRecipient(address="carol@example.com", status="5.7.1", diagnostic="554 5.7.1 Reject, id=ab12")

REQUEST = DsnRequest(
    reporting_mta="mail.example.com",
    sender="alice@example.org",
    from_address='"Content-filter at mail.example.com" <postmaster@mail.example.com>',
    mail_id="ab12XYZ",
    category_text="BANNED contents",
    reason="Banned file: invoice.pdf.exe (double extension)",
    recipients=(BOB, CAROL),
    original_headers=HEADERS + b"\r\nMZ\x90\x00 the malicious body\r\n",
    envelope_id="QQ314159",
    arrival_date="Tue, 10 May 2022 02:27:36 +0000",
)

TOP_FIELDS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted", "Content-Type"]
RECIPIENT_FIELDS = ["Original-Recipient", "Final-Recipient", "Action", "Status", "Diagnostic-Code"]


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data)


def parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    found = [part for part in payload if isinstance(part, Message)]
    assert len(found) == len(payload)
    return found


def blocks(message: Message) -> list[Message]:
    return parts(parts(message)[1])


def field(block: Message, name: str) -> str:
    value = block[name]
    assert isinstance(value, str)
    return unfold(value)


def text_of(message: Message) -> str:
    payload = parts(message)[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8").replace("\r\n", "\n")


def header_section(message: Message) -> bytes:
    payload = parts(message)[2].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def lines_of(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


def check_wire(data: bytes, *, seven_bit: bool = True) -> None:
    """7-bit (unless told), CRLF only, no line over 998 octets."""
    assert data.isascii() or not seven_bit
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in lines_of(data))


def test_structure() -> None:
    data = build_dsn(REQUEST)
    check_wire(data)
    message = parse(data)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message.keys() == TOP_FIELDS
    assert message["From"] == '"Content-filter at mail.example.com" <postmaster@mail.example.com>'
    assert message["To"] == "<alice@example.org>"
    assert message["Date"] == "Tue, 10 May 2022 02:27:36 +0000"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"] == "<DSNab12XYZ@mail.example.com>"
    assert parts(message)[0].get_content_charset() == "utf-8"


def test_subject_follows_amavisd() -> None:
    message = parse(build_dsn(REQUEST))
    assert unfold(message["Subject"]) == (
        "BANNED contents from you (Banned file: invoice.pdf.exe (double extension))"
    )
    message = parse(build_dsn(dataclasses.replace(REQUEST, category_text="VIRUS", reason="")))
    assert message["Subject"] == "VIRUS from you"


def test_non_ascii_subject_is_encoded_words() -> None:
    data = build_dsn(dataclasses.replace(REQUEST, reason="Datei: Rechnung.pdf.exe \u2013 gesperrt"))
    check_wire(data)
    assert b"=?utf-8?" in data
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert str(message["Subject"]) == "BANNED contents from you (Datei: Rechnung.pdf.exe \u2013 gesperrt)"


def test_delivery_status_fields() -> None:
    per_message, bob, carol = blocks(parse(build_dsn(REQUEST)))
    assert per_message.items() == [
        ("Reporting-MTA", "dns; mail.example.com"),
        ("Original-Envelope-Id", "QQ314159"),
        ("Arrival-Date", "Tue, 10 May 2022 02:27:36 +0000"),
    ]
    assert bob.keys() == RECIPIENT_FIELDS
    assert field(bob, "Original-Recipient") == "rfc822; bob@example.com"
    assert field(bob, "Final-Recipient") == "rfc822; bob@example.com"
    assert field(bob, "Action") == "failed"
    assert field(bob, "Status") == "5.7.0"
    assert field(bob, "Diagnostic-Code") == (
        "smtp; 554 5.7.0 Reject, id=ab12 - BANNED: .exe-ms,invoice.pdf.exe"
    )
    assert carol.keys() == RECIPIENT_FIELDS[1:]
    assert field(carol, "Final-Recipient") == "rfc822; carol@example.com"
    assert field(carol, "Status") == "5.7.1"
    assert field(carol, "Diagnostic-Code") == "smtp; 554 5.7.1 Reject, id=ab12"


def test_long_diagnostic_is_folded_at_spaces() -> None:
    diagnostic = "554 5.7.0 Reject, id=ab12 - BANNED: " + ",".join(f"name{i}.exe" for i in range(40))
    diagnostic += " " + "x" * 300
    data = build_dsn(
        dataclasses.replace(REQUEST, recipients=(dataclasses.replace(BOB, diagnostic=diagnostic),))
    )
    check_wire(data)
    bob = blocks(parse(data))[1]
    raw = bob["Diagnostic-Code"]
    assert "\n" in raw
    assert field(bob, "Diagnostic-Code") == f"smtp; {diagnostic}"


def test_fields_are_cut_at_max_field() -> None:
    long = "y" * (MAX_FIELD * 3)
    data = build_dsn(
        dataclasses.replace(REQUEST, reason=long, recipients=(dataclasses.replace(BOB, diagnostic=long),))
    )
    check_wire(data)
    bob = blocks(parse(data))[1]
    assert field(bob, "Diagnostic-Code") == "smtp; " + "y" * MAX_FIELD


def test_optional_fields_left_out() -> None:
    request = dataclasses.replace(REQUEST, envelope_id=None, arrival_date=None, recipients=(CAROL,))
    message = parse(build_dsn(request))
    assert "Date" not in message
    per_message, carol = blocks(message)
    assert per_message.items() == [("Reporting-MTA", "dns; mail.example.com")]
    assert "Original-Recipient" not in carol


def test_envelope_id_is_xtext_decoded() -> None:
    per_message = blocks(parse(build_dsn(dataclasses.replace(REQUEST, envelope_id="a+2Bb+3Dc"))))[0]
    assert field(per_message, "Original-Envelope-Id") == "a+b=c"


@pytest.mark.parametrize(
    ("orcpt", "expected"),
    [
        ("rfc822;bob@example.com", "rfc822; bob@example.com"),
        ("RFC822; bob@example.com", "rfc822; bob@example.com"),
        ("rfc822;bob+2Btag@example.com", "rfc822; bob+tag@example.com"),
        ("bob+tag@example.com", "rfc822; bob+tag@example.com"),
        ("x-local;bob", "x-local; bob"),
        ("utf-8;j\\x{F6}rg@example.com", "utf-8; j\\x{F6}rg@example.com"),
        ("rfc822;j\u00f6rg@example.com", "utf-8; j\\x{F6}rg@example.com"),
        ("rfc822;bob+0D+0AX-Evil:+201@example.com", "rfc822; bobX-Evil: 1@example.com"),
        ("not a type;bob@example.com", "rfc822; not a type;bob@example.com"),
    ],
)
def test_original_recipient(orcpt: str, expected: str) -> None:
    recipient = dataclasses.replace(BOB, original_recipient=orcpt)
    bob = blocks(parse(build_dsn(dataclasses.replace(REQUEST, recipients=(recipient,)))))[1]
    assert field(bob, "Original-Recipient") == expected


def test_non_ascii_address_is_utf8_addr_xtext() -> None:
    recipient = dataclasses.replace(BOB, address="j\u00f6rg+a=b\\c@\u4f8b\u3048.jp")
    data = build_dsn(dataclasses.replace(REQUEST, sender="\u00e9ve@example.fr", recipients=(recipient,)))
    check_wire(data, seven_bit=False)
    assert b"\r\nTo: <\xc3\xa9ve@example.fr>\r\n" in data  # RFC 6532: it needs SMTPUTF8 anyway
    assert data.replace(b"\xc3\xa9ve@", b"").isascii()
    message = parse(data)
    bob = blocks(message)[1]
    assert field(bob, "Final-Recipient") == "utf-8; j\\x{F6}rg\\x{2B}a\\x{3D}b\\x{5C}c@\\x{4F8B}\\x{3048}.jp"
    assert "j\u00f6rg+a=b\\c@\u4f8b\u3048.jp" in text_of(message)


@pytest.mark.parametrize(
    ("from_address", "name", "address"),
    [
        (
            '"Inhaltsfilter f\u00fcr mail" <postmaster@mail.example.com>',
            "Inhaltsfilter f\u00fcr mail",
            "postmaster@mail.example.com",
        ),
        ("Filtre \u00e9 <postmaster@mail.example.com>", "Filtre \u00e9", "postmaster@mail.example.com"),
        ("MAILER-DAEMON@mail.example.com", "", "MAILER-DAEMON@mail.example.com"),
    ],
)
def test_from_display_name(from_address: str, name: str, address: str) -> None:
    data = build_dsn(dataclasses.replace(REQUEST, from_address=from_address))
    check_wire(data)
    header = email.message_from_bytes(data, policy=email.policy.default)["From"]
    assert header.addresses[0].display_name == name
    assert header.addresses[0].addr_spec == address


@pytest.mark.parametrize(
    "from_address", ["p\u00f6stmaster@example.com", "<p\u00f6st@example.com>", "\u00fc <x"]
)
def test_non_ascii_from_address_is_utf8(from_address: str) -> None:
    data = build_dsn(dataclasses.replace(REQUEST, from_address=from_address))
    check_wire(data, seven_bit=False)
    assert b"\r\nFrom: " + from_address.encode() + b"\r\n" in data or data.startswith(
        b"From: " + from_address.encode() + b"\r\n"
    )


def test_long_non_ascii_addresses_are_cut_to_fit_a_line() -> None:
    address = "\U0010fffd" * 2000
    recipient = dataclasses.replace(BOB, address=address, original_recipient="rfc822;" + address)
    data = build_dsn(
        dataclasses.replace(REQUEST, sender=address, from_address=address, recipients=(recipient,))
    )
    check_wire(data, seven_bit=False)
    bob = blocks(parse(data))[1]
    assert field(bob, "Final-Recipient") == "utf-8; " + "\\x{10FFFD}" * (MAX_FIELD // 10)


def test_explanation_text() -> None:
    message = parse(build_dsn(REQUEST))
    assert parts(message)[0]["Content-Transfer-Encoding"] == "7bit"
    text = text_of(message)
    assert text.startswith("The message WAS NOT relayed to:\n  <bob@example.com>: 554 5.7.0 Reject, id=ab12")
    assert "  <carol@example.com>: 554 5.7.1 Reject, id=ab12\n" in text
    assert "BANNED contents: Banned file: invoice.pdf.exe (double extension)\n" in text
    assert "at host\nmail.example.com." in text
    assert "reference code for your message is ab12XYZ." in text
    assert "its body is not returned" in text


def test_explanation_without_reason() -> None:
    text = text_of(parse(build_dsn(dataclasses.replace(REQUEST, reason=""))))
    assert "\nBANNED contents\n" in text


def test_header_section_is_carried_verbatim() -> None:
    data = build_dsn(REQUEST)
    assert HEADERS + b"\r\n--" in data
    message = parse(data)
    assert parts(message)[2]["Content-Transfer-Encoding"] == "7bit"
    assert header_section(message) == HEADERS
    assert b"malicious" not in data


def test_header_section_with_lf_line_ends() -> None:
    original = HEADERS.replace(b"\r\n", b"\n")
    data = build_dsn(dataclasses.replace(REQUEST, original_headers=original + b"\nthe-body-text\n"))
    check_wire(data)
    assert header_section(parse(data)) == HEADERS
    assert b"the-body-text" not in data


def test_header_section_without_final_line_end() -> None:
    data = build_dsn(dataclasses.replace(REQUEST, original_headers=b"Subject: x"))
    assert header_section(parse(data)) == b"Subject: x\r\n"


def test_empty_header_section() -> None:
    data = build_dsn(dataclasses.replace(REQUEST, original_headers=b""))
    check_wire(data)
    assert header_section(parse(data)) == b""


@pytest.mark.parametrize(
    "original",
    [
        b"Subject: caf\xe9 \xff\xfe\r\nFrom: x\r\n",  # 8-bit
        b"Subject: a\0b\r\n",  # NUL
        b"Subject: a\rb\r\n",  # a bare CR
        b"X-Long: " + b"z" * 2000 + b"\r\n",  # over 998
    ],
)
def test_header_section_quoted_printable(original: bytes) -> None:
    data = build_dsn(dataclasses.replace(REQUEST, original_headers=original))
    check_wire(data)
    message = parse(data)
    assert parts(message)[2]["Content-Transfer-Encoding"] == "quoted-printable"
    assert header_section(message).replace(b"\r\n", b"\n") == original.replace(b"\r\n", b"\n")


def test_message_id_given() -> None:
    message = parse(build_dsn(dataclasses.replace(REQUEST, message_id="<x1@mail.example.com>")))
    assert message["Message-ID"] == "<x1@mail.example.com>"
    message = parse(build_dsn(dataclasses.replace(REQUEST, message_id="x2@mail.example.com\r\nBcc: e")))
    assert message["Message-ID"] == "<x2@mail.example.comBcc:e>"
    message = parse(build_dsn(dataclasses.replace(REQUEST, message_id="\u00e9t\u00e9@example.com")))
    assert message["Message-ID"] == "<?t?@example.com>"


def test_message_id_default_is_sanitised() -> None:
    request = dataclasses.replace(REQUEST, mail_id="a b<c>", reporting_mta="host name")
    assert parse(build_dsn(request))["Message-ID"] == "<DSNa_b_c_@host_name>"
    request = dataclasses.replace(REQUEST, mail_id="", reporting_mta="")
    assert parse(build_dsn(request))["Message-ID"] == "<DSN_@localhost>"


def test_injection_attempts_stay_inside_their_field() -> None:
    evil = "x\r\nBcc: victim@example.net\r\n\r\n--boundary\n\x85\u2028\u2029\x00\udce9"
    request = dataclasses.replace(
        REQUEST,
        sender=f"alice{evil}@example.org",
        from_address=f"postmaster{evil}@example.com",
        reason=evil,
        category_text=evil,
        reporting_mta=evil,
        mail_id=evil,
        envelope_id=evil,
        arrival_date=evil,
        recipients=(FailedRecipient(f"bob{evil}@example.com", "5.7.0", evil, evil),),
    )
    data = build_dsn(request)
    check_wire(data)
    message = parse(data)
    assert message.keys() == TOP_FIELDS
    assert len(parts(message)) == 3
    per_message, bob = blocks(message)
    assert per_message.keys() == ["Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"]
    assert bob.keys() == RECIPIENT_FIELDS
    assert "Bcc" not in message
    assert "victim@example.net" in unfold(message["To"])


@pytest.mark.parametrize("sender", ["", "\r\n", " \x00 "])
def test_no_dsn_to_the_null_sender(sender: str) -> None:
    with pytest.raises(ValueError, match="null sender"):
        build_dsn(dataclasses.replace(REQUEST, sender=sender))


def test_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_dsn(dataclasses.replace(REQUEST, recipients=()))


@pytest.mark.parametrize("status", ["4.7.0", "2.0.0", "5.7", "5.7.0 ", "5.1000.0", "5.7.0\r\nX: y", ""])
def test_status_must_be_a_permanent_failure(status: str) -> None:
    with pytest.raises(ValueError, match="permanent failure"):
        build_dsn(dataclasses.replace(REQUEST, recipients=(dataclasses.replace(BOB, status=status),)))


# Anything at all: every category, controls and line breaks included, and unassigned code points.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=1200)
ADDRESS = st.builds(lambda a, b: a + "x" + b, ANY_TEXT, ANY_TEXT)


@settings(max_examples=300, deadline=None)
@given(
    sender=ADDRESS,
    from_address=ANY_TEXT,
    category=ANY_TEXT,
    reason=ANY_TEXT,
    mail_id=ANY_TEXT,
    host=ANY_TEXT,
    envelope_id=st.none() | ANY_TEXT,
    arrival_date=st.none() | ANY_TEXT,
    message_id=st.none() | ANY_TEXT,
    recipients=st.lists(
        st.builds(
            FailedRecipient,
            address=ANY_TEXT,
            status=st.from_regex(r"5\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
            diagnostic=ANY_TEXT,
            original_recipient=st.none() | ANY_TEXT,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_arbitrary_text_never_breaks_the_structure(
    sender: str,
    from_address: str,
    category: str,
    reason: str,
    mail_id: str,
    host: str,
    envelope_id: str | None,
    arrival_date: str | None,
    message_id: str | None,
    recipients: list[FailedRecipient],
) -> None:
    request = DsnRequest(
        reporting_mta=host,
        sender=sender,
        from_address=from_address,
        mail_id=mail_id,
        category_text=category,
        reason=reason,
        recipients=tuple(recipients),
        original_headers=HEADERS,
        envelope_id=envelope_id,
        arrival_date=arrival_date,
        message_id=message_id,
    )
    data = build_dsn(request)
    check_wire(data, seven_bit=sender.isascii() and from_address.isascii())
    message = parse(data)
    expected = [name for name in TOP_FIELDS if name != "Date" or arrival_date is not None]
    assert message.keys() == expected
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    per_message, *per_recipient = blocks(message)
    assert per_message.keys() == [
        name
        for name, value in [
            ("Reporting-MTA", host),
            ("Original-Envelope-Id", envelope_id),
            ("Arrival-Date", arrival_date),
        ]
        if value is not None
    ]
    assert len(per_recipient) == len(recipients)
    for block, recipient in zip(per_recipient, recipients, strict=True):
        names = RECIPIENT_FIELDS if recipient.original_recipient is not None else RECIPIENT_FIELDS[1:]
        assert block.keys() == names
        assert field(block, "Action") == "failed"
        assert field(block, "Status") == recipient.status
        assert field(block, "Final-Recipient").startswith(("rfc822;", "utf-8;"))
        assert field(block, "Diagnostic-Code").startswith("smtp;")
    assert header_section(message) == HEADERS
    assert len(parts(message)[0].get_payload(decode=True)) > 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_header_bytes_round_trip(original: bytes) -> None:
    data = build_dsn(dataclasses.replace(REQUEST, original_headers=original))
    check_wire(data)
    message = parse(data)
    assert len(parts(message)) == 3
    section = re.split(rb"\r?\n\r?\n", original, maxsplit=1)[0]
    lines = re.split(rb"\r\n|\n", section)
    if lines[-1] == b"":
        lines.pop()
    expected = b"".join(line + b"\n" for line in lines)
    assert header_section(message).replace(b"\r\n", b"\n") == expected
