from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.errors import BadAddress, ProtocolError
from qsift.wire.qmail_queue import (
    ALL_EXIT_CODES,
    MAX_CUSTOM_ERROR,
    answer_for_exit,
    custom_error_text,
    describe,
    encode_envelope,
    is_permanent,
    parse_envelope,
)

# --- the envelope -----------------------------------------------------------------------------------------


def test_encode_envelope_as_in_qmail_queue_8() -> None:
    assert encode_envelope(b"a@b.c", [b"x@y.z", b"q@y.z"]) == b"Fa@b.c\0Tx@y.z\0Tq@y.z\0\0"


def test_encode_envelope_null_sender_and_special_senders() -> None:
    assert encode_envelope(b"", [b"r@x"]) == b"F\0Tr@x\0\0"
    assert encode_envelope(b"#@[]", [b"r@x"]) == b"F#@[]\0Tr@x\0\0"


def test_encode_envelope_refuses_nul_in_an_address() -> None:
    with pytest.raises(BadAddress):
        encode_envelope(b"a\0b", [b"r"])
    with pytest.raises(BadAddress):
        encode_envelope(b"a", [b"r\0"])


@pytest.mark.parametrize(
    ("data", "sender", "recipients"),
    [
        (b"Fa@b.c\0Tx@y.z\0Tq@y.z\0\0", b"a@b.c", [b"x@y.z", b"q@y.z"]),
        (b"F\0Tr@x\0\0", b"", [b"r@x"]),
        (b"Fs\0\0", b"s", []),  # format-valid; the server refuses "no recipients"
        (b"Fs\0T\0\0", b"s", [b""]),  # likewise for an empty recipient
        (b"Fprefix@host-@[]\0Tr\0\0", b"prefix@host-@[]", [b"r"]),
    ],
)
def test_parse_envelope(data: bytes, sender: bytes, recipients: list[bytes]) -> None:
    assert parse_envelope(data) == (sender, recipients)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "no F record"),
        (b"\0", "no F record"),
        (b"Ta\0\0", "no F record"),
        (b"Fa", "unterminated record"),
        (b"Fa\0Tb", "unterminated record"),  # qmail-smtpd's databytes overflow (qmail_fail)
        (b"Fa\0Tb\0", "no final NUL"),
        (b"Fa\0", "no final NUL"),
        (b"Fa\0Xb\0\0", "does not start with T"),
        (b"Fa\0Fb\0\0", "does not start with T"),
        (b"Fa\0Tb\0\0Tc\0\0", "bytes after the final NUL"),
        (b"Fa\0Tb\0\0\0", "bytes after the final NUL"),
    ],
)
def test_parse_envelope_format_errors(data: bytes, text: str) -> None:
    with pytest.raises(ProtocolError, match=text):
        parse_envelope(data)


no_nul = st.binary(max_size=40).filter(lambda a: b"\0" not in a)


@given(no_nul, st.lists(no_nul, max_size=10))
def test_envelope_round_trip(sender: bytes, recipients: list[bytes]) -> None:
    assert parse_envelope(encode_envelope(sender, recipients)) == (sender, recipients)


@given(no_nul, st.lists(no_nul, max_size=5))
def test_every_truncated_envelope_is_refused(sender: bytes, recipients: list[bytes]) -> None:
    data = encode_envelope(sender, recipients)
    for end in range(len(data)):
        with pytest.raises(ProtocolError):
            parse_envelope(data[:end])


@given(st.binary(max_size=60))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        sender, recipients = parse_envelope(data)
    except ProtocolError:
        return
    assert encode_envelope(sender, recipients) == data


# --- exit codes -------------------------------------------------------------------------------------------


