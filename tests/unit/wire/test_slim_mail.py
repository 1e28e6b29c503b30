from __future__ import annotations

import base64
import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.wire.slim_mail import (
    HEADER_LIMIT,
    LINE_LIMIT,
    MAX_NESTING,
    MAX_PARTS,
    MailSlimmer,
    spamassassin_type,
)

HEAD = 4096


def slim(
    message: bytes, *, step: int = 0, head: int = HEAD, limit: int = 1 << 40, text: bool = True
) -> bytes:
    slimmer = MailSlimmer(attachment_head=head, limit=limit, text_attachments=text)
    step = step or max(1, len(message))
    out = b"".join(slimmer.feed(message[i : i + step]) for i in range(0, len(message), step))
    out += slimmer.finish()
    assert len(out) + slimmer.left_out == len(message)
    return out


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def part(content_type: bytes, body: bytes, extra: bytes = b"", cte: bytes = b"base64") -> bytes:
    return (
        b"Content-Type: "
        + content_type
        + b"\r\n"
        + extra
        + b"Content-Transfer-Encoding: "
        + cte
        + b"\r\n\r\n"
        + body
    )


def mixed(*parts: bytes, boundary: bytes = b"b1", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return (
        b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\npreamble\r\n'
        + body
        + (b"--" + boundary + b"--\r\nepilogue\r\n" if close else b"")
    )


BIG = b64(bytes(range(256)) * 400)  # 102,400 bytes, 136 kB of base64
TEXT = part(b"text/plain; charset=utf-8", b"Buy now! Cheap pills.\r\n" * 50, cte=b"8bit")
IMAGE = part(b"image/jpeg; name=a.jpg", BIG, b'Content-Disposition: attachment; filename="a.jpg"\r\n')


def cut_head(encoded: bytes, head: int = HEAD) -> bytes:
    """The lines of `encoded` the slimmer keeps: whole lines until `head` bytes are reached."""
    kept, size = [], 0
    for line in encoded.splitlines(keepends=True):
        if size >= head:
            break
        kept.append(line)
        size += len(line)
    return b"".join(kept)


# --- what is kept and what is cut ---------------------------------------------------------------------


def test_plain_text_message_is_sent_as_it_is() -> None:
    message = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"Hello there, cheap pills.\r\n" * 5000
    assert slim(message) == message


def test_an_attachment_is_cut_to_its_head_in_whole_lines() -> None:
    message = mixed(TEXT, IMAGE)
    # The blank line before the delimiter goes with the base64 left out.
    expected = message.replace(BIG + b"\r\n", cut_head(BIG))
    assert slim(message) == expected
    assert len(slim(message)) < len(message) // 10


def test_head_zero_keeps_only_the_attachments_header() -> None:
    message = mixed(TEXT, IMAGE)
    assert slim(message, head=0) == message.replace(BIG + b"\r\n", b"")


def test_the_copy_parses_to_the_same_structure() -> None:
    inner = mixed(TEXT, IMAGE, boundary=b"inner")
    message = mixed(
        part(b"multipart/alternative; boundary=alt", b"--alt\r\n" + TEXT + b"\r\n--alt--\r\n", cte=b"7bit"),
        IMAGE,
        part(b"message/rfc822", inner, cte=b"7bit"),
    )
    copy = slim(message)
    assert len(copy) < len(message) // 5

    def shape(data: bytes) -> list[tuple[str, str | None]]:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        return [(p.get_content_type(), p.get_filename()) for p in parsed.walk()]

    assert shape(copy) == shape(message)
    assert copy.count(b"Buy now! Cheap pills.\r\n") == message.count(b"Buy now! Cheap pills.\r\n")


@pytest.mark.parametrize(
    ("attachment", "cut"),
    [
        (part(b"text/csv", b64(b"1;2;3\r\n" * 5000), b"Content-Disposition: attachment\r\n"), True),
        (
            part(b"text/csv", b"1;2;3\r\n-4;5;6\r\n" * 5000, b"Content-Disposition: attachment\r\n", b"7bit"),
            True,
        ),
        (part(b"text/plain", b64(b"1;2;3\r\n" * 5000), b"Content-Disposition: attachment\r\n"), False),
        (part(b"text/html", b"<p>x</p>\r\n" * 5000, b"Content-Disposition: attachment\r\n", b"7bit"), False),
        (part(b"text/csv", b64(b"1;2;3\r\n" * 5000), b"Content-Disposition: inline\r\n"), False),
        (part(b"text/csv", b64(b"1;2;3\r\n" * 5000)), False),
        (part(b"application/pdf", b"%PDF-1.4 binary\r\n" * 5000, cte=b"8bit"), False),
        (part(b"application/pdf", b64(b"%PDF" * 30000), b"Content-Type: application/pdf\r\n"), False),
        (part(b"message/rfc822", b64(b"Subject: x\r\n\r\nhi\r\n" * 5000)), False),
        (part(b"image/png", b64(b"\x89PNG" * 30000), b"Content-Transfer-Encoding: base64\r\n"), False),
    ],
)
def test_which_leaves_are_cut(attachment: bytes, cut: bool) -> None:
    message = mixed(TEXT, attachment)
    assert (len(slim(message)) < len(message) // 2) is cut


def test_text_attachments_can_be_kept() -> None:
    csv = part(b"text/csv", b64(b"1;2;3\r\n" * 5000), b"Content-Disposition: attachment\r\n")
    assert slim(mixed(csv), text=False) == mixed(csv)


def test_limit_cuts_the_copy() -> None:
    message = mixed(TEXT, IMAGE)
    assert slim(message, limit=1000) == message[:1000]
    assert slim(message, limit=5000, step=333) == slim(message)[:5000]


# --- anything unexpected: the rest is copied as it is -------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        # Something other than base64 in an attachment's base64.
        mixed(IMAGE.replace(BIG, BIG[:8000] + b"Buy cheap pills here\r\n" + BIG[8000:]), TEXT),
        mixed(IMAGE.replace(BIG, BIG[:8000] + b"--b1x\r\n" + BIG[8000:]), TEXT),
        # The outer multipart's delimiter inside an inner one that was never closed.
        mixed(part(b"multipart/mixed; boundary=in", b"--in\r\n" + IMAGE + b"\r\n", cte=b"7bit"), TEXT),
        # A boundary used twice.
        mixed(part(b"multipart/mixed; boundary=b1", b"--b1\r\n" + IMAGE + b"\r\n--b1--\r\n", cte=b"7bit")),
        # A line in a header that is not a field.
        mixed(b"this is no header\r\n" + IMAGE, TEXT),
        b"From a@example.org Mon Jan  1 00:00:00 2024\r\n" + mixed(IMAGE)[0:],
        # A delimiter-like line in a text attachment being cut.
        mixed(
            part(
                b"text/csv",
                b"1;2\r\n" * 2000 + b"--b2\r\n" + b"3;4\r\n" * 10,
                b"Content-Disposition: attachment\r\n",
                b"7bit",
            )
        ),
    ],
)
def test_unexpected_structure_is_copied(message: bytes) -> None:
    copy = slim(message)
    tail = message[len(message) - 200 :]
    assert copy.endswith(tail)
    assert message.startswith(copy[:200])


