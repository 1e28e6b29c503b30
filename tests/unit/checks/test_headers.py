from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.checks.headers import check_headers, header_section
from qsift.model import Category, Finding

CORPUS = Path("/work/shared/corpus")

# A message with nothing wrong in its header, as lines without their line ends.
CLEAN = [
    b"Received: from mx.example.net by mail.example.com",
    b"\twith ESMTP id 4Xyz; Mon, 1 Jan 2024 00:00:00 +0000",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
    b"From: Alice <alice@example.net>",
    b"To: bob@example.com",
    b"Subject: =?UTF-8?Q?caf=C3=A9?=",
    b"Message-ID: <1@example.net>",
]


def message(*lines: bytes, eol: bytes = b"\r\n", body: bytes = b"Hello\r\n") -> bytes:
    """The header lines with `eol` after each, an empty line, then the body."""
    return b"".join(line + eol for line in lines) + eol + body


def found(*pairs: tuple[int, str]) -> list[Finding]:
    return [Finding(Category.BAD_HEADER, minor, detail) for minor, detail in pairs]


def bad(*lines: bytes, eol: bytes = b"\r\n", smtputf8: bool = False) -> list[Finding]:
    """The findings for a clean header with `lines` appended."""
    return check_headers(message(*CLEAN, *lines, eol=eol), smtputf8=smtputf8)


# header_section


@pytest.mark.parametrize(
    ("head", "section"),
    [
        (b"A: b\r\n\r\nbody\r\n\r\nmore", b"A: b\r\n"),
        (b"A: b\n\nbody\n\nmore", b"A: b\n"),
        (b"A: b\r\n\nbody", b"A: b\r\n"),  # mixed line ends
        (b"A: b\n\r\nbody", b"A: b\n"),
        (b"A: b\r\n \r\nC: d\r\n\r\n", b"A: b\r\n \r\nC: d\r\n"),  # a line of spaces is not empty
        (b"A: b\r\r\nC: d\r\n\r\n", b"A: b\r\r\nC: d\r\n"),  # nor is a bare CR
        (b"A: b\r\nC: d", b"A: b\r\nC: d"),  # cut before the end of the header
        (b"A: b\r\n", b"A: b\r\n"),
        (b"\r\nbody", b""),
        (b"\nbody", b""),
        (b"", b""),
    ],
)
def test_header_section(head: bytes, section: bytes) -> None:
    assert header_section(head) == section


# check_headers: what is not a problem


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_clean_message(eol: bytes) -> None:
    assert check_headers(message(*CLEAN, eol=eol)) == []


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_mbox_from_line_first_is_skipped(eol: bytes) -> None:
    head = message(b"From alice@example.net Mon Jan  1 00:00:00 2024", *CLEAN, eol=eol)
    assert check_headers(head) == []


def test_mbox_from_line_elsewhere_is_syntax() -> None:
    assert bad(b"From alice@example.net Mon Jan  1 00:00:00 2024") == found(
        (6, 'line 8: invalid field name ("From alice@example.net Mon Jan  1 00")')
    )


def test_obsolete_space_before_colon_is_a_field() -> None:
    # RFC 5322 §4.5.8: "From : x" is a From field (so the first line is no mbox separator), and counts.
    lines = [line for line in CLEAN if not line.startswith(b"From:")]
    assert check_headers(message(b"From : alice@example.net", *lines)) == []
    assert check_headers(message(b"From\t: alice@example.net", *CLEAN)) == found((8, "From: appears 2 times"))


def test_body_is_not_looked_at() -> None:
    body = b"--boundary\r\nnot a header\r\n\0\xff" + b"x" * 2000 + b"\r\n"
    assert check_headers(message(*CLEAN, body=body)) == []


def test_cut_between_cr_and_lf_is_no_bare_cr() -> None:
    assert check_headers(b"\r\n".join(CLEAN) + b"\r") == []


def test_fields_allowed_many_times() -> None:
    assert bad(b"Received: from a by b", b"X-Tag: 1", b"x-tag: 2", b"Comments: c", b"Comments: d") == []


def test_utf8_in_an_encoded_word_is_fine() -> None:
    assert bad(b"Keywords: =?UTF-8?B?Y2Fmw6k=?=") == []


# check_headers: one problem per minor code


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_8bit_latin1(eol: bytes) -> None:
    head = message(b"Date: x", b"From: y", b"Subject: caf\xe9", eol=eol)
    assert check_headers(head) == found((2, "Subject: non-encoded 8-bit characters (invalid UTF-8)"))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize("smtputf8", [False, True])
