"""Starting inputs for the fuzz entries: what each codec meets in real sessions, so libFuzzer mutates
from there instead of guessing its way from an empty input to a well-formed request.

Each seed carries the knob bytes its entry reads first (chunk size, limits, SMTP or LMTP), then bytes
taken from the unit tests (replies captured from clamd, spamd 4.0.1 and Postfix 3.7) or made with
qsift's own encoders. The decoder is also seeded, at run time, with the messages of a message corpus
(../shared/corpus) small enough for the fuzzer's input length; none of those is copied here.
test_fuzz_seeds.py runs every seed through its entry, so a seed that fails is seen in `make test`.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

from qsift.wire import client_context, netstring, qmqp
from qsift.wire.client_context import ClientContext

# Knobs: a step of 64 (the whole input at once, for these sizes) and generous limits; then a step of 1
# and a small limit, where chunk boundaries and limits are met.
WHOLE = b"\x3f\xff"
BYTEWISE = b"\x00\x10"


def whole_and_bytewise(data: bytes) -> list[bytes]:
    """`data` behind each of the two knob settings."""
    return [WHOLE + data, BYTEWISE + data]


MESSAGE = (
    b"Received: from client.example.org (client.example.org [192.0.2.1])\n"
    b"\tby mx.example.net (Postfix) with ESMTP id 4QxYz1\n"
    b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: hello\n"
    b"Message-ID: <1@example.org>\nDate: Mon, 6 Jan 2025 09:30:00 +0000\n\nHi Bob.\n.\n..\n"
)


def _qmqp() -> list[bytes]:
    requests = [
        qmqp.encode_request(MESSAGE, b"alice@example.org", [b"bob@example.net"]),
        qmqp.encode_request(MESSAGE.replace(b"\n", b"\r\n"), b"", [b"a@example.net", b"b@example.net"]),
        qmqp.encode_request(b"", b"j\xc3\xb6rg@example.org", [b"\xc3\xa9@example.net"]),
    ]
    responses = [
        qmqp.encode_response("K", b"ok id=8bSc2xJ4 queued_as 1234"),
        qmqp.encode_response("Z", b"4.5.0 virus scanner failure"),
        qmqp.encode_response("D", b"5.7.0 rejected: VIRUS Eicar-Test-Signature"),
    ]
    return [
        *(WHOLE + r for r in requests),
        *(BYTEWISE + r for r in requests[:1]),
        *(WHOLE + r for r in responses),
        WHOLE + netstring.encode(b"") + netstring.encode(b"12345"),
    ]


_CLAMD_REPLIES = [
    b"stream: OK",
    b"stream: Eicar-Test-Signature FOUND",
    b"stream: Win.Test.EICAR_HDB-1 FOUND",
    b"INSTREAM size limit exceeded. ERROR",
    b"PONG",
    b"ClamAV 1.4.3/27505/Mon Jan  6 09:30:00 2025",
    b"UNKNOWN COMMAND",
]


def _clamd() -> list[bytes]:
    numbered = b"".join(b"%d: %s\0" % (i, r) for i, r in enumerate(_CLAMD_REPLIES, 1))
    return [
        *(WHOLE + r + b"\0" for r in _CLAMD_REPLIES),
        WHOLE + b"\n".join(_CLAMD_REPLIES) + b"\n",
        *whole_and_bytewise(numbered),
    ]


# What spamd 4.0.1 wrote for GTUBE over SYMBOLS SPAMC/1.5 (as in tests/unit/wire/test_spamd.py).
GTUBE_REPLY = (
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 68\r\nSpam: True ; 1003.3 / 5.0\r\n\r\n"
    b"GTUBE,MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO"
)


def _spamd() -> list[bytes]:
    return [
        *whole_and_bytewise(GTUBE_REPLY),
        WHOLE + b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.1 / 5.0\r\n\r\n",
        WHOLE + b"SPAMD/1.5 0 PONG\r\n",
        WHOLE + b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 5 bytes, got 4 bytes)\r\n",
        WHOLE + b"SPAMD/1.1 0 EX_OK\nX-Future: yes\ncontent-length: 1\nspam:false;1.5/5\n\nA",
    ]


# What amavisd-release 2.13 sends for `amavisd-release spam-AbCdEfGhIj12.gz SECRET <a@example.org>`.
AMAVISD_RELEASE_REQUEST = (
    b"request=release\r\nmail_id=AbCdEfGhIj12\r\nquar_type=Z\r\nsecret_id=SECRETSECRET\r\n"
    b"mail_file=spam-AbCdEfGhIj12.gz\r\nrecipient=<a@example.org>\r\n\r\n"
)


def _ampdp() -> list[bytes]:
    return [
        *whole_and_bytewise(AMAVISD_RELEASE_REQUEST),
        # modoboa-amavis: bare LF; iRedAdmin: two requests on one connection; `name: value`.
        WHOLE + b"request=release\nmail_id=AbCdEfGhIj12\nsecret_id=S\nquar_type=Q\nrecipient=a%40b\n\n",
        WHOLE + b"request=release\r\nmail_id=A1\r\n\r\nrequest=release\r\nmail_id=B2\r\n\r\n",
        WHOLE + b"request: release\r\nre%71uest=a%20b%25\r\n\r\n",
    ]


# Postfix 3.7's replies to a whole SMTP transaction (as in tests/unit/wire/test_smtp_client.py).
POSTFIX_SESSION = (
    b"220 mail.example.net ESMTP Postfix\r\n"
    b"250-mail.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    b"250 2.0.0 Ok: queued as 4QxYz1\r\n221 2.0.0 Bye\r\n"
)


def _smtp_client() -> list[bytes]:
    return [
        *whole_and_bytewise(POSTFIX_SESSION),
        WHOLE + b"250-example.net\r\n250-PIPELINING\r\n250 8BITMIME\r\n550 5.1.1 <b@x>: unknown\r\n",
        WHOLE + b"a@example.net BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x NOTIFY=NEVER ORCPT=rfc822;a",
        WHOLE + b"j\xc3\xb6rg@example.net SIZE=1 NOTIFY=SUCCESS,DELAY",
    ]


SMTP_SESSION = (
    b"EHLO client.example.org\r\nMAIL FROM:<alice@example.org> SIZE=200 BODY=8BITMIME\r\n"
    b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n"
    b"RCPT TO:<carol@example.net>\r\nDATA\r\n" + MESSAGE.replace(b"\n", b"\r\n") + b".\r\n"
    b"RSET\r\nNOOP\r\nVRFY bob\r\nMAIL FROM:<> RET=HDRS ENVID=abc+2B\r\nRCPT TO:<x@y>\r\n"
    b"DATA\r\n.\r\nQUIT\r\n"
)
XFORWARD_SESSION = (
    b"EHLO mx.example.net\r\nXFORWARD NAME=client.example.org ADDR=192.0.2.1 PROTO=ESMTP\r\n"
    b"XFORWARD HELO=client.example.org IDENT=4QxYz1 SOURCE=REMOTE\r\nMAIL FROM:<a@x> SMTPUTF8\r\n"
    b"RCPT TO:<j\xc3\xb6rg@x>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n"
)


def _smtp_server() -> list[bytes]:
    smtp, lmtp, xforward = b"\x3f", b"\xbf", b"\x7f"
    return [
        smtp + SMTP_SESSION,
        b"\x00" + SMTP_SESSION,
        lmtp + SMTP_SESSION.replace(b"EHLO", b"LHLO"),
        xforward + XFORWARD_SESSION,
        smtp + b"HELO a\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n" + b"x" * 300 + b"\r\n.\r\n",
    ]


def _client_context() -> list[bytes]:
    context = ClientContext(ip="192.0.2.1", host="client.example.org", relay_client=True, auth_user="alice")
    field = client_context.make_field(
        b"fuzz-key-" * 4, context, b"s@example.org", [b"r@example.net"], 1_764_000_000
    )
    return [
        field + b"Subject: s\n\nbody\n",
        b"Subject: s\nX-Qsift-Client: v1\n folded\n" + field,
        b"192.0.2.1\0client.example.org\0alice\0s@example.org\0r@example.net",
        b"\x01[2001:db8::1]\0\0\0\0",
    ]


def zip_message() -> bytes:
    """A message with a zip (a nested name, a program named as a PDF) and a message attached."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/b.txt", b"hello " * 50)
        archive.writestr("invoice.pdf.exe", b"MZ" + b"\0" * 60)
    mail = EmailMessage()
    mail["From"] = "a@example.org"
    mail["Subject"] = "=?utf-8?q?caf=C3=A9?="
    mail.set_content("text")
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="a.zip")
    inner = EmailMessage()
    inner.set_content("inner")
    mail.add_attachment(inner)
    return mail.as_bytes()


