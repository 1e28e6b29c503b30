"""Lines over 998 octets made to fit: folded headers and re-encoded parts keep their content."""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import re
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.wire.long_lines import MAX_LINE, PIECE, LineFitter, LongLineFinder
from qsift.wire.smtp_data import encode_data


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def fit(
    message: bytes,
    cuts: Sequence[int] = (),
    refit: frozenset[int] = frozenset(),
    *,
    header_only: bool = False,
) -> tuple[bytes, set[int]]:
    fitter = LineFitter(refit, header_only=header_only)
    out = b"".join(fitter.feed(chunk) for chunk in chunked(message, list(cuts))) + fitter.finish()
    return out, fitter.long_parts


def two_passes(message: bytes, cuts: Sequence[int] = ()) -> bytes:
    _, parts = fit(message, cuts)
    out, _ = fit(message, cuts, frozenset(parts))
    return out


def longest(data: bytes) -> int:
    return max(len(line.removesuffix(b"\r")) for line in data.split(b"\n"))


def parts_of(message: email.message.Message) -> list[email.message.Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, email.message.Message)]


def unfold(header: bytes) -> bytes:
    return re.sub(rb"\r?\n(?=[ \t])", b"", header)


# --- finding long lines -------------------------------------------------------------------------------


def has_long_line(message: bytes) -> bool:
    return any(len(line.removesuffix(b"\r")) > MAX_LINE for line in message.split(b"\n"))


@pytest.mark.parametrize(
    ("message", "found"),
    [
        (b"", False),
        (b"a" * 998, False),
        (b"a" * 999, True),
        (b"a" * 998 + b"\r\n" + b"b" * 998 + b"\n", False),
        (b"x\n" + b"a" * 999 + b"\r\nshort\n", True),
        (b"x\n" + b"a" * 998 + b"\r\nshort\n", False),
        (b"a" * 998 + b"\r", False),  # a CR at the very end leaves as a line end
        (b"a" * 997 + b"\rb\n", True),
    ],
)
def test_long_line_cases(message: bytes, found: bool) -> None:
    finder = LongLineFinder()
    finder.update(message)
    assert finder.found is found


def test_a_cr_at_a_chunk_end_is_counted_once_the_next_chunk_shows_it_bare() -> None:
    for second, found in ((b"\n" + b"b" * 998, False), (b"b" * 500, True)):
        finder = LongLineFinder()
        finder.update(b"a" * 500 + b"\r")
        finder.update(second)
        assert finder.found is found


@given(
    lengths=st.lists(st.integers(0, 1100), max_size=6),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b""]), min_size=6, max_size=6),
    cuts=st.lists(st.integers(0, 7000), max_size=8),
)
def test_long_lines_are_found_in_any_chunking(lengths: list[int], ends: list[bytes], cuts: list[int]) -> None:
    message = b"".join(b"a" * n + end for n, end in zip(lengths, ends, strict=False))
    finder = LongLineFinder()
    for chunk in chunked(message, cuts):
        finder.update(chunk)
    assert finder.found is has_long_line(message)


# --- header sections ----------------------------------------------------------------------------------

words = st.binary(min_size=1, max_size=80).map(lambda b: b.translate(None, b" \t\r\n:") or b"w")
field_values = st.lists(st.tuples(st.sampled_from([b" ", b"\t", b"  "]), words), min_size=1, max_size=60)