def test_8bit_invalid_utf8(eol: bytes, smtputf8: bool) -> None:
    assert bad(b"X-Note: caf\xe9", eol=eol, smtputf8=smtputf8) == found(
        (2, "X-Note: non-encoded 8-bit characters (invalid UTF-8)")
    )


def test_8bit_utf8_cut_by_a_fold_is_invalid() -> None:
    assert bad(b"X-Note: caf\xc3", b" \xa9", smtputf8=True) == found(
        (2, "X-Note: non-encoded 8-bit characters (invalid UTF-8)")
    )


@pytest.mark.parametrize("control", [b"\xc2\x85", b"\x01", b"\x1b", b"\x0b"])
@pytest.mark.parametrize("smtputf8", [False, True])
def test_8bit_utf8_with_controls(control: bytes, smtputf8: bool) -> None:
    assert bad(b"X-Note: caf\xc3\xa9 " + control, smtputf8=smtputf8) == found(
        (2, "X-Note: non-encoded 8-bit characters (UTF-8 with control characters)")
    )


def test_8bit_valid_utf8_without_smtputf8() -> None:
    assert bad(b"X-Note: caf\xc3\xa9", b" \xe2\x82\xac") == found((2, "X-Note: non-encoded 8-bit characters"))


def test_8bit_valid_utf8_with_smtputf8() -> None:
    assert bad(b"X-Note: caf\xc3\xa9", b" \xe2\x82\xac", b"X-Tab: \xc3\xa9\tx", smtputf8=True) == []


def test_ascii_controls_alone_are_not_8bit() -> None:
    assert bad(b"X-Note: a\x01b\x1b") == []


def test_8bit_once_per_field() -> None:
    assert bad(b"X-Note: \xe9\xe9", b" \xe9", b"X-Other: \xff") == found(
        (2, "X-Note: non-encoded 8-bit characters (invalid UTF-8)"),
        (2, "X-Other: non-encoded 8-bit characters (invalid UTF-8)"),
    )


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize(
    ("lines", "what"),
    [
        ((b"X-Note: a\0b",), "NUL"),
        ((b"X-Note: a\rb",), "bare CR"),
        ((b"X-Note: a\r\r",), "bare CR"),  # only the CR right before the LF ends the line
        ((b"X-Note: a", b" b\0c\rd"), "NUL, bare CR"),
    ],
)
def test_control(eol: bytes, lines: tuple[bytes, ...], what: str) -> None:
    assert bad(*lines, eol=eol) == found((3, f"X-Note: control characters ({what})"))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize("blank", [b" ", b"\t", b" \t  "])
def test_empty_folded_line(eol: bytes, blank: bytes) -> None:
    assert bad(b"X-Note: a", blank, b" b", blank, eol=eol) == found(
        (4, "X-Note: folded line made only of whitespace")
    )


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_long_line(eol: bytes) -> None:
    assert bad(b"Received: " + b"x" * 988, eol=eol) == []  # 998 exactly
    assert bad(b"Received: " + b"x" * 989, b"\t" + b"y" * 2000, eol=eol) == found(
        (5, "Received: line longer than 998 characters")
    )


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"--boundary", 'not a header field ("--boundary")'),
        (b"--boundary: x", 'not a header field ("--boundary: x")'),
        (b"no colon here", 'not a header field ("no colon here")'),
        (b": value", "empty field name"),
        (b" \t: value", None),  # a continuation of Message-ID, not a field
        (b"X Note: value", 'invalid field name ("X Note")'),
        (b"X-N\xc3\xb6te: value", 'invalid field name ("X-N\\xc3\\xb6te")'),
        (b"X-\x01: value", 'invalid field name ("X-\\x01")'),
        (b"X-\x7f: value", 'invalid field name ("X-\\x7f")'),
    ],
)
def test_syntax(eol: bytes, line: bytes, problem: str | None) -> None:
    expected = [] if problem is None else found((6, f"line 8: {problem}"))
    assert bad(line, eol=eol) == expected


def test_syntax_long_excerpt_is_cut() -> None:
    assert bad(b"x" * 41) == found((6, 'line 8: not a header field ("' + "x" * 40 + '...")'))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_continuation_at_the_start(eol: bytes) -> None:
    assert check_headers(message(b" folded", *CLEAN, eol=eol)) == found(
        (6, "line 1: continuation line before any header field")
    )
    # After an mbox separator, the first line of the message is line 2.
    assert check_headers(message(b"From alice Mon Jan  1 00:00:00 2024", b"\tx", *CLEAN, eol=eol)) == found(
        (6, "line 2: continuation line before any header field")
    )


