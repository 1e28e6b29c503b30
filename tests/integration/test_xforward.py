"""XFORWARD end to end: the client Postfix names picks the policy bank and shows in the log, for one
transaction only, over a real socket; only the hosts in `[[listen]] xforward_hosts` may name one."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import smtplib
from pathlib import Path
from typing import Any

import pytest

from qsift import config
from qsift.errors import ConfigError
from qsift.listen.admission import xforward_allowed
from tests.fakes.mta import Script, fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.integration.test_destinies import banned_message

SENDER = "alice@example.org"
RCPT = "bob@example.net"
#: The test client connects from loopback: the Postfix host, allowed to send XFORWARD.
POSTFIX_HOST = {"xforward_hosts": ["127.0.0.0/8"]}
#: Banned files bounce by default; from the partners' network they are discarded instead.
TOP: dict[str, Any] = {
    "policy_bank": {
        "PARTNERS": {"client_networks": ["192.0.2.0/24", "2001:db8::/32"], "destiny": {"banned": "discard"}}
    }
}


def session(
    port: int, steps: list[str | bytes], *, lmtp: bool = False, ehlo: list[str] | None = None
) -> list[tuple[int, str]]:
    """One connection: each str is a command sent with docmd, each bytes a whole message; their replies.
    `ehlo` gets the EHLO (LHLO) reply's keywords."""
    client = (
        smtplib.LMTP("127.0.0.1", port, timeout=30) if lmtp else smtplib.SMTP("127.0.0.1", port, timeout=30)
    )
    with client:
        client.ehlo("postfix.test")
        if ehlo is not None:
            ehlo.extend(client.esmtp_features)
        answers: list[tuple[int, str]] = []
        for step in steps:
            if isinstance(step, str):
                verb, _, arg = step.partition(" ")
                code, text = client.docmd(verb, arg)
            else:
                client.mail(SENDER)
                client.rcpt(RCPT)
                code, text = client.data(step)
            answers.append((code, text.decode()))
        return answers


async def run(
    tmp_path: Path,
    steps: list[str | bytes],
    *,
    protocol: str = "smtp",
    downstream: Script | None = None,
    ehlo: list[str] | None = None,
    **listen: Any,
) -> tuple[list[tuple[int, str]], Any]:
    """The steps on one connection to a daemon whose listener has `listen` (default: POSTFIX_HOST)."""
    async with (
        fake_mta(downstream) as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=(protocol,),
            top=TOP,
            listen_extra=listen or POSTFIX_HOST,
        ) as daemon,
    ):
        answers = await asyncio.to_thread(
            session, daemon.ports[protocol], steps, lmtp=protocol == "lmtp", ehlo=ehlo
        )
    return answers, mta


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(("Passed ", "Blocked "))]


async def test_the_forwarded_client_chooses_the_bank_for_one_transaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    message = banned_message()
    answers, mta = await run(
        tmp_path,
        [
            "XFORWARD ADDR=192.0.2.7 NAME=mua.example.org HELO=x PROTO=ESMTP",
            "XFORWARD IDENT=4dQ7bX2LkQz SOURCE=REMOTE",
            message,
            # The same connection, no XFORWARD: the attributes were reset after the dot. (Another
            # message, or the outcome record would answer it as a retry of the first.)
            banned_message(headers={"Comments": "the second"}),
        ],
    )
    assert answers[:2] == [(250, "2.0.0 Ok"), (250, "2.0.0 Ok")]
    assert answers[2][0] == 250 and answers[2][1].startswith("2.7.0 Ok, discarded"), answers[2]
    assert answers[3][0] == 250 and re.match(r"2\.5\.0 Ok, id=\S+, BOUNCE", answers[3][1]), answers[3]
    assert len(mta.deliveries) == 1 and mta.deliveries[0].sender == b""  # the second one's DSN, only
    first, second = summaries(caplog)
    assert first.startswith("Blocked BANNED") and "PARTNERS ESMTP [192.0.2.7] <alice@" in first, first
    assert "ESMTP [127.0.0.1] <alice@example.org>" in second and "PARTNERS" not in second, second
    forwarded = [r.getMessage() for r in caplog.records if "XFORWARD from" in r.getMessage()]
    assert len(forwarded) == 1, forwarded
    assert re.fullmatch(
        r"id=\S+ ESMTP: XFORWARD from \[127\.0\.0\.1\]: ADDR=192\.0\.2\.7 NAME=mua\.example\.org HELO=x "
        r"PROTO=ESMTP IDENT=4dQ7bX2LkQz SOURCE=REMOTE",
        forwarded[0],
    ), forwarded[0]