@given(
    values=st.lists(field_values, min_size=1, max_size=4),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_header_lines_fold_at_white_space_and_unfold_to_the_original(
    values: list[list[tuple[bytes, bytes]]], newline: bytes, cuts: list[int]
) -> None:
    fields = [
        b"X-F%d:" % i + b"".join(space + word for space, word in value) for i, value in enumerate(values)
    ]
    header = newline.join(fields) + newline
    message = header + newline + b"body" + newline
    out, parts = fit(message, cuts)
    assert parts == set()
    assert longest(out) <= MAX_LINE
    head, _, body = out.partition(newline + newline)
    assert unfold(head + newline) == header
    assert body == b"body" + newline


def test_a_stretch_without_white_space_is_cut_with_a_space() -> None:
    out, _ = fit(b"X-Long: " + b"a" * 2500 + b"\nSubject: s\n\nbody\n")
    lines = out.split(b"\n")
    assert [len(line) for line in lines[:4]] == [7, 998, 998, 507]
    assert unfold(out).split(b"\n")[0] == b"X-Long: " + b" ".join([b"a" * 997, b"a" * 997, b"a" * 506])


def test_a_field_whose_name_runs_past_the_limit_stays_a_field() -> None:
    # Cut before its colon, the line is no field at the next hop: the part's header would end there and
    # its Content-Type (what the checks read) would be body text downstream.
    name = b"X-" + b"n" * 1100
    part = name + b": v w\nContent-Type: application/octet-stream; name=a.exe\n\nMZ"
    message = mixed(part)
    out, _ = fit(message, [5, 600, 1200])
    assert out == message
    [fitted] = parts_of(email.message_from_bytes(out, policy=email.policy.compat32))
    assert fitted.get_filename() == "a.exe"


@pytest.mark.parametrize("cuts", [(), (1000,), (996, 997, 998)])
def test_a_bare_cr_is_a_line_end_so_no_fold_follows_it(cuts: tuple[int, ...]) -> None:
    # Folded right after the bare CR, the forward's CR CR LF is two line ends: the header would end there
    # and its Content-Type (what the checks read) would be body text at the next hop.
    message = (
        b"X-A: "
        + b"a" * 990
        + b"\r "
        + b"b" * 20
        + b"\r\nContent-Type: application/octet-stream; name=a.exe\r\n\r\nMZ\r\n"
    )
    out, _ = fit(message, cuts)
    assert out == message
    sent = b"".join(encode_data([out]))
    header = email.message_from_bytes(sent[: -len(b".\r\n")], policy=email.policy.compat32)
    assert header.get_filename() == "a.exe"


def test_a_delimiter_after_a_bare_cr_ends_a_re_encoded_part() -> None:
    # The decoder and the forward both take the line after the bare CR for a delimiter: the fitter too.
    part = b"Content-Type: text/plain\n\n" + b"x" * 1000 + b"\r--b1\nContent-Type: text/html\n\n<p>"
    out = two_passes(mixed(part))
    assert out.endswith(b"x" * 21 + b"\n--b1\nContent-Type: text/html\n\n<p>\n--b1--\n")


def test_a_header_line_longer_than_a_piece_is_folded_as_it_comes() -> None:
    value = b" ".join([b"w" * 50] * 3000)  # 153 kB
    out, _ = fit(b"References: " + value + b"\r\n\r\nbody", [1000, 70_000, 140_000])
    assert longest(out) <= MAX_LINE
    assert unfold(out) == b"References: " + value + b"\r\n\r\nbody"


def test_an_mbox_from_line_and_a_header_without_a_body() -> None:
    message = b"From alice@example.org Wed Nov 25 12:00:00 2026\nSubject: s\n"
    assert fit(message) == (message, set())
    assert fit(message[:-1]) == (message[:-1], set())


# --- bodies sent as they are: re-encoded quoted-printable -----------------------------------------------

body_lines = st.lists(
    st.tuples(
        st.binary(max_size=2500).map(lambda b: b.replace(b"\n", b"")), st.sampled_from([b"\n", b"\r\n"])
    ),
    min_size=1,
    max_size=5,
)


@given(lines=body_lines, last_ends=st.booleans(), cuts=st.lists(st.integers(0, 13_000), max_size=6))
def test_a_re_encoded_part_decodes_to_its_bytes(
    lines: list[tuple[bytes, bytes]], last_ends: bool, cuts: list[int]
) -> None:
    body = b"".join(line + end for line, end in lines) + b"x" * 1000
    if not last_ends:
        body = body.removesuffix(b"\n").removesuffix(b"\r")
    message = b"Subject: s\n\n" + body
    _, parts = fit(message, cuts)
    assert parts == {0}
    out = two_passes(message, cuts)
    head, _, encoded = out.partition(b"\n\n")
    assert head == b"Subject: s\nMIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable"
    # A bare CR is a line end, as on the SMTP forward.
    assert binascii.a2b_qp(encoded) == re.sub(rb"\r(?!\n)", b"\n", body)
    assert encoded.isascii()
    for line in re.split(rb"\r?\n", encoded):
        assert len(line) <= 76
        assert not line.startswith(b"-")  # never a delimiter


def test_a_re_encoded_line_longer_than_a_piece() -> None:
    body = b"\xe9=-" * (PIECE // 2) + b"\r\nend\r\n"
    message = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\nSubject: s\r\n\r\n" + body
    out = two_passes(message, [PIECE // 3, PIECE + 5])
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_all("MIME-Version") == ["1.0"]
    assert parsed.get_payload(decode=True) == body


def test_a_folded_transfer_encoding_field_is_replaced_whole() -> None:
    message = b"Content-Transfer-Encoding:\n 8bit\nX-After: 1\n\n" + b"a" * 1000 + b"\n"
    out = two_passes(message)
    assert out.startswith(b"X-After: 1\nMIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\n")


# --- MIME structure -----------------------------------------------------------------------------------

LONG = b"L" * 1200


def mixed(*parts: bytes, boundary: bytes = b"b1", preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    inner = b"".join(b"--" + boundary + b"\n" + part + b"\n" for part in parts)
    return (
        b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\n\n'
        + preamble
        + inner
        + b"--"
        + boundary
        + b"--\n"
        + epilogue
    )


def test_each_kind_of_part_fits_its_own_way() -> None:
    message = mixed(
        b"Content-Type: text/plain\n\n" + LONG,
        b"Content-Transfer-Encoding: base64\n\n" + b"QUJD" * 400,
        b"Content-Transfer-Encoding: quoted-printable\n\n" + b"ab=3Dc" * 200 + b"-" * 100,
        b"Content-Transfer-Encoding: x-uuencode\n\n" + LONG,
        b"Content-Type: message/partial; id=x; number=1\n\n" + LONG,
        b"Content-Type: text/plain\n\nshort",
        b"Content-Transfer-Encoding: base64\n\nQUJD\nQUJD",
        preamble=LONG + b"\n",
        epilogue=LONG + b"\n",
    )
    _, parts = fit(message)
    assert parts == {1}
    out = two_passes(message)
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    text, b64, qp, uue, _partial, short, short_b64 = parts_of(parsed)
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_payload(decode=True) == LONG
    assert b64.get_payload(decode=True) == b"ABC" * 400
    assert qp.get_payload(decode=True) == b"ab=c" * 200 + b"-" * 100
    assert uue.get_payload() == LONG.decode()  # an encoding not known here passes as it came
    assert short.get_payload() == "short"
    assert short_b64.get_payload() == "QUJD\nQUJD"
    assert out.count(LONG) == 4  # preamble, epilogue, uuencoded, message/partial
    assert longest(out.replace(LONG, b"")) <= 76


def test_a_quoted_printable_line_is_never_cut_inside_an_escape() -> None:
    for shift in range(4):
        line = b"x" * shift + b"=41" * 400
        out = two_passes(b"Content-Transfer-Encoding: quoted-printable\n\n" + line + b"\n")
        encoded = out.partition(b"\n\n")[2]
        assert binascii.a2b_qp(encoded) == b"x" * shift + b"A" * 400 + b"\n"
        assert longest(encoded) <= 76


def test_attached_messages_and_digests_are_followed() -> None:
    inner = b"Subject: inner\n" + b"X-Wide: " + b"w " * 600 + b"\n\n" + LONG
    message = (
        b"Content-Type: multipart/digest; boundary=d\n\n--d\n\n"
        + inner
        + b"\n--d\nContent-Type: message/rfc822\n\n"
        + inner
        + b"\n--d--\n"
    )
    _, parts = fit(message)
    assert parts == {2, 4}  # each attached message's own body
    out = two_passes(message)
    assert longest(out) <= 998
    first, second = parts_of(email.message_from_bytes(out, policy=email.policy.compat32))
    for attached in (first, second):
        [inner_message] = parts_of(attached)
        assert inner_message.get_payload(decode=True) == LONG
        assert inner_message["X-Wide"].replace("\n", "") == "w " * 600


def test_a_part_whose_header_has_no_empty_line_is_left_alone() -> None:
    message = mixed(b"Content-Type: text/plain\n" + LONG, b"Content-Type: text/plain")
    assert fit(message) == (message, set())


def test_an_unclosed_inner_multipart_ends_at_the_outer_delimiter() -> None:
    message = mixed(b'Content-Type: multipart/alternative; boundary="in"\n\n--in\n\n' + LONG, b"\n" + LONG)
    _, parts = fit(message)
    assert parts == {2, 3}
    out = two_passes(message)
    assert longest(out) <= 76 + 20


def test_nesting_past_the_bound_passes_as_it_came() -> None:
    message = LONG
    for depth in range(70):
        boundary = b"n%d" % depth
        message = (
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\n\n--" + boundary + b"\n" + message
        )
    assert fit(message)[0] == message


def test_header_only_looks_at_the_message_header_alone() -> None:
    message = b"X-Spam-Status: " + b"t, " * 500 + b"\r\n\r\n" + LONG + b"\r\n"
    out, _ = fit(message, [3, 40, len(message) - 10], header_only=True)
    assert longest(out.partition(b"\r\n\r\n")[0]) <= 998
    assert out.endswith(b"\r\n\r\n" + LONG + b"\r\n")
    headerless = b"not a header " + LONG
    assert fit(headerless, [5], header_only=True)[0] == headerless


def test_a_header_ended_by_a_bare_cr_line_and_a_boundary_with_8bit_octets() -> None:
    message = b"Subject: s\n\r\r\n" + LONG + b"\n"
    assert fit(message)[1] == {0}
    assert two_passes(message).startswith(b"Subject: s\nMIME-Version: 1.0\n")
    assert two_passes(message).count(b"\n\r\r\n") == 1
    # The email package reads 8-bit octets in a boundary as U+FFFD, so the decoder finds no delimiter
    # either: the whole body is a preamble, and passes as it came.
    eight_bit = mixed(b"\n" + LONG, boundary=b"\xe9t\xe9")
    assert fit(eight_bit) == (eight_bit, set())


def test_a_long_base64_line_is_cut_without_touching_its_characters() -> None:
    line = b"Q" * 76 * 14 + b"-QUJD"  # its last piece starts with the "-"
    out = two_passes(b"Content-Transfer-Encoding: base64\n\n" + line + b"\n")
    encoded = out.partition(b"\n\n")[2]
    assert encoded.replace(b"\n", b"") == line
    assert longest(encoded) <= 76


def test_a_run_of_bare_crs_in_one_large_chunk_is_read_in_linear_time() -> None:
    # Each bare CR is a line; finding it must not scan the whole rest of the chunk for an LF each time.
    message = b"Subject: s\n\n" + b"\r" * 400_000 + b"x" * 1000 + b"\n"
    fitter = LineFitter()
    out = fitter.feed(message) + fitter.finish()
    assert out == message and fitter.long_parts == {0}
