"""Delivery status notifications for bounced mail, sans-IO (RFC 3464, RFC 3461, RFC 3462, RFC 6533).

What amavisd-new sends the envelope sender when it bounces (D_BOUNCE) a message, or rejects some
recipients of one it otherwise passes: a `multipart/report; report-type=delivery-status` from the null
sender, with a short human explanation, a `message/delivery-status` part (one block for the message,
one per failed recipient) and the original header section as `text/rfc822-headers` - never the body,
which may be the very thing that was blocked. Whether to send it at all (4xx, NOTIFY, a null sender,
a discard, a spam cutoff, bulk mail) is the caller's decision; this module only builds it.

Every line ends in CRLF and is at most 998 octets, and the result is 7-bit clean - so it needs neither
8BITMIME nor SMTPUTF8 - unless the sender's address (To:) or the From: address has a non-ASCII
mailbox: that is written as raw UTF-8 (RFC 6532), since such a DSN can only travel with SMTPUTF8 anyway:

- every string from the request is first made single-line: control characters (C0, C1, DEL), line and
  paragraph separators and lone surrogates become a space (in addresses, they are removed), so no field
  can end a header or start another; each is cut at `MAX_FIELD` characters;
- header fields of the message and its parts are folded by the `email` package (RFC 2047 encoded words
  for non-ASCII text); the delivery-status fields are folded here, at spaces, and are ASCII: a
  non-ASCII address is typed `utf-8;` with each non-ASCII character as `\\x{HEX}` (RFC 6533 §3,
  utf-8-addr-xtext), other non-ASCII text becomes `?`;
- the original header section is carried as is (line ends made CRLF) when it is 7-bit text with lines
  of at most 998 octets, and otherwise quoted-printable, so that its decoded bytes are exactly the
  original's (8-bit bytes, NULs, bare CRs, overlong lines included) without a decoding guess.
"""

from __future__ import annotations

import email.policy
import re
import textwrap
import unicodedata
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage, Message, MIMEPart

MAX_FIELD = 900
"""The most characters kept of any one string from the request (so a word always fits a line)."""

_STATUS = re.compile(r"5\.\d{1,3}\.\d{1,3}\Z")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_XTEXT_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r\n|\n")
_UNSAFE = frozenset({"Cc", "Cs", "Zl", "Zp"})
_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")
_MAX_LINE = 998
_FOLD_AT = 78
_QP_WIDTH = 76

# The generation policy: SMTP (CRLF, RFC 2047 for non-ASCII); the delivery-status fields are stored
# pre-folded with `set_raw`, and "refold_source=none" keeps the email package from folding them again.
_POLICY = email.policy.SMTP.clone(refold_source="none")


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the message was not delivered to."""

    address: str
    """The envelope recipient (Final-Recipient)."""
    status: str
    """The enhanced status code (RFC 3463), class 5: "5.7.0"."""
    diagnostic: str
    """The SMTP reply given for it: "554 5.7.0 Reject, id=ab12 - BANNED: .exe-ms,invoice.pdf.exe"."""
    original_recipient: str | None = None
    """The RCPT ORCPT parameter as received ("rfc822;addr", xtext-encoded), or a bare address."""


@dataclass(frozen=True)
class DsnRequest:
    """Everything a DSN says; the caller supplies the clock and the identifiers (this module has none)."""

    reporting_mta: str
    """Our host name (Reporting-MTA: dns; host)."""
    sender: str
    """The original envelope sender, whom the DSN goes to; never "" (no DSN to the null sender)."""
    from_address: str
    """The DSN's From: field ("MAILER-DAEMON@host", or a display name and an address)."""
    mail_id: str
    category_text: str
    """Human words for the subject and text: "BANNED contents", "VIRUS", "SPAM"."""
    reason: str
    """One human line: "Banned file: invoice.pdf.exe (double extension)"."""
    recipients: tuple[FailedRecipient, ...]
    original_headers: bytes
    """The original message's header section (anything after its first empty line is dropped)."""
    envelope_id: str | None = None
    """The MAIL ENVID parameter as received (xtext-encoded), echoed as Original-Envelope-Id."""
    arrival_date: str | None = None
    """An RFC 5322 date: the DSN's Date and Arrival-Date (both left out without it)."""
    message_id: str | None = None
    """The DSN's Message-ID; without it, amavisd-new's `<DSN{mail_id}@{reporting_mta}>`."""


