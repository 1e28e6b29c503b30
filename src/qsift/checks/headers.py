"""Bad-header checks: amavisd-new's `check_header_validity` over the raw header section.

The header section is taken as bytes, before any MIME decoder has had a chance to repair it, because what is
judged here is exactly what a decoder forgives: 8-bit bytes, NUL and bare CR, folded lines of only
whitespace, lines over RFC 5322's 998, broken field names, MIME boundaries in the header, a missing Date or
From, fields RFC 5322 §3.6 allows only once given twice. Minor codes are amavisd-new's (`Finding`); minor 1
(MIME) belongs to the decoder.

Each problem is reported once per field, so a hostile message cannot make the report bigger than its field
count, and collection stops at `max_findings` (amavisd-new keeps 100). Every step is one pass over bytes,
mostly with C-level primitives: a 1 MB line costs milliseconds, 100,000 fields about a third of a second,
and nothing here raises.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from qsift.model import Category, Finding

MAX_LINE = 998  # RFC 5322 §2.1.1, not counting CRLF

_EMPTY_LINE = re.compile(rb"\n\r?\n")
# RFC 5322 §3.6.8: printable US-ASCII but the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
# C0 controls but NUL and CR (minor 3 reports those) and HT (folding whitespace), and C1 controls.
_UTF8_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x80-\x9f]")
_EXCERPT = 40

#: RFC 5322 §3.6 fields allowed at most once, plus the MIME ones (RFC 2045) and Auto-Submitted (RFC 3834):
#: amavisd-new's list, in its spelling.
SINGLE_FIELDS = (
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Message-ID",
    "References",
    "In-Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Content-Disposition",
    "Auto-Submitted",
)
_SINGLE = {name.lower(): name for name in SINGLE_FIELDS}
_REQUIRED = ("Date", "From")


def header_section(message_head: bytes) -> bytes:
    """The header section of a message given its first bytes: up to (not including) the first empty line
    (a line that is just CRLF or LF); all of it when there is no empty line."""
    if message_head.startswith((b"\n", b"\r\n")):
        return b""
    match = _EMPTY_LINE.search(message_head)
    return message_head if match is None else message_head[: match.start() + 1]


@dataclass
class _Field:
    """One header field as physical lines (line ends removed), with where it starts for the report."""

    first_line: int
    lines: list[bytes]
    #: The field name as bytes when the first line has a colon, else None (not a header field at all).
    name: bytes | None
    #: The first line's syntax problem, or None when the name is valid.
    syntax: str | None

    @property
    def label(self) -> str:
        """How a detail names the field: its name when valid, else where it starts."""
        if self.name is not None and self.syntax is None:
            return self.name.decode("ascii")
        return f"line {self.first_line}"

    def value_bytes(self) -> list[bytes]:
        # Bytes of an invalid name are a syntax problem already; only what follows the colon can be 8-bit.
        if self.name is None:
            return self.lines
        return [self.lines[0].partition(b":")[2], *self.lines[1:]]


def check_headers(message_head: bytes, *, smtputf8: bool = False, max_findings: int = 100) -> list[Finding]:
    """amavisd-new's header validity checks over the header section.

    Every finding is Category.BAD_HEADER with amavisd-new's minor code, `part=""`, and a detail that names
    the header field and the problem, e.g. 'Subject: non-encoded 8-bit characters', 'Received: line longer
    than 998 characters', 'Date: missing', 'From: appears 2 times', 'line 7: not a header field
    ("--boundary")'.
    """
    findings: list[Finding] = []
    if max_findings <= 0:
        return findings
    fields = _split_fields(header_section(message_head))
    for field in fields:
        for minor, detail in _field_problems(field, smtputf8=smtputf8):
            findings.append(Finding(Category.BAD_HEADER, minor, detail))
            if len(findings) >= max_findings:
                return findings
    for minor, detail in _count_problems(fields):
        findings.append(Finding(Category.BAD_HEADER, minor, detail))
        if len(findings) >= max_findings:
            break
    return findings


def _split_fields(section: bytes) -> list[_Field]:
    lines = section.split(b"\n")
    if lines[-1] == b"":
        # The last line's LF, or an empty section.
        lines.pop()
    start = 0
    if lines and _is_mbox_from(lines[0]):
        start = 1
    fields: list[_Field] = []
    for number, raw in enumerate(lines[start:], start=start + 1):
        # Only a CR right before the LF is a line end; any other CR stays for the control check. A CR at the
        # very end of the input is taken as a line end too: the head may have been cut between CR and LF.
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line.startswith((b" ", b"\t")):
            if fields:
                fields[-1].lines.append(line)
            else:
                fields.append(_Field(number, [line], None, "continuation line before any header field"))
        else:
            fields.append(_start_field(number, line))
    return fields


def _is_mbox_from(line: bytes) -> bool:
    # An mbox separator, "From sender date", is not part of the message an MTA would have handed us; "From :"
    # is the obsolete spelling of a From field (RFC 5322 §4.5.8), not a separator.
    return line.startswith(b"From ") and not line[5:].lstrip(b" \t").startswith(b":")


def _start_field(number: int, line: bytes) -> _Field:
    name, colon, _ = line.partition(b":")
    if line.startswith(b"--") or not colon:
        # "--" first: a MIME boundary that slipped into the header section, whatever follows it.
        return _Field(number, [line], None, f"not a header field ({_excerpt(line)})")
    # RFC 5322 §4.5.8 (obsolete syntax) allows whitespace before the colon.
    name = name.rstrip(b" \t")
    if not name:
        return _Field(number, [line], name, "empty field name")
    if not _FIELD_NAME.fullmatch(name):
        return _Field(number, [line], name, f"invalid field name ({_excerpt(name)})")
    return _Field(number, [line], name, None)


def _excerpt(data: bytes) -> str:
    # Details end up in logs and in X-Amavis-Alert fields: printable ASCII only.
    shown = "".join(chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}" for byte in data[:_EXCERPT])
    more = "..." if len(data) > _EXCERPT else ""
    return f'"{shown}{more}"'


def _field_problems(field: _Field, *, smtputf8: bool) -> list[tuple[int, str]]:
    problems: list[tuple[int, str | None]] = [
        (6, field.syntax),
        (2, _eight_bit_problem(field, smtputf8=smtputf8)),
        (3, _control_problem(field.lines)),
        (4, _empty_fold_problem(field.lines)),
        (5, _long_line_problem(field.lines)),
    ]
    label = field.label
    return [(minor, f"{label}: {problem}") for minor, problem in problems if problem is not None]


def _eight_bit_problem(field: _Field, *, smtputf8: bool) -> str | None:
    if all(line.isascii() for line in field.lines):
        return None
    # Lines, not the joined field: a UTF-8 sequence cut by a fold is broken, as a decoder would see it.
    chunks = field.value_bytes()
    try:
        text = "\n".join(chunk.decode("utf-8") for chunk in chunks)
    except UnicodeDecodeError:
        return "non-encoded 8-bit characters (invalid UTF-8)"
    if not text.isascii() and _UTF8_CONTROL.search(text):
        return "non-encoded 8-bit characters (UTF-8 with control characters)"
    if text.isascii() or smtputf8:
        # All of it was in the field name (a syntax problem), or it is RFC 6532 UTF-8 in a message sent
        # with SMTPUTF8 (RFC 6531), the one place raw UTF-8 belongs.
        return None
    return "non-encoded 8-bit characters"


def _empty_fold_problem(lines: list[bytes]) -> str | None:
    # A folded line of only whitespace reads as the empty line that ends the header to some parsers.
    if any(not line.strip(b" \t") for line in lines[1:]):
        return "folded line made only of whitespace"
    return None


def _long_line_problem(lines: list[bytes]) -> str | None:
    if any(len(line) > MAX_LINE for line in lines):
        return f"line longer than {MAX_LINE} characters"
    return None


def _control_problem(lines: list[bytes]) -> str | None:
    kinds: list[str] = []
    if any(b"\0" in line for line in lines):
        kinds.append("NUL")
    if any(b"\r" in line for line in lines):
        kinds.append("bare CR")
    return f"control characters ({', '.join(kinds)})" if kinds else None


def _count_problems(fields: list[_Field]) -> list[tuple[int, str]]:
    counts = Counter(
        field.name.lower().decode("ascii")
        for field in fields
        if field.name is not None and field.syntax is None
    )
    problems = [(7, f"{name}: missing") for name in _REQUIRED if counts[name.lower()] == 0]
    # In the order the fields first appear, so the report reads like the message.
    problems.extend(
        (8, f"{_SINGLE[name]}: appears {count} times")
        for name, count in counts.items()
        if count > 1 and name in _SINGLE
    )
    return problems