def test_problems_of_a_line_that_is_no_field_name_it_by_line() -> None:
    assert bad(b"garbage \xe9\0", b" ", b"\t" + b"z" * 999) == found(
        (6, 'line 8: not a header field ("garbage \\xe9\\x00")'),
        (2, "line 8: non-encoded 8-bit characters (invalid UTF-8)"),
        (3, "line 8: control characters (NUL)"),
        (4, "line 8: folded line made only of whitespace"),
        (5, "line 8: line longer than 998 characters"),
    )


def test_8bit_in_a_bad_name_is_syntax_only() -> None:
    assert bad(b"X-\xe9: plain") == found((6, 'line 8: invalid field name ("X-\\xe9")'))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_missing(eol: bytes) -> None:
    assert check_headers(message(b"Subject: hi", eol=eol)) == found(
        (7, "Date: missing"), (7, "From: missing")
    )
    assert check_headers(message(b"date: x", eol=eol)) == found((7, "From: missing"))
    assert check_headers(message(b"FROM: x", eol=eol)) == found((7, "Date: missing"))


def test_missing_when_there_is_no_header() -> None:
    assert check_headers(b"\r\nbody") == found((7, "Date: missing"), (7, "From: missing"))
    assert check_headers(b"") == found((7, "Date: missing"), (7, "From: missing"))


def test_a_bad_date_line_does_not_count_as_date() -> None:
    lines = [line for line in CLEAN if not line.startswith(b"Date:")]
    assert check_headers(message(b"Date x", *lines)) == found(
        (6, 'line 1: not a header field ("Date x")'), (7, "Date: missing")
    )


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_multiple(eol: bytes) -> None:
    assert bad(b"from: x", b"Message-Id: <2@x>", b"FROM: y", b"Received: again", eol=eol) == found(
        (8, "From: appears 3 times"), (8, "Message-ID: appears 2 times")
    )


@pytest.mark.parametrize(
    "name",
    [
        b"Date",
        b"From",
        b"Sender",
        b"Reply-To",
        b"To",
        b"Cc",
        b"Bcc",
        b"Subject",
        b"Message-ID",
        b"References",
        b"In-Reply-To",
        b"MIME-Version",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"Content-ID",
        b"Content-Description",
        b"Content-Disposition",
        b"Auto-Submitted",
    ],
)
def test_multiple_each_single_field(name: bytes) -> None:
    head = message(*CLEAN, name + b": one", name.lower() + b": two")
    count = 3 if any(line.lower().startswith(name.lower() + b":") for line in CLEAN) else 2
    assert check_headers(head) == found((8, f"{name.decode()}: appears {count} times"))


def test_several_problems_in_one_field_in_minor_order() -> None:
    assert bad(b"X-Note: \xe9\0", b" ", b" " + b"y" * 999) == found(
        (2, "X-Note: non-encoded 8-bit characters (invalid UTF-8)"),
        (3, "X-Note: control characters (NUL)"),
        (4, "X-Note: folded line made only of whitespace"),
        (5, "X-Note: line longer than 998 characters"),
    )


def test_findings_in_message_order_then_missing_then_multiple() -> None:
    head = message(b"To: a", b"--b", b"To: b", b"Subject: \xe9")
    assert check_headers(head) == found(
        (6, 'line 2: not a header field ("--b")'),
        (2, "Subject: non-encoded 8-bit characters (invalid UTF-8)"),
        (7, "Date: missing"),
        (7, "From: missing"),
        (8, "To: appears 2 times"),
    )


# max_findings


def test_max_findings_stops_in_the_fields() -> None:
    head = message(*(b"--%d" % n for n in range(200)))
    findings = check_headers(head)
    assert len(findings) == 100
    assert findings[-1].detail == 'line 100: not a header field ("--99")'
    assert len(check_headers(head, max_findings=3)) == 3


def test_max_findings_stops_in_the_counts() -> None:
    head = message(b"--x", b"To: a", b"To: b")
    assert check_headers(head, max_findings=2) == found(
        (6, 'line 1: not a header field ("--x")'), (7, "Date: missing")
    )
    assert len(check_headers(head, max_findings=4)) == 4
    assert len(check_headers(head, max_findings=5)) == 4


@pytest.mark.parametrize("limit", [0, -1])
def test_max_findings_zero_or_less(limit: int) -> None:
    assert check_headers(b"--x\r\n", max_findings=limit) == []


# Size and hostile input


def test_one_megabyte_line_is_quick() -> None:
    start = time.perf_counter()
    findings = bad(b"X-Big: " + b"\xe9\0\r" * 350_000)
    assert time.perf_counter() - start < 2
    assert [f.minor for f in findings] == [2, 3, 5]


def test_one_megabyte_name_is_quick() -> None:
    start = time.perf_counter()
    findings = bad(b"X" * 1_000_000 + b"\xe9: v")
    assert time.perf_counter() - start < 2
    assert [f.minor for f in findings] == [6, 5]


