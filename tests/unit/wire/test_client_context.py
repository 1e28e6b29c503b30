"""The X-Qsift-Client field: round trips, every way a field can be wrong, hostile values, finding fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift.wire import client_context
from qsift.wire.client_context import FIELD, MAX_AGE, ClientContext, find_fields, make_field, verify

KEY = b"k" * 32
NOW = 1_764_000_000
SENDER = b"alice@example.org"
RECIPIENTS = [b"bob@example.net", b"carol@example.net"]
ALICE = ClientContext(ip="192.0.2.7", host="mx.example.net", relay_client=True, auth_user="alice")


def value_of(field: bytes) -> str:
    """The value as the daemon gets it: through find_fields."""
    [(_, _, value)] = find_fields(field)
    return value


def field_value(context: ClientContext = ALICE, *, when: int = NOW) -> str:
    return value_of(make_field(KEY, context, SENDER, RECIPIENTS, when))


# --- the value and its round trip ------------------------------------------------------------------------


def test_the_field_is_one_lf_line_in_the_documented_form() -> None:
    field = make_field(KEY, ALICE, SENDER, RECIPIENTS, NOW)
    head, signature = field.rsplit(b" h=", 1)
    assert head == b"X-Qsift-Client: v1 t=1764000000 ip=192.0.2.7 host=mx.example.net relay=1 auth=alice"
    assert signature.endswith(b"\n")
    assert len(signature.strip()) == 64
    assert field.count(b"\n") == 1
    assert b"\r" not in field


def test_round_trip() -> None:
    assert verify(KEY, field_value(), SENDER, RECIPIENTS, NOW + 10) == ALICE


def test_an_empty_context_writes_empty_values() -> None:
    field = make_field(KEY, ClientContext(), b"", RECIPIENTS, NOW)
    assert b" ip= host= relay=0 auth= h=" in field
    assert verify(KEY, value_of(field), b"", RECIPIENTS, NOW) == ClientContext()


@pytest.mark.parametrize("now", [-1, 10**12])
def test_a_time_that_does_not_fit_is_refused(now: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_field(KEY, ALICE, SENDER, RECIPIENTS, now)


# --- what verify refuses ----------------------------------------------------------------------------------


def tampered(old: str, new: str) -> str:
    value = field_value()
    assert old in value
    return value.replace(old, new, 1)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(tampered("ip=192.0.2.7", "ip=192.0.2.8"), id="ip"),
        pytest.param(tampered("host=mx.", "host=mail."), id="host"),
        pytest.param(tampered("relay=1", "relay=0"), id="relay"),
        pytest.param(tampered("auth=alice", "auth=admin"), id="auth"),
        pytest.param(tampered("auth=alice", "auth="), id="auth removed"),
        pytest.param(tampered(f"t={NOW}", f"t={NOW + 1}"), id="time"),
        pytest.param(tampered(" h=", " h=0"), id="hmac too long"),
    ],
)
def test_any_changed_value_fails(value: str) -> None:
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW) is None


def test_a_changed_hmac_fails() -> None:
    value = field_value()
    last = "0" if value[-1] != "0" else "1"
    assert verify(KEY, value[:-1] + last, SENDER, RECIPIENTS, NOW) is None


@pytest.mark.parametrize(
    ("key", "sender", "recipients"),
    [
        pytest.param(b"K" * 32, SENDER, RECIPIENTS, id="other key"),
        pytest.param(KEY, b"mallory@example.org", RECIPIENTS, id="other sender"),
        pytest.param(KEY, b"", RECIPIENTS, id="null sender"),
        pytest.param(KEY, SENDER, [b"eve@example.net"], id="other recipients"),
        pytest.param(KEY, SENDER, [*RECIPIENTS, b"eve@example.net"], id="added recipient"),
        pytest.param(KEY, SENDER, RECIPIENTS[:1], id="dropped recipient"),
        pytest.param(KEY, SENDER, RECIPIENTS[::-1], id="reordered recipients"),
        # The framing keeps the split between sender and recipients: no shifting of bytes between them.
        pytest.param(KEY, SENDER + b"bob@example.net", RECIPIENTS[1:], id="bytes moved across"),
    ],
)
def test_another_key_or_envelope_fails(key: bytes, sender: bytes, recipients: list[bytes]) -> None:
    assert verify(key, field_value(), sender, recipients, NOW) is None


def test_age_and_clock_skew() -> None:
    value = field_value()
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW + MAX_AGE) == ALICE
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW + MAX_AGE + 1) is None  # stale
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW - 300) == ALICE  # the sender's clock is a bit ahead
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW - 301) is None  # from the future


def test_an_x_qsift_scanned_mark_under_the_same_key_is_no_client_field() -> None:
    from qsift.wire import mark

    digest = "0" * 64
    forged = f"v1 t={NOW} ip= host= relay=1 auth= h={mark.make_value(KEY, digest, digest, NOW)[-64:]}"
    assert verify(KEY, forged, SENDER, RECIPIENTS, NOW) is None


GOOD = field_value()
SIGNATURE = GOOD.rsplit("h=", 1)[1]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "v1",
        "garbage",
        GOOD.replace("v1", "v2", 1),
        GOOD + " extra=1",
        GOOD.replace(" relay=1", ""),
        GOOD.replace("ip=", "IP=", 1),
        GOOD.replace("host=mx.example.net ", "", 1),
        GOOD.replace(f"t={NOW}", "t=", 1),
        GOOD.replace(f"t={NOW}", "t=-5", 1),
        GOOD.replace(f"t={NOW}", "t=1234567890123", 1),
        GOOD.replace(f"t={NOW}", "t=\u0661\u0662", 1),  # Arabic-Indic digits: not ASCII
        GOOD.replace("relay=1", "relay=2", 1),
        GOOD.replace("relay=1", "relay=", 1),
        GOOD.replace(SIGNATURE, SIGNATURE.upper(), 1),
        GOOD.replace(SIGNATURE, SIGNATURE[:-1], 1),
        GOOD.replace(SIGNATURE, SIGNATURE[:-1] + "g", 1),
        GOOD.replace("ip=192.0.2.7", "ip=192.0.2.7=", 1),
        GOOD.replace("host=mx", "host=m%x", 1),
        GOOD.replace("host=mx", "host=m%2", 1),
        GOOD.replace("host=mx.example.net", "host=mx.example.net%", 1),
        GOOD.replace("host=mx", "host=m%2f", 1),  # lower-case hex is never written
        GOOD.replace("auth=alice", "auth=al\x00ice", 1),
        GOOD.replace("auth=alice", "auth=alice\u00e9", 1),
        GOOD.replace(" host=", "\r\n host=", 1),  # a raw folded value: unfold first (find_fields does)
        "v1 t=1 ip= host= relay=0 auth= h=" + "0" * 64 + "\n",
    ],
)
def test_malformed_values_are_none(value: str) -> None:
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW) is None


def test_white_space_between_the_items_does_not_matter() -> None:
    loose = "  " + GOOD.replace(" ", " \t ") + " \t"
    assert verify(KEY, loose, SENDER, RECIPIENTS, NOW) == ALICE


@given(st.text(max_size=300))
def test_verify_never_raises(value: str) -> None:
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW) is None


@given(st.data())
def test_verify_never_raises_on_damaged_fields(data: st.DataObject) -> None:
    value = list(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(value) - 1))
        value[position] = data.draw(st.characters())
    result = verify(KEY, "".join(value), SENDER, RECIPIENTS, NOW)
    assert result is None or result == ALICE  # a "damage" may put back the same character


# --- hostile values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("two words", "two%20words"),
        ("a=b", "a%3Db"),
        ("100%", "100%25"),
        ("x\r\nBcc: eve@example.net", "x%0D%0ABcc:%20eve@example.net"),
        ("tab\there", "tab%09here"),
        ("nul\x00del\x7f", "nul%00del%7F"),
        ("jos\u00e9", "jos%C3%A9"),
        ("\u2603", "%E2%98%83"),
        ("\udcff", "%FF"),  # a byte of the environment that is not UTF-8 (os.environ's surrogateescape)
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("user@example.org", "user@example.org"),
    ],
)
def test_hostile_values_are_percent_encoded_and_come_back(raw: str, encoded: str) -> None:
    context = ClientContext(ip=raw, host=raw, auth_user=raw)
    field = make_field(KEY, context, SENDER, RECIPIENTS, NOW)
    assert f" ip={encoded} host={encoded} relay=0 auth={encoded} ".encode() in field
    assert field.isascii()
    assert field.count(b"\n") == 1
    assert verify(KEY, value_of(field), SENDER, RECIPIENTS, NOW) == context


def test_a_lone_surrogate_goes_out_as_a_question_mark() -> None:
    field = make_field(KEY, ClientContext(auth_user="a\ud800b"), SENDER, RECIPIENTS, NOW)
    assert b" auth=a?b " in field
    assert verify(KEY, value_of(field), SENDER, RECIPIENTS, NOW) == ClientContext(auth_user="a?b")


def test_long_values_are_cut_at_a_whole_character() -> None:
    context = ClientContext(ip="1" * 100, host="h" * 300, auth_user="\u00e9" * 100)
    field = make_field(KEY, context, SENDER, RECIPIENTS, NOW)
    back = verify(KEY, value_of(field), SENDER, RECIPIENTS, NOW)
    # 6 encoded characters per é: 42 of them fit in 255, the 43rd would not.
    assert back == ClientContext(ip="1" * 64, host="h" * 255, auth_user="\u00e9" * 42)
    assert len(field) < 998


def test_a_longest_host_name_is_never_cut() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, RFC 1035's longest
    context = ClientContext(host=name)
    assert verify(KEY, field_value(context), SENDER, RECIPIENTS, NOW) == context


PLAIN_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


@given(PLAIN_TEXT.filter(lambda s: len(s) <= 5), PLAIN_TEXT, st.booleans(), PLAIN_TEXT)
def test_any_context_within_the_limits_round_trips(ip: str, host: str, relay: bool, auth: str) -> None:
    # At most 12 encoded characters per character (4 UTF-8 bytes): 5 fit in 64, 20 in 255.
    context = ClientContext(ip=ip, host=host, relay_client=relay, auth_user=auth)
    field = make_field(KEY, context, SENDER, RECIPIENTS, NOW)
    assert verify(KEY, value_of(field), SENDER, RECIPIENTS, NOW) == context


@given(st.text(max_size=400), st.text(max_size=400), st.booleans(), st.text(max_size=400))
def test_any_context_makes_one_short_line_that_verifies_stably(
    ip: str, host: str, relay: bool, auth: str
) -> None:
    context = ClientContext(ip=ip, host=host, relay_client=relay, auth_user=auth)
    field = make_field(KEY, context, SENDER, RECIPIENTS, NOW)
    assert len(field) < 998
    assert field.isascii()
    assert field.endswith(b"\n")
    assert field.count(b"\n") == 1
    assert b"\r" not in field
    back = verify(KEY, value_of(field), SENDER, RECIPIENTS, NOW)
    assert back is not None
    assert back.relay_client == relay
    # What came back is what the field says: made again, it is the same field.
    assert make_field(KEY, back, SENDER, RECIPIENTS, NOW) == field


# --- the environment ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ClientContext()),
        (
            {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mx.example.net", "RELAYCLIENT": ""},
            ClientContext(ip="192.0.2.7", host="mx.example.net", relay_client=True),
        ),
        (
            {"TCPREMOTEIP": "", "TCP6REMOTEIP": "2001:db8::7", "TCP6REMOTEHOST": "v6.example.net"},
            ClientContext(ip="2001:db8::7", host="v6.example.net"),
        ),
        (
            {"TCPREMOTEIP": "192.0.2.7", "TCP6REMOTEIP": "::ffff:192.0.2.7"},
            ClientContext(ip="192.0.2.7"),
        ),
        ({"RELAYCLIENT": "@relay"}, ClientContext(relay_client=True)),
        ({"SMTPAUTHUSER": "alice", "SMTP_AUTH_USER": "bob"}, ClientContext(auth_user="alice")),
        ({"SMTP_AUTH_USER": "bob"}, ClientContext(auth_user="bob")),
        # Both can come from a client that never authenticated (MAIL FROM AUTH=, ident): never taken.
        ({"TCPREMOTEINFO": "alice", "AUTHINFO": "alice"}, ClientContext()),
    ],
)
def test_context_from_env(env: dict[str, str], expected: ClientContext) -> None:
    assert client_context.context_from_env(env) == expected


# --- the value type -----------------------------------------------------------------------------------------


def test_client_context_is_an_immutable_value() -> None:
    assert ClientContext(ip="192.0.2.7", host="mx.example.net", relay_client=True, auth_user="alice") == ALICE
    assert ClientContext(ip="192.0.2.7") != ALICE
    assert ALICE != ("192.0.2.7", "mx.example.net", True, "alice")
    assert (
        len(
            {
                ALICE,
                ClientContext(ip="192.0.2.7", host="mx.example.net", relay_client=True, auth_user="alice"),
            }
        )
        == 1
    )
    assert (
        repr(ClientContext(ip="::1")) == "ClientContext(ip='::1', host='', relay_client=False, auth_user='')"
    )
    with pytest.raises(AttributeError, match="immutable"):
        ALICE.auth_user = "mallory"


# --- finding the fields in a header -------------------------------------------------------------------------


def test_find_a_field_first_in_the_header() -> None:
    field = make_field(KEY, ALICE, SENDER, RECIPIENTS, NOW)
    message = field + b"Received: from x\nSubject: hi\n\nX-Qsift-Client: in the body\n"
    assert find_fields(message) == [(0, len(field), field[len(FIELD) + 2 : -1].decode())]


def test_every_field_is_found_with_its_offsets() -> None:
    header = (
        b"x-qsift-client: first\r\n"
        b"Received: from a\r\n"
        b"\tby b\r\n"
        b"X-QSIFT-CLIENT:second\r\n"
        b"Subject: s\r\n"
        b"X-Qsift-Client \t: third\r\n"
        b"\r\n"
        b"X-Qsift-Client: body\r\n"
    )
    found = find_fields(header)
    assert [value for _, _, value in found] == ["first", "second", "third"]
    for start, end, _ in found:
        assert header[start:end].lower().startswith(b"x-qsift-client")
        assert header[start:end].endswith(b"\r\n")
    cut = b"".join(
        header[a:b]
        for a, b in zip([0, *[e for _, e, _ in found]], [s for s, _, _ in found] + [len(header)], strict=True)
    )
    assert cut == b"Received: from a\r\n\tby b\r\nSubject: s\r\n\r\nX-Qsift-Client: body\r\n"


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_folded_lines_belong_to_the_field_and_are_unfolded(line_end: bytes) -> None:
    header = line_end.join(
        [b"Subject: s", b"X-Qsift-Client: v1 t=1", b"  ip=a", b"\thost=b", b"To: x", b"", b"body"]
    )
    [(start, end, value)] = find_fields(header)
    assert value == "v1 t=1  ip=a\thost=b"
    assert header[start:end] == line_end.join([b"X-Qsift-Client: v1 t=1", b"  ip=a", b"\thost=b", b""])


def test_a_folded_real_field_still_verifies() -> None:
    field = make_field(KEY, ALICE, SENDER, RECIPIENTS, NOW)
    folded = field.replace(b" host=", b"\r\n host=").replace(b" h=", b"\r\n\th=")
    assert verify(KEY, value_of(folded), SENDER, RECIPIENTS, NOW) == ALICE


@pytest.mark.parametrize(
    "header",
    [
        b"X-Qsift-Clientx: v1\n",
        b"X-Qsift-Client-Extra: v1\n",
        b"X-Qsift-Clien: v1\n",
        b"X-Qsift-Client v1\n",
        b"Old-X-Qsift-Client: v1\n",
        b" X-Qsift-Client: v1\n",  # a continuation line, of nothing
        b"Subject: s\n X-Qsift-Client: v1\n",  # a continuation of the Subject
        b"Subject: s\n\nX-Qsift-Client: v1\n",  # in the body
        b"\r\nX-Qsift-Client: v1\r\n",  # an empty header
        b"",
    ],
)
def test_what_is_not_a_field(header: bytes) -> None:
    assert find_fields(header) == []


def test_a_header_without_an_end() -> None:
    assert find_fields(b"Subject: s\nX-Qsift-Client: last") == [(11, 31, "last")]
    assert find_fields(b"X-Qsift-Client: a\n b") == [(0, 20, "a b")]
    assert find_fields(b"X-Qsift-Client:") == [(0, 15, "")]


def test_bytes_that_are_not_ascii_cannot_verify() -> None:
    [(_, _, value)] = find_fields(b"X-Qsift-Client: v1 t=1 ip=\xff\n")
    assert value == "v1 t=1 ip=\ufffd"
    assert verify(KEY, value, SENDER, RECIPIENTS, NOW) is None


@given(st.binary(max_size=300))
def test_find_fields_offsets_always_hold(header: bytes) -> None:
    previous_end = 0
    for start, end, value in find_fields(header):
        assert previous_end <= start < end <= len(header)
        assert start == 0 or header[start - 1 : start] == b"\n"
        assert header[start : start + len(FIELD)].lower() == FIELD.lower().encode()
        assert value == value.strip(" \t")
        previous_end = end