async def test_without_xforward_the_peer_is_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    answers, mta = await run(tmp_path, [banned_message()])
    assert answers[0][0] == 250 and answers[0][1].startswith("2.5.0 Ok, id="), answers
    assert len(mta.deliveries) == 1  # the DSN
    (line,) = summaries(caplog)
    assert "ESMTP [127.0.0.1]" in line and "PARTNERS" not in line, line


async def test_rset_drops_the_forwarded_client(tmp_path: Path) -> None:
    answers, _ = await run(tmp_path, ["XFORWARD ADDR=192.0.2.7", "RSET", banned_message()])
    assert answers[2][1].startswith("2.5.0 Ok, id="), answers


async def test_refused_inside_a_transaction_and_for_bad_syntax(tmp_path: Path) -> None:
    answers, _ = await run(
        tmp_path,
        ["MAIL FROM:<a@example.org>", "XFORWARD ADDR=192.0.2.7", "RSET", "XFORWARD ADDR=not-an-address"],
    )
    assert answers == [
        (250, "2.1.0 Ok"),
        (503, "5.5.1 Mail transaction in progress"),
        (250, "2.0.0 Ok"),
        (501, "5.5.4 Bad XFORWARD ADDR syntax"),
    ]


async def test_lmtp_and_an_ipv6_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    answers, _ = await run(
        tmp_path, ["XFORWARD ADDR=IPV6:2001:db8::7 NAME=[UNAVAILABLE]", banned_message()], protocol="lmtp"
    )
    assert answers[1][0] == 250 and "Ok, discarded" in answers[1][1], answers
    (line,) = summaries(caplog)
    assert "PARTNERS LMTP [2001:db8::7]" in line, line


@pytest.mark.parametrize(
    ("protocol", "listen"),
    [
        ("smtp", {}),  # the default: nobody
        ("smtp", {"xforward_hosts": ["192.0.2.0/24", "::1/128"]}),  # others, not this client
        ("lmtp", {"xforward_hosts": ["10.0.0.1"]}),
    ],
)
async def test_a_client_the_acl_admits_but_not_named_in_xforward_hosts_gets_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str, listen: dict[str, Any]
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    features: list[str] = []
    answers, mta = await run(
        tmp_path,
        ["XFORWARD ADDR=192.0.2.7 NAME=mua.example.org", banned_message()],
        protocol=protocol,
        ehlo=features,
        acl=["127.0.0.0/8"],
        **listen,
    )
    assert "xforward" not in features and "pipelining" in features, features  # not offered
    assert answers[0] == (550, "5.7.0 Error: insufficient authorization")
    # Not the partners' bank (discard): the banned file bounces, and the client is the peer.
    assert answers[1][0] == 250 and "BOUNCE" in answers[1][1], answers
    (line,) = summaries(caplog)
    assert "[127.0.0.1]" in line and "PARTNERS" not in line and "192.0.2.7" not in line, line
    assert not [r for r in caplog.records if "XFORWARD from" in r.getMessage()]
    assert len(mta.deliveries) == 1 and mta.deliveries[0].sender == b""  # the DSN


@pytest.mark.parametrize(
    ("peer", "hosts", "allowed"),
    [
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),  # a v4 client on a dual-stack socket
        ("::1", ["127.0.0.0/8"], False),
        ("192.0.2.7", ["127.0.0.0/8", "192.0.2.7"], True),
        ("192.0.2.8", ["192.0.2.7"], False),
        ("127.0.0.1", [], False),  # nobody by default
        (None, ["127.0.0.1"], True),  # a Unix-socket peer counts as 127.0.0.1, as in Postfix
        (None, [], False),
    ],
)
def test_who_may_send_xforward(peer: str | None, hosts: list[str], allowed: bool) -> None:
    networks = [ipaddress.ip_network(host) for host in hosts]
    assert xforward_allowed(peer, networks) is allowed


# --- configuration ------------------------------------------------------------------------------------


def listeners(*tables: dict[str, Any]) -> tuple[config.Listener, ...]:
    return config.from_mapping({"listen": list(tables)}).listeners