def build_dsn(request: DsnRequest) -> bytes:
    """The whole DSN message, CRLF line ends, ready for SMTP with the null envelope sender.

    Raises ValueError when the request cannot make a DSN: an empty sender, no recipient, or a
    recipient whose status is not a permanent failure (5.x.y). Hostile content never raises.
    """
    sender = _address(request.sender)
    if not sender:
        raise ValueError("no DSN to the null sender")
    if not request.recipients:
        raise ValueError("a DSN needs at least one failed recipient")
    for recipient in request.recipients:
        if not _STATUS.match(recipient.status):
            raise ValueError(f"not a permanent failure status: {_text(recipient.status)!r}")

    host = _text(request.reporting_mta)
    mail_id = _text(request.mail_id)
    category = _text(request.category_text)
    reason = _text(request.reason)

    message = EmailMessage(policy=_POLICY)
    message.set_raw("From", _mailbox(_text(request.from_address)))
    message.set_raw("To", _raw_utf8(f"<{sender}>"))
    message["Subject"] = f"{category} from you ({reason})" if reason else f"{category} from you"
    if request.arrival_date is not None:
        message.set_raw("Date", _ascii(_text(request.arrival_date)))
    message.set_raw("Message-ID", _message_id(request.message_id, mail_id, host))
    message["MIME-Version"] = "1.0"
    message["Auto-Submitted"] = "auto-replied"
    message["Content-Type"] = "multipart/report; report-type=delivery-status"
    message.preamble = "This is a multi-part message in MIME format..."
    report: list[Message | str] = [
        _explanation(host, mail_id, category, reason, request.recipients),
        _delivery_status(request, host),
        _header_section(request.original_headers),
    ]
    message.set_payload(report)
    return message.as_bytes(policy=_POLICY)


def _one_line(value: str) -> str:
    """Unsafe characters (controls, line and paragraph separators, lone surrogates) become spaces."""
    return "".join(" " if unicodedata.category(c) in _UNSAFE else c for c in value)


def _text(value: str) -> str:
    """One line, cut at MAX_FIELD characters, stripped."""
    return _one_line(value)[:MAX_FIELD].strip()


def _address(value: str) -> str:
    """An address as one word-ish line: unsafe characters removed, not replaced."""
    cleaned = "".join(c for c in value if unicodedata.category(c) not in _UNSAFE)
    return cleaned[:MAX_FIELD].strip()


def _ascii(value: str) -> str:
    return "".join(c if c.isascii() else "?" for c in value)


def _raw_utf8(value: str) -> str:
    """A field value the generator writes out as is: cut at MAX_FIELD octets, non-ASCII as raw UTF-8.

    The email package's address parser is not used: it raises on some malformed addresses ("0@"), and
    it would put RFC 2047 encoded words into a local part, where they are not allowed. A non-ASCII
    address stays UTF-8 (RFC 6532): a DSN to such a sender needs SMTPUTF8 anyway.
    """
    octets = value.encode("utf-8")[:MAX_FIELD].decode("utf-8", "ignore").encode("utf-8")
    return octets.decode("ascii", "surrogateescape")


def _mailbox(value: str) -> str:
    """The From: field: as given, but a non-ASCII display name before an ASCII `<addr>` as RFC 2047."""
    name, angle, rest = value.rpartition("<")
    name = name.strip()
    if angle and name and not name.isascii() and rest.isascii() and rest.endswith(">"):
        if len(name) > 1 and name[0] == name[-1] == '"':
            name = name[1:-1]
        return f"{Header(name, 'utf-8').encode(linesep=chr(10))} <{rest}"
    return _raw_utf8(value)


def _message_id(given: str | None, mail_id: str, host: str) -> str:
    if given is not None:
        cleaned = _ascii("".join(_one_line(given).split()))[:MAX_FIELD]
        return cleaned if cleaned.startswith("<") else f"<{cleaned}>"
    left = _ATEXT.sub("_", mail_id) or "_"
    right = _ATEXT.sub("_", host) or "localhost"
    return f"<DSN{left}@{right}>"


def _explanation(
    host: str, mail_id: str, category: str, reason: str, recipients: tuple[FailedRecipient, ...]
) -> MIMEPart:
    """The text/plain part, in the words of amavisd-new's DSN template."""
    wrap = textwrap.TextWrapper(width=76, break_long_words=False, break_on_hyphens=False)
    lines = ["The message WAS NOT relayed to:"]
    for recipient in recipients:
        wrap.initial_indent, wrap.subsequent_indent = "  ", "    "
        lines.append(wrap.fill(f"<{_address(recipient.address)}>: {_text(recipient.diagnostic)}"))
    wrap.initial_indent = wrap.subsequent_indent = ""
    lines += ["", wrap.fill(f"{category}: {reason}" if reason else category), ""]
    lines.append(
        wrap.fill(
            f"This nondelivery report was generated by the program qsift at host {host}. "
            f"Our internal reference code for your message is {mail_id}."
        )
    )
    lines += ["", wrap.fill("The header section of your message is attached; its body is not returned.")]
    body = "\n".join(lines) + "\n"
    plain = body.isascii() and max(len(line) for line in body.splitlines()) <= _MAX_LINE
    part = MIMEPart(policy=_POLICY)
    part.set_content(body, charset="utf-8", cte="7bit" if plain else "quoted-printable", disposition="inline")
    return part


