"""XFORWARD as qsift's SMTP client sends it: xtext, Postfix's censoring, command lines that fit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qsift.wire.smtp_args import (
    XFORWARD_ATTRIBUTES,
    decode_xtext,
    encode_xtext,
    parse_xforward,
    xforward_value,
)
from qsift.wire.smtp_client import Capabilities, SmtpReply, xforward

EVERY = frozenset(XFORWARD_ATTRIBUTES)


@given(st.binary(max_size=300))
def test_xtext_round_trips(value: bytes) -> None:
    encoded = encode_xtext(value)
    assert all(0x21 <= b <= 0x7E and b != 0x3D for b in encoded)
    assert decode_xtext(encoded) == value


def test_values_are_censored_as_postfix_does_and_cut_to_fit() -> None:
    assert xforward_value(None) == b"[UNAVAILABLE]"
    assert xforward_value("mx.example.org") == b"mx.example.org"
    assert xforward_value('a b<c>"d"é') == b"a?b?c??d???"
    assert xforward_value("a+b=c") == b"a+2Bb+3Dc"
    cut = xforward_value("+" * 300)
    assert len(cut) <= 255 and decode_xtext(cut) == b"+" * (255 // 3)


@given(
    st.dictionaries(
        st.sampled_from(XFORWARD_ATTRIBUTES), st.none() | st.text(max_size=400), min_size=1, max_size=7
    ),
    st.frozensets(st.sampled_from(XFORWARD_ATTRIBUTES)),
)
def test_commands_fit_a_line_and_carry_only_what_was_offered(
    attributes: dict[str, str | None], offered: frozenset[str]
) -> None:
    commands = xforward(attributes, offered)
    sent: dict[str, bytes] = {}
    for command in commands:
        assert command.startswith(b"XFORWARD ") and command.endswith(b"\r\n")
        assert len(command) <= 512
        for item in command[len(b"XFORWARD ") : -2].split(b" "):
            key, _, value = item.partition(b"=")
            sent[key.decode()] = value
    assert set(sent) == set(attributes) & offered
    for name, written in sent.items():
        assert written == xforward_value(attributes[name])


def test_what_is_sent_is_what_a_postfix_like_server_reads() -> None:
    (command,) = xforward(
        {"ADDR": "192.0.2.7", "NAME": "mua.example.org", "HELO": "[192.0.2.7]", "PROTO": "ESMTP"}, EVERY
    )
    parsed = parse_xforward(command[len(b"XFORWARD ") : -2])
    assert parsed == {"NAME": "mua.example.org", "ADDR": "192.0.2.7", "PROTO": "ESMTP", "HELO": "[192.0.2.7]"}
    assert xforward({"ADDR": "192.0.2.7"}, frozenset()) == []


def test_the_ehlo_reply_says_which_attributes_the_server_takes() -> None:
    reply = SmtpReply(250, ("mx.test", "PIPELINING", "XFORWARD NAME ADDR proto HELO BOGUS", "8BITMIME"))
    caps = Capabilities.from_ehlo(reply)
    assert caps.xforward == {"NAME", "ADDR", "PROTO", "HELO"} and caps.pipelining and caps.eightbitmime
    assert Capabilities.from_ehlo(SmtpReply(250, ("mx.test", "PIPELINING"))).xforward == frozenset()


def test_long_values_are_spread_over_several_commands() -> None:
    attributes = {"NAME": "n" * 250, "HELO": "h" * 250, "ADDR": "192.0.2.7", "PROTO": "ESMTP"}
    commands = xforward(attributes, EVERY)
    assert len(commands) == 2 and all(len(c) <= 512 for c in commands)
    assert commands[0].startswith(b"XFORWARD NAME=nnn") and commands[1].startswith(b"XFORWARD HELO=hhh")