def test_xforward_hosts_are_none_by_default() -> None:
    found = listeners(
        {"protocol": "qmqp", "address": "127.0.0.1:10628"},
        {"protocol": "smtp", "address": "127.0.0.1:10024"},
        {"protocol": "lmtp", "address": "127.0.0.1:10026", "xforward_hosts": ["127.0.0.1", "::1/128"]},
    )
    assert [listener.xforward_hosts for listener in found] == [
        (),
        (),
        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"protocol": "qmqp", "xforward_hosts": []}, "xforward_hosts: is for smtp and lmtp listeners"),
        ({"protocol": "smtp", "xforward_hosts": "127.0.0.1"}, "xforward_hosts: must be a list"),
        ({"protocol": "smtp", "xforward_hosts": ["mx.example"]}, "xforward_hosts: .*does not appear"),
        ({"protocol": "smtp", "xforward": True}, "xforward: unknown key"),
    ],
)
def test_xforward_config_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        listeners({"address": "127.0.0.1:10024", **table})


# --- qsift's own forward names the client to a server that takes XFORWARD --------------------------------

POSTFIX = "NAME ADDR PORT PROTO HELO IDENT SOURCE"  # what Postfix's smtpd offers an authorized host
CLEAN = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x1@example.org>\r\n\r\nhello\r\n"
)


def sent_before_mail(mta: Any) -> list[bytes]:
    lines: list[bytes] = mta.transcript
    first_mail = next(i for i, line in enumerate(lines) if line.upper().startswith(b"MAIL"))
    return [line for line in lines[:first_mail] if line.upper().startswith(b"XFORWARD")]


async def test_the_client_postfix_named_goes_on_to_the_next_mta(tmp_path: Path) -> None:
    answers, mta = await run(
        tmp_path,
        ["XFORWARD ADDR=192.0.2.7 NAME=mua.example.org HELO=mua PROTO=ESMTP", CLEAN],
        downstream=Script(xforward=POSTFIX),
    )
    assert answers[1][0] == 250, answers
    assert len(mta.accepted) == 1
    mail_id = re.search(r"id=(\S+),", answers[1][1])
    assert mail_id is not None, answers
    # IDENT is our mail_id, which Postfix logs as orig_queue_id.
    assert sent_before_mail(mta) == [
        b"XFORWARD NAME=mua.example.org ADDR=192.0.2.7 PROTO=ESMTP HELO=mua IDENT=%s\r\n"
        % mail_id.group(1).encode()
    ]


async def test_without_xforward_in_the_peer_is_named_and_nothing_goes_unoffered(tmp_path: Path) -> None:
    for name in ("offered", "not"):
        (tmp_path / name).mkdir()
    _, mta = await run(tmp_path / "offered", [CLEAN], downstream=Script(xforward="ADDR HELO"))  # no IDENT
    assert sent_before_mail(mta) == [b"XFORWARD ADDR=127.0.0.1 HELO=postfix.test\r\n"]
    _, mta = await run(tmp_path / "not", [CLEAN])
    assert sent_before_mail(mta) == [] and len(mta.accepted) == 1


async def test_a_server_refusing_xforward_still_gets_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answers, mta = await run(
        tmp_path, [CLEAN], downstream=Script(xforward=POSTFIX, xforward_reply="550 5.7.0 not for you")
    )
    assert answers[0][0] == 250 and len(mta.accepted) == 1, answers
    assert any("refused XFORWARD: 550" in r.getMessage() for r in caplog.records)


async def test_the_client_qsift_queue_vouched_for_goes_on(tmp_path: Path) -> None:
    from tests.integration.test_destinies import SENDER as QMQP_SENDER
    from tests.integration.test_recipient_policy import BOB, client_field, client_key

    top = {"mark": {"enabled": False}, **client_key(tmp_path)}
    async with (
        fake_mta(Script(xforward=POSTFIX)) as mta,
        running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, client_field(tmp_path, [BOB]) + CLEAN, QMQP_SENDER, [BOB])
    assert answer.startswith("K250"), answer
    mail_id = answer.split("id=")[1].split(",")[0]
    assert sent_before_mail(mta) == [
        b"XFORWARD NAME=mua.example.org ADDR=192.0.2.7 PROTO=QMQP HELO=[UNAVAILABLE] IDENT=%s\r\n"
        % mail_id.encode()
    ]