def _delivery_status(request: DsnRequest, host: str) -> MIMEPart:
    """The message/delivery-status part: the per-message block, then one block per recipient."""
    per_message = [("Reporting-MTA", f"dns; {host}")]
    if request.envelope_id is not None:
        per_message.append(("Original-Envelope-Id", _xtext_decode(_text(request.envelope_id))))
    if request.arrival_date is not None:
        per_message.append(("Arrival-Date", _text(request.arrival_date)))
    blocks: list[Message | str] = [_block(per_message)]
    for recipient in request.recipients:
        fields: list[tuple[str, str]] = []
        if recipient.original_recipient is not None:
            fields.append(("Original-Recipient", _original_recipient(recipient.original_recipient)))
        fields += [
            ("Final-Recipient", _typed_address("rfc822", recipient.address)),
            ("Action", "failed"),
            ("Status", recipient.status),
            ("Diagnostic-Code", f"smtp; {_text(recipient.diagnostic)}"),
        ]
        blocks.append(_block(fields))
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery error report"
    part["Content-Transfer-Encoding"] = "7bit"
    part.set_payload(blocks)
    return part


def _block(fields: list[tuple[str, str]]) -> Message:
    block = Message(policy=_POLICY)
    for name, value in fields:
        block.set_raw(name, _fold(name, value))
    return block


def _fold(name: str, value: str) -> str:
    """A delivery-status field value: ASCII, whitespace runs collapsed, folded at spaces before 78."""
    ascii_value = _ascii(_one_line(value))
    lines: list[str] = []
    line = ""
    width = _FOLD_AT - len(name) - 2
    for word in ascii_value.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line, width = word, _FOLD_AT - 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n ".join(lines)


def _xtext_decode(value: str) -> str:
    """RFC 3461 §4: "+HH" is the octet HH; the DSN carries the decoded value (RFC 3464 §2.2.1, §2.3.1)."""
    return _XTEXT_HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)


def _original_recipient(value: str) -> str:
    """ORCPT's "type;xtext" as "type; address", or a bare address as rfc822."""
    addr_type, semicolon, address = value.partition(";")
    addr_type = addr_type.strip()
    if semicolon and _ADDR_TYPE.match(addr_type):
        address = _xtext_decode(address)
        if addr_type.lower() != "rfc822":
            return f"{addr_type}; {_address(address)}"
        return _typed_address("rfc822", address)
    return _typed_address("rfc822", value)


def _typed_address(addr_type: str, value: str) -> str:
    """`rfc822; addr`, or for a non-ASCII address `utf-8; ` and its utf-8-addr-xtext (RFC 6533 §3)."""
    address = _address(value)
    if address.isascii():
        return f"{addr_type}; {address}"
    escaped = ""
    for c in address:
        piece = _xtext_char(c)
        if len(escaped) + len(piece) > MAX_FIELD:  # one word: it must fit a line
            break
        escaped += piece
    return f"utf-8; {escaped}"


def _xtext_char(c: str) -> str:
    # QCHAR: printable ASCII but for "+", "=" and "\"; anything else as \x{HEXPOINT}, two digits at least.
    if "!" <= c <= "~" and c not in "+=\\":
        return c
    return f"\\x{{{ord(c):02X}}}"


def _header_section(original: bytes) -> MIMEPart:
    """The text/rfc822-headers part (RFC 3462): the header section, up to its first empty line."""
    end = _HEADER_END.search(original)
    section = original[: end.start()] if end else original
    lines = _LINE_END.split(section)
    if lines[-1] == b"":
        lines.pop()
    verbatim = all(
        len(line) <= _MAX_LINE and line.isascii() and b"\r" not in line and b"\0" not in line
        for line in lines
    )
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "text/rfc822-headers"
    part["Content-Description"] = "Message header section"
    if verbatim:
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload("".join(line.decode("ascii") + "\n" for line in lines))
    else:
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload("".join(_quoted_printable(line) for line in lines))
    return part


def _quoted_printable(line: bytes) -> str:
    """One line, quoted-printable (RFC 2045 §6.7): every octet but printable ASCII as =XX, soft breaks."""
    out: list[str] = []
    width = 0
    for i, octet in enumerate(line):
        last = i == len(line) - 1
        literal = (0x21 <= octet <= 0x7E and octet != 0x3D) or (octet in b" \t" and not last)
        piece = chr(octet) if literal else f"={octet:02X}"
        if width + len(piece) > _QP_WIDTH - (0 if last else 1):
            out.append("=\n")
            width = 0
        out.append(piece)
        width += len(piece)
    out.append("\n")
    return "".join(out)