def test_hundred_thousand_fields_are_quick() -> None:
    fields = [b"X-Field-%d: value \xe9" % n for n in range(100_000)]
    head = message(*CLEAN, *fields, b"Subject: again")
    start = time.perf_counter()
    assert check_headers(head, max_findings=1_000_000)[-1] == Finding(
        Category.BAD_HEADER, 8, "Subject: appears 2 times"
    )
    assert check_headers(head)[-1].detail == "X-Field-99: non-encoded 8-bit characters (invalid UTF-8)"
    assert time.perf_counter() - start < 5


def test_hundred_thousand_folds_are_quick() -> None:
    head = message(*CLEAN, b"X-Long: a", *([b" b"] * 100_000))
    start = time.perf_counter()
    assert check_headers(head) == []
    assert time.perf_counter() - start < 2


def _assert_well_formed(findings: list[Finding], max_findings: int = 100) -> None:
    assert len(findings) <= max(max_findings, 0)
    for finding in findings:
        assert finding.category is Category.BAD_HEADER
        assert 2 <= finding.minor <= 8
        assert finding.part == ""
        assert finding.detail.isascii()
        assert finding.detail.isprintable()


@given(st.binary(max_size=4000), st.booleans(), st.integers(min_value=-2, max_value=150))
def test_arbitrary_bytes_never_raise(head: bytes, smtputf8: bool, max_findings: int) -> None:
    _assert_well_formed(check_headers(head, smtputf8=smtputf8, max_findings=max_findings), max_findings)


_PIECES = st.sampled_from(
    [b"From ", b"From", b"Date", b"To", b"Subject", b"X", b"-", b"--", b":", b" ", b"\t", b"\r", b"\n",
     b"\r\n", b"\0", b"\xe9", b"\xc3\xa9", b"\xc2\x85", b"\x01", b"a", b"x" * 999]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=60).map(b"".join), st.booleans())
def test_header_like_bytes_never_raise(head: bytes, smtputf8: bool) -> None:
    _assert_well_formed(check_headers(head, smtputf8=smtputf8))
    assert head.startswith(header_section(head))


# The corpus


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is not here")
    return sorted(path for path in CORPUS.rglob("*") if path.is_file())


def test_corpus_never_raises() -> None:
    files = _corpus_files()
    start = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        for smtputf8 in (False, True):
            _assert_well_formed(check_headers(data, smtputf8=smtputf8))
    assert len(files) > 1000
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize(
    ("name", "smtputf8", "expected"),
    [
        # An mbox separator first, then a clean header.
        ("spamassassin-public-corpus/easy-ham-1/00008.5891548d921601906337dcf1ed8543cb", False, []),
        # Latin-1 and worse in From, To and Subject, mixed CRLF and LF.
        (
            "flanker/mailformed-headers.eml",
            False,
            [
                (2, "From: non-encoded 8-bit characters (invalid UTF-8)"),
                (2, "To: non-encoded 8-bit characters (invalid UTF-8)"),
                (2, "Subject: non-encoded 8-bit characters (invalid UTF-8)"),
            ],
        ),
        # RFC 6532 UTF-8 headers: bad unless the message came with SMTPUTF8.
        (
            "ruby-mail/rfc6532/utf8_headers.eml",
            False,
            [
                (2, "From: non-encoded 8-bit characters"),
                (2, "To: non-encoded 8-bit characters"),
                (2, "Subject: non-encoded 8-bit characters"),
                (7, "Date: missing"),
            ],
        ),
        ("ruby-mail/rfc6532/utf8_headers.eml", True, [(7, "Date: missing")]),
        ("rspamd/phish_sender.eml", False, [(8, "From: appears 2 times")]),
        ("cpython-email/msg_20.txt", False, [(8, "Cc: appears 3 times")]),
        # No empty line after the header: a folded blank line, then the first boundary.
        (
            "rspamd/fws_fn.eml",
            False,
            [
                (4, "Content-Type: folded line made only of whitespace"),
                (6, 'line 9: not a header field ("--sd8f70as98f70as98f70as98f70as98df70as9...")'),
                (8, "Content-Type: appears 2 times"),
            ],
        ),
        (
            "mime4j/testmsgs/very-very-long-boundary.msg",
            False,
            [
                (5, "Content-Type: line longer than 998 characters"),
                (7, "Date: missing"),
                (7, "From: missing"),
            ],
        ),
    ],
)
def test_corpus_known_files(name: str, smtputf8: bool, expected: list[tuple[int, str]]) -> None:
    _corpus_files()
    assert check_headers((CORPUS / name).read_bytes(), smtputf8=smtputf8) == found(*expected)