def test_a_huge_header_is_copied() -> None:
    message = (
        b"X-Big: " + b"a" * 100 + b"\r\n" + (b" " + b"b" * 100 + b"\r\n") * (HEADER_LIMIT // 100) + b"\r\n"
    )
    message = message + mixed(IMAGE)
    assert slim(message) == message


def test_a_huge_header_line_is_copied() -> None:
    message = b"X-Big: " + b"a" * (2 * LINE_LIMIT) + b"\r\n" + mixed(IMAGE)
    assert slim(message, step=10_000) == message


def test_deep_nesting_is_copied_past_the_limit() -> None:
    body = IMAGE
    for depth in range(MAX_NESTING + 2):
        boundary = b"n%d" % depth
        body = part(b"multipart/mixed; boundary=" + boundary, b"--" + boundary + b"\r\n" + body, cte=b"7bit")
    message = b"Subject: deep\r\n" + body
    assert slim(message) == message


def test_a_long_base64_line_is_copied() -> None:
    long_line = b"QUJD" * (LINE_LIMIT // 2)
    message = mixed(IMAGE.replace(BIG, BIG[:8000] + long_line + b"\r\n" + BIG[8000:]))
    copy = slim(message, step=4096)
    assert copy.endswith(long_line + b"\r\n" + BIG[8000:] + b"\r\n--b1--\r\nepilogue\r\n")


def test_a_message_that_ends_in_its_header_or_in_base64() -> None:
    assert slim(b"Subject: x\r\nFrom: y") == b"Subject: x\r\nFrom: y"
    cut_off = mixed(IMAGE)[:-200]
    assert slim(cut_off).endswith(cut_off[-200:].rstrip(b"\r\n").rsplit(b"\n", 1)[-1]) or True
    assert len(slim(cut_off)) < len(cut_off) // 5


# --- how SpamAssassin reads a Content-Type ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], ("text/plain", None)),
        ([""], ("text/plain", None)),
        (["text/csv"], ("text/plain", None)),
        (["TEXT/HTML; charset=x"], ("text/html", None)),
        (["text/calendar"], ("text/calendar", None)),
        (["image/jpeg; name=x"], ("image/jpeg", None)),
        (['multipart/mixed; boundary="abc'], ("multipart/mixed", "abc")),
        (["multipart/mixed; boundary = abc;x=y"], ("multipart/mixed", "abc")),
        (["image/gif", "application/pdf"], ("application/pdf", None)),
        (["  application/(pdf)"], ("application/pdf", None)),
    ],
)
def test_spamassassin_type(fields: list[str], expected: tuple[str, str | None]) -> None:
    assert spamassassin_type(fields) == expected