def test_every_code_qmail_defines_is_listed() -> None:
    expected = [0, 11, 31, *range(51, 57), *range(61, 67), *range(71, 75), 81, 82, 91, 115, 120]
    assert list(ALL_EXIT_CODES) == expected


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "queued"),
        (11, "envelope address too long for qq (#5.1.3)"),
        (31, "mail server permanently rejected message (#5.3.0)"),
        (32, "qq permanent problem (#5.3.0)"),
        (40, "qq permanent problem (#5.3.0)"),
        (51, "qq out of memory (#4.3.0)"),
        (52, "qq timeout (#4.3.0)"),
        (53, "qq write error or disk full (#4.3.0)"),
        (54, "qq read error (#4.3.0)"),
        (55, "qq unable to read configuration (#4.3.0)"),
        (56, "qq trouble making network connection (#4.3.0)"),
        (61, "qq trouble in home directory (#4.3.0)"),
        (62, "qq trouble creating files in queue (#4.3.0)"),
        (66, "qq trouble creating files in queue (#4.3.0)"),
        (71, "mail server temporarily rejected message (#4.3.0)"),
        (72, "connection to mail server timed out (#4.4.1)"),
        (73, "connection to mail server rejected (#4.4.1)"),
        (74, "communication with mail server failed (#4.4.2)"),
        (75, "qq temporary problem (#4.3.0)"),
        (81, "qq internal bug (#4.3.0)"),
        (82, "qq temporary problem (#4.3.0)"),
        (91, "qq internal bug (#4.3.0)"),
        (100, "qq temporary problem (#4.3.0)"),
        (115, "envelope address too long for qq (#5.1.3)"),
        (120, "unable to exec qq (#4.3.0)"),
        (255, "qq temporary problem (#4.3.0)"),
    ],
)
def test_describe_uses_qmail_c_texts(code: int, text: str) -> None:
    assert describe(code) == text


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (0, False),
        (10, False),
        (11, True),
        (31, True),
        (40, True),
        (41, False),
        (74, False),
        (100, False),
        (115, True),
        (120, False),
    ],
)
def test_is_permanent(code: int, permanent: bool) -> None:
    assert is_permanent(code) is permanent


@pytest.mark.parametrize(
    ("code", "custom", "answer"),
    [
        (0, None, ("K", "queued")),
        (0, b"Dignored", ("K", "queued")),
        (31, None, ("D", "mail server permanently rejected message (#5.3.0)")),
        (11, None, ("D", "envelope address too long for qq (#5.1.3)")),
        (71, None, ("Z", "mail server temporarily rejected message (#4.3.0)")),
        (100, None, ("Z", "qq temporary problem (#4.3.0)")),
        (82, b"Dvirus found (#5.7.1)", ("D", "virus found (#5.7.1)")),
        (82, b"Zscanner busy (#4.3.0)\n", ("Z", "scanner busy (#4.3.0)")),
        (82, b"Da\r\nb", ("D", "ab")),
        (82, b"Dx", ("Z", "qq temporary problem (#4.3.0)")),  # qmail.c needs more than 2 bytes
        (82, b"Xsomething", ("Z", "qq temporary problem (#4.3.0)")),
        (82, b"", ("Z", "qq temporary problem (#4.3.0)")),
        (82, None, ("Z", "qq temporary problem (#4.3.0)")),
        (31, b"Zcustom text ignored", ("D", "mail server permanently rejected message (#5.3.0)")),
    ],
)
def test_answer_for_exit(code: int, custom: bytes | None, answer: tuple[str, str]) -> None:
    assert answer_for_exit(code, custom) == answer


def test_answer_for_exit_keeps_what_qmail_c_reads() -> None:
    letter, text = answer_for_exit(82, b"D" + b"x" * 1000)
    assert letter == "D"
    assert len(text) == MAX_CUSTOM_ERROR - 1


# --- custom error text ------------------------------------------------------------------------------------


def test_custom_error_text() -> None:
    assert custom_error_text("D", "rejected: VIRUS Eicar", "5.7.0") == b"Drejected: VIRUS Eicar (#5.7.0)"
    assert custom_error_text("Z", "busy", "4.3.2") == b"Zbusy (#4.3.2)"


def test_custom_error_text_removes_control_characters() -> None:
    assert custom_error_text("D", "a\r\nb\tc\0d\x7fe", "5.7.0") == b"Dabcde (#5.7.0)"


def test_custom_error_text_refuses_other_letters() -> None:
    with pytest.raises(ValueError, match="D or Z"):
        custom_error_text("K", "ok", "2.0.0")


def test_custom_error_text_is_shortened_but_keeps_the_status() -> None:
    text = custom_error_text("D", "é" * 300, "5.7.1")
    assert len(text) <= MAX_CUSTOM_ERROR
    assert text.endswith(b" (#5.7.1)")
    text.decode("utf-8")  # never cut inside a character


@given(
    st.sampled_from("DZ"),
    st.text(max_size=400),
    st.from_regex(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
)
def test_custom_error_text_always_fits(letter: str, text: str, status: str) -> None:
    data = custom_error_text(letter, text, status)
    assert len(data) <= MAX_CUSTOM_ERROR
    assert data[:1] == letter.encode()
    assert data.endswith(f" (#{status})".encode())
    assert not any(byte < 0x20 or byte == 0x7F for byte in data)
    assert answer_for_exit(82, data)[0] == letter