UUENCODED = b"Subject: uu\n\nbegin 644 a.txt\n" + binascii.b2a_uu(b"hello, world\n") + b"`\nend\n"


def _decode() -> list[bytes]:
    return [MESSAGE, zip_message(), UUENCODED]


def _long_lines() -> list[bytes]:
    long_header = b"Subject: s\nX-Long: " + b"w " * 600 + b"\n\nbody\n"
    long_body = MESSAGE + b"L" * 1200 + b"\n"
    multipart = (
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b"Content-Transfer-Encoding: 8bit\n\n" + b"x" * 1100 + b"\n--b\n"
        b"Content-Transfer-Encoding: base64\n\n" + b"QUJD" * 300 + b"\n--b--\n"
    )
    return [
        b"\x3f" + MESSAGE,
        b"\x3f" + long_header,
        b"\x00" + long_body.replace(b"\n", b"\r\n"),
        b"\x3f" + multipart,
    ]


COMMITTED = {
    "ampdp": _ampdp,
    "clamd": _clamd,
    "client_context": _client_context,
    "decode": _decode,
    "long_lines": _long_lines,
    "qmqp": _qmqp,
    "smtp_client": _smtp_client,
    "smtp_server": _smtp_server,
    "spamd": _spamd,
}


def seeds(entry: str) -> list[bytes]:
    """The seeds written here for `entry`."""
    return COMMITTED[entry]()


def corpus_messages(corpus: Path, max_len: int) -> Iterator[bytes]:
    """Every file of a message corpus (../shared/corpus) no longer than `max_len` bytes."""
    for path in sorted(corpus.rglob("*")):
        if path.is_file() and path.suffix not in (".tsv", ".md") and path.stat().st_size <= max_len:
            yield path.read_bytes()


def write(inputs: list[bytes] | Iterator[bytes], directory: Path) -> int:
    """Write each input to `directory` under its digest, as libFuzzer names corpus files; how many."""
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for data in inputs:
        (directory / hashlib.sha1(data, usedforsecurity=False).hexdigest()).write_bytes(data)
        count += 1
    return count