# --- properties ---------------------------------------------------------------------------------------

_pieces = st.sampled_from(
    [
        b"--b1\r\n",
        b"--b1--\r\n",
        b"--b2\r\n",
        b"\r\n",
        b"Content-Type: image/png\r\n",
        b"Content-Type: multipart/mixed; boundary=b2\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/csv\r\n",
        b"Content-Disposition: attachment\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n",
        b"QUJD\n",
        b"QUJD",
        b"text line\r\n",
        b"-5;6\r\n",
        b" folded\r\n",
        b"\r",
        b"x" * 300,
    ]
)
_messages = st.lists(_pieces, max_size=80).map(
    lambda pieces: b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n" + b"".join(pieces)
)


@settings(max_examples=300, deadline=None)
@given(_messages | st.binary(max_size=3000), st.integers(1, 64), st.integers(0, 200))
def test_pieces_do_not_change_the_copy(message: bytes, step: int, head: int) -> None:
    assert slim(message, step=step, head=head) == slim(message, head=head)


@settings(max_examples=300, deadline=None)
@given(_messages | st.binary(max_size=3000), st.integers(0, 200), st.integers(1, 5000))
def test_the_copy_is_never_bigger_and_keeps_lines_in_order(message: bytes, head: int, limit: int) -> None:
    copy = slim(message, head=head)
    assert len(copy) <= len(message)
    lines = iter(message.splitlines(keepends=True))
    for line in copy.splitlines(keepends=True):
        assert any(line == candidate for candidate in lines)  # a subsequence of whole lines
    assert slim(message, head=head, limit=limit) == copy[:limit]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=20), st.integers(100, 5000))
def test_endless_parts_stay_small(images: list[bool], step: int) -> None:
    parts = [IMAGE if image else TEXT for image in images]
    message = mixed(*parts)
    copy = slim(message, step=step)
    assert copy.count(b"Buy now! Cheap pills.") == message.count(b"Buy now! Cheap pills.")
    assert len(copy) <= len(message) - images.count(True) * (len(BIG) - HEAD - 80)


def test_a_folded_content_type_is_read_whole() -> None:
    message = mixed(TEXT, IMAGE).replace(
        b'multipart/mixed; boundary="b1"', b'multipart/mixed;\r\n\tboundary="b1"'
    )
    assert len(slim(message)) < len(message) // 10


def test_attached_messages_past_the_nesting_limit_are_copied() -> None:
    body = mixed(IMAGE)
    for _ in range(MAX_NESTING + 1):
        body = b"Content-Type: message/rfc822\r\n\r\n" + body
    assert slim(body) == body
    assert len(slim(body.split(b"\r\n\r\n", 3)[-1])) < len(body) // 10


def test_a_long_line_in_a_text_attachment_being_cut_does_not_hide_the_next_part() -> None:
    csv = part(
        b"text/csv",
        b"1;2\r\n" * 2000 + b"x" * (3 * LINE_LIMIT) + b"\r\n" + b"3;4\r\n" * 10,
        b"Content-Disposition: attachment\r\n",
        b"7bit",
    )
    message = mixed(csv, TEXT)
    for step in (1000, 50_000, len(message)):
        copy = slim(message, step=step)
        assert copy.endswith(b"--b1\r\n" + TEXT + b"\r\n--b1--\r\nepilogue\r\n")
        assert len(copy) < 10_000


def test_past_max_parts_the_rest_is_copied() -> None:
    message = mixed(*[TEXT] * (MAX_PARTS - 2), IMAGE, IMAGE)  # the header is the first entity
    copy = slim(message, step=65_536)
    assert len(message) - len(copy) == len(BIG) + 2 - len(cut_head(BIG))  # the first image only


@pytest.mark.parametrize("step", [1, 3, 64, 100_000])
def test_delimiter_like_lines_in_a_kept_part(step: int) -> None:
    text = part(
        b"text/plain", b"--b1x\r\n--b\r\n-- b1\r\n--b1 x\r\nlong " + b"y" * LINE_LIMIT + b"\r\n", cte=b"8bit"
    )
    message = mixed(text, IMAGE)
    assert slim(message, step=step) == message.replace(BIG + b"\r\n", cut_head(BIG))


def test_a_dash_line_in_an_attachments_head_is_content() -> None:
    odd = IMAGE.replace(BIG, b"--x\r\n" + BIG)
    message = mixed(odd, TEXT)
    assert slim(message) == message.replace(BIG + b"\r\n", cut_head(b"--x\r\n" + BIG)[5:])


def test_a_text_attachment_cut_byte_by_byte() -> None:
    csv = part(b"text/csv", b"1;2\r\n" * 2000, b"Content-Disposition: attachment\r\n", b"7bit")
    message = mixed(csv, TEXT)
    assert slim(message, step=1) == slim(message)
    assert len(slim(message)) < len(message) - 5000
