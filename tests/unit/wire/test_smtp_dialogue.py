"""The sans-IO SMTP/LMTP client dialogue: one case table of whole sessions, then the interface's edges.

Each case is a transcript, as in h11's test_io.py: "S:" lines are the server's replies, fed in as the
dialogue asks for them; "C:" lines are what the dialogue sends (one write per line, its commands joined
by " | "), "C: <body>" the message, "--" lines its other events. The test plays the server's side and
checks that the dialogue's side comes out line for line, and then each recipient's answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import assert_never

import pytest

from qsift.answers import Row
from qsift.model import Envelope, Params, Recipient
from qsift.wire import smtp_dialogue as d
from qsift.wire.smtp_client import ReplyParser, SmtpReply

WHERE = "smtp:[127.0.0.1]:10025"
SIZE = 1234
MAIL = f"MAIL FROM:<a@x.org> SIZE={SIZE}"
EHLO = "250-mx.test\n250-SIZE\n250-SMTPUTF8\n250 ENHANCEDSTATUSCODES"
EHLO_PIPELINING = "250-mx.test\n250-PIPELINING\n250 SIZE"
EHLO_XFORWARD = "250-mx.test\n250-SIZE\n250 XFORWARD NAME ADDR PROTO HELO IDENT"
QUIT = ["C: QUIT", "S: 221 bye"]
RSET_OK = ["C: RSET", "S: 250 ok"]
GREETED = ["S: 220 mx.test ESMTP", "C: EHLO qsift.test", f"S: {EHLO}"]
GREETED_PIPELINING = ["S: 220 mx.test ESMTP", "C: EHLO qsift.test", f"S: {EHLO_PIPELINING}"]
GREETED_XFORWARD = ["S: 220 mx.test ESMTP", "C: EHLO qsift.test", f"S: {EHLO_XFORWARD}"]


def reply(text: str) -> SmtpReply:
    parser = ReplyParser()
    parser.receive_data(text.replace("\n", "\r\n").encode() + b"\r\n")
    parsed = parser.next_reply()
    assert parsed is not None and parser.buffered == 0
    return parsed


@dataclass(frozen=True)
class Case:
    transcript: list[str]
    #: Each recipient's answer: letter, code, enhanced status, and "here" when qsift answered unasked.
    answers: list[str]
    recipients: tuple[str, ...] = ("b@y.net",)
    sender: str = "a@x.org"
    lmtp: bool = False
    per_transaction: int = 1000
    mail_params: Params = ()
    client: dict[str, str] = field(default_factory=dict)


CASES = [
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 2.1.0 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 2.1.5 ok",
                "C: RCPT TO:<c@y.net>",
                "S: 250 2.1.5 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 Ok: queued as Q1",
                "-- taken: b@y.net c@y.net",
                *QUIT,
            ],
            ["K250 2.0.0", "K250 2.0.0"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="one command at a time",
    ),
    pytest.param(
        Case(
            [
                *GREETED_PIPELINING,
                f"C: {MAIL} | RCPT TO:<b@y.net> | RCPT TO:<c@y.net> | DATA",
                "S: 250 2.1.0 ok",
                "S: 250 2.1.5 ok",
                "S: 550 5.1.1 no such user",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 Ok: queued as Q1",
                "-- taken: b@y.net",
                *QUIT,
            ],
            ["K250 2.0.0", "D550 5.1.1"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="pipelined, a recipient refused",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 550 5.1.1 no such user",
                "C: RCPT TO:<c@y.net>",
                "S: 451 4.3.0 try later",
                *RSET_OK,
                *QUIT,
            ],
            ["D550 5.1.1", "Z451 4.3.0"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="every recipient refused: RSET, no DATA",
    ),
    pytest.param(
        Case(
            [
                *GREETED_PIPELINING,
                f"C: {MAIL} | RCPT TO:<b@y.net> | DATA",
                "S: 250 ok",
                "S: 550 5.1.1 no such user",
                "S: 554 5.5.1 no valid recipients",
                *RSET_OK,
                *QUIT,
            ],
            ["D550 5.1.1"],
        ),
        id="pipelined, every recipient refused: DATA refused too, RSET",
    ),
    pytest.param(
        Case(
            [
                *GREETED_PIPELINING,
                f"C: {MAIL} | RCPT TO:<b@y.net> | DATA",
                "S: 250 ok",
                "S: 550 5.1.1 no such user",
                "S: 354 go ahead anyway",
                "C: .",
                "S: 554 5.5.1 no recipients",
                *RSET_OK,
                *QUIT,
            ],
            ["D550 5.1.1"],
        ),
        id="pipelined, every recipient refused, yet 354: an empty message first",
    ),
    pytest.param(
        Case(
            [
                *GREETED_PIPELINING,
                f"C: {MAIL} | RCPT TO:<b@y.net> | DATA",
                "S: 553 5.1.8 sender domain does not exist",
                "S: 503 5.5.1 need MAIL first",
                "S: 503 5.5.1 need RCPT first",
                *RSET_OK,
                *QUIT,
            ],
            ["D553 5.1.8"],
        ),
        id="pipelined, MAIL refused: its reply answers every recipient",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 451 4.3.0 try later",
                *RSET_OK,
                *QUIT,
            ],
            ["Z451 4.3.0", "Z451 4.3.0"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="MAIL refused: no RCPT at all",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<r0@y.net>",
                "S: 250 ok",
                "C: RCPT TO:<r1@y.net>",
                "S: 250 ok",
                "C: RCPT TO:<r2@y.net>",
                "S: 452 4.5.3 too many recipients",
                "C: RCPT TO:<r3@y.net>",
                "S: 452 4.5.3 too many recipients",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 Ok: queued as Q1",
                "-- taken: r0@y.net r1@y.net",
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<r2@y.net>",
                "S: 250 ok",
                "C: RCPT TO:<r3@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 Ok: queued as Q2",
                "-- taken: r2@y.net r3@y.net",
                *QUIT,
            ],
            ["K250 2.0.0"] * 4,
            recipients=("r0@y.net", "r1@y.net", "r2@y.net", "r3@y.net"),
        ),
        id="452 past the server's limit: the rest in the next transaction",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 452 4.5.3 too many recipients",
                "C: RCPT TO:<c@y.net>",
                "S: 452 4.5.3 too many recipients",
                *RSET_OK,
                *QUIT,
            ],
            ["Z452 4.5.3", "Z452 4.5.3"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="452 with none accepted is a temporary failure, not a loop",
    ),
    pytest.param(
        Case(
            [
                *GREETED_PIPELINING,
                f"C: {MAIL} | RCPT TO:<r0@y.net> | RCPT TO:<r1@y.net> | DATA",
                "S: 250 ok",
                "S: 250 ok",
                "S: 250 ok",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 Ok: queued as Q1",
                "-- taken: r0@y.net r1@y.net",
                f"C: {MAIL} | RCPT TO:<r2@y.net> | DATA",
                "S: 250 ok",
                "S: 250 ok",
                "S: 354 go ahead",
                "C: <body>",
                "S: 451 4.3.0 queue file write error",
                *QUIT,
            ],
            ["K250 2.0.0", "K250 2.0.0", "Z451 4.3.0"],
            recipients=("r0@y.net", "r1@y.net", "r2@y.net"),
            per_transaction=2,
        ),
        id="our own limit per transaction splits the envelope",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 554 5.7.1 no data for you",
                *RSET_OK,
                *QUIT,
            ],
            ["D554 5.7.1"],
        ),
        id="DATA refused: RSET",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 354 what?",
                "C: RCPT TO:<c@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 250 2.0.0 that is not how DATA goes",
                *RSET_OK,
                *QUIT,
            ],
            ["Z451 4.5.0", "Z451 4.5.0"],
            recipients=("b@y.net", "c@y.net"),
        ),
        id="a reply neither refusal nor the one due cannot be trusted either way",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 554 5.7.1 content rejected",
                *QUIT,
            ],
            ["D554 5.7.1"],
        ),
        id="the message refused after the dot: nothing taken",
    ),
    pytest.param(
        Case(
            [
                "S: 220 lmtp.test LMTP",
                "C: LHLO qsift.test",
                f"S: {EHLO_PIPELINING}",
                f"C: {MAIL} | RCPT TO:<ok@y.net> | RCPT TO:<gone@y.net> | RCPT TO:<full@y.net> | "
                "RCPT TO:<also@y.net> | DATA",
                "S: 250 ok",
                "S: 250 ok",
                "S: 550 5.1.1 no such user",
                "S: 250 ok",
                "S: 250 ok",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 2.0.0 <ok@y.net> saved",
                "S: 452 4.2.2 <full@y.net> mailbox full",
                "S: 250 2.0.0 <also@y.net> saved",
                "-- taken: ok@y.net also@y.net",
                *QUIT,
            ],
            ["K250 2.0.0", "D550 5.1.1", "Z452 4.2.2", "K250 2.0.0"],
            recipients=("ok@y.net", "gone@y.net", "full@y.net", "also@y.net"),
            lmtp=True,
        ),
        id="LMTP: one final reply per accepted recipient, in RCPT order",
    ),
    pytest.param(
        Case(
            [
                "S: 220 lmtp.test LMTP",
                "C: LHLO qsift.test",
                "S: 250 lmtp.test",
                "C: MAIL FROM:<a@x.org>",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 552 5.2.2 over quota",
                *QUIT,
            ],
            ["D552 5.2.2"],
            lmtp=True,
        ),
        id="LMTP: every final reply a refusal, nothing taken",
    ),
    pytest.param(
        Case(
            [
                "S: 220 lmtp.test LMTP",
                "C: LHLO qsift.test",
                "S: 500 5.5.1 unknown command",
            ],
            ["Z451 4.4.2", "Z451 4.4.2"],
            recipients=("b@y.net", "c@y.net"),
            lmtp=True,
        ),
        id="LMTP: LHLO refused, no HELO to fall back to",
    ),
    pytest.param(
        Case(
            [
                "S: 220 old.test SMTP",
                "C: EHLO qsift.test",
                "S: 502 5.5.2 unknown command",
                "C: HELO qsift.test",
                "S: 250 old.test",
                "C: MAIL FROM:<a@x.org>",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: b@y.net",
                *QUIT,
            ],
            ["K250 2.0.0"],
            mail_params=(("BODY", "8BITMIME"),),
        ),
        id="EHLO refused: HELO, and no parameters",
    ),
    pytest.param(
        Case(
            [
                "S: 220 old.test SMTP",
                "C: EHLO qsift.test",
                "S: 502 5.5.2 unknown command",
                "C: HELO qsift.test",
                "S: 501 5.5.4 go away",
            ],
            ["Z451 4.4.2"],
        ),
        id="HELO refused too",
    ),
    pytest.param(
        Case(["S: 220 mx.test", "C: EHLO qsift.test", "S: 421 4.3.2 shutting down"], ["Z451 4.3.2"]),
        id="EHLO answered 421: no HELO",
    ),
    pytest.param(
        Case(["S: 220 mx.test", "C: EHLO qsift.test", "S: 554 5.7.1 not you"], ["Z451 4.4.2"]),
        id="EHLO answered 554: no HELO, and never a bounce",
    ),
    pytest.param(
        Case(["S: 421 4.3.2 busy"], ["Z451 4.3.2", "Z451 4.3.2"], recipients=("b@y.net", "c@y.net")),
        id="a 421 greeting",
    ),
    pytest.param(
        Case(["S: 554 5.3.2 not accepting mail"], ["Z451 4.4.2"]),
        id="a 554 greeting is temporary too",
    ),
    pytest.param(
        Case(
            [
                *GREETED_XFORWARD,
                "C: XFORWARD NAME=client.example ADDR=192.0.2.7 PROTO=ESMTP HELO=client.example IDENT=M1",
                "S: 250 2.0.0 Ok",
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: b@y.net",
                *QUIT,
            ],
            ["K250 2.0.0"],
            client={
                "client_address": "192.0.2.7",
                "client_name": "client.example",
                "helo": "client.example",
                "ident": "M1",
            },
        ),
        id="XFORWARD before MAIL",
    ),
    pytest.param(
        Case(
            [
                *GREETED_XFORWARD,
                "C: XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PROTO=ESMTP HELO=[UNAVAILABLE]",
                "S: 550 5.7.0 not authorized",
                "-- XFORWARD refused: 550 5.7.0 not authorized",
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: b@y.net",
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<c@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: c@y.net",
                *QUIT,
            ],
            ["K250 2.0.0", "K250 2.0.0"],
            recipients=("b@y.net", "c@y.net"),
            per_transaction=1,
            client={"client_address": "192.0.2.7"},
        ),
        id="XFORWARD refused: the message goes on, and the next transaction without it",
    ),
    pytest.param(
        Case(
            [
                *GREETED_XFORWARD,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: b@y.net",
                *QUIT,
            ],
            ["K250 2.0.0"],
        ),
        id="XFORWARD offered, but no client to name",
    ),
    pytest.param(
        Case(
            [
                "S: 220 mx.test ESMTP",
                "C: EHLO qsift.test",
                "S: 250-mx.test\n250 SIZE",
                *QUIT,
            ],
            ["D553 5.6.7 here"],
            recipients=("j\u00f6rg@y.net",),
        ),
        id="a non-ASCII address to a server without SMTPUTF8",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: MAIL FROM:<j\u00f6rg@x.org> SIZE={SIZE} SMTPUTF8",
                "S: 250 ok",
                "C: RCPT TO:<b@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: b@y.net",
                *QUIT,
            ],
            ["K250 2.0.0"],
            sender="j\u00f6rg@x.org",
        ),
        id="a non-ASCII sender to a server with SMTPUTF8",
    ),
    pytest.param(
        Case(
            ["S: 220 mx.test ESMTP", "C: EHLO qsift.test", f"S: {EHLO}", *QUIT],
            ["D553 5.1.7 here", "D553 5.1.7 here"],
            recipients=("b@y.net", "c@y.net"),
            sender="a<b@x.org",
        ),
        id="a sender no command line can carry",
    ),
    pytest.param(
        Case(
            [
                *GREETED,
                f"C: {MAIL}",
                "S: 250 ok",
                "C: RCPT TO:<ok@y.net>",
                "S: 250 ok",
                "C: DATA",
                "S: 354 go ahead",
                "C: <body>",
                "S: 250 ok",
                "-- taken: ok@y.net",
                *QUIT,
            ],
            ["D553 5.1.3 here", "K250 2.0.0"],
            recipients=("a<b@y.net", "ok@y.net"),
        ),
        id="a recipient no command line can carry is refused alone",
    ),
    pytest.param(
        Case(
            ["S: 220 mx.test ESMTP", "C: EHLO qsift.test", f"S: {EHLO}", *QUIT],
            ["D553 5.1.3 here"],
            recipients=("a\rb@y.net",),
        ),
        id="no recipient left to send: no transaction",
    ),
]


def play(case: Case) -> tuple[d.SmtpClientDialogue, list[str]]:
    """Run the dialogue against the case's server lines; return it and what it did, as a transcript."""
    envelope = Envelope(
        case.sender,
        tuple(Recipient(r) for r in case.recipients),
        mail_params=case.mail_params,
        protocol="ESMTP",
        **case.client,  # type: ignore[arg-type]
    )
    dialogue = d.SmtpClientDialogue(
        envelope,
        size=SIZE,
        lmtp=case.lmtp,
        helo_name="qsift.test",
        where=WHERE,
        max_recipients_per_transaction=case.per_transaction,
    )
    server = iter(line[3:] for line in case.transcript if line.startswith("S: "))
    transcript: list[str] = []
    while not isinstance(event := dialogue.next_event(), d.Done):
        if isinstance(event, d.AwaitReply):
            said = next(server)
            transcript.append(f"S: {said}")
            dialogue.receive_reply(reply(said))
        else:
            transcript.append(describe(event))
    return dialogue, transcript


def describe(event: d.Send | d.SendBody | d.MessageTaken | d.XforwardRefused) -> str:
    match event:
        case d.Send(data):
            return "C: " + " | ".join(line.decode() for line in data.split(b"\r\n")[:-1])
        case d.SendBody():
            return "C: <body>"
        case d.MessageTaken(taken):
            return "-- taken: " + " ".join(r.recipient.address for r in taken)
        case d.XforwardRefused(said):
            return f"-- XFORWARD refused: {said.line()}"
        case _:
            assert_never(event)


def answers(dialogue: d.SmtpClientDialogue) -> list[str]:
    return [
        f"{r.reply.answer.value}{r.reply.smtp_code} {r.reply.enhanced_status}"
        + ("" if r.from_downstream else " here")
        for r in dialogue.per_recipient()
    ]


@pytest.mark.parametrize("case", CASES)
def test_session(case: Case) -> None:
    dialogue, transcript = play(case)
    assert transcript == case.transcript
    assert answers(dialogue) == case.answers


def dialogue_for(*recipients: str, lmtp: bool = False) -> d.SmtpClientDialogue:
    envelope = Envelope("a@x.org", tuple(Recipient(r) for r in recipients))
    return d.SmtpClientDialogue(envelope, size=SIZE, lmtp=lmtp, helo_name="qsift.test", where=WHERE)


def test_each_step_names_its_timeout() -> None:
    dialogue = dialogue_for("b@y.net", "c@y.net", lmtp=True)
    server = iter(
        [
            "220 lmtp.test",
            EHLO_PIPELINING,
            "250 ok",
            "250 ok",
            "250 ok",
            "354 go",
            "250 ok",
            "250 ok",
            "221 bye",
        ]
    )
    steps: list[tuple[str, d.Wait]] = []
    while not isinstance(event := dialogue.next_event(), d.Done):
        match event:
            case d.AwaitReply(waiting_for, wait):
                steps.append((f"reply to {waiting_for}", wait))
                dialogue.receive_reply(reply(next(server)))
            case d.Send(data, wait):
                steps.append((data.split()[0].decode(), wait))
            case d.SendBody(wait):
                steps.append(("body", wait))
    command, final = d.Wait.COMMAND, d.Wait.FINAL_REPLY
    assert steps == [
        ("reply to the greeting", command),
        ("LHLO", command),
        ("reply to EHLO", command),
        ("MAIL", command),
        ("reply to MAIL FROM", command),
        ("reply to RCPT TO", command),
        ("reply to RCPT TO", command),
        ("reply to DATA", command),
        ("body", d.Wait.DATA_BLOCK),
        ("reply to the final dot", final),
        ("reply to the final dot", final),
        ("QUIT", d.Wait.GOODBYE),
        ("reply to QUIT", d.Wait.GOODBYE),
    ]


def test_the_dialogue_waits_for_its_reply_and_takes_no_other() -> None:
    dialogue = dialogue_for("b@y.net")
    with pytest.raises(RuntimeError, match="no reply is awaited"):
        dialogue.receive_reply(reply("220 mx.test"))
    awaiting = dialogue.next_event()
    assert awaiting == d.AwaitReply("the greeting") and dialogue.next_event() == awaiting
    dialogue.receive_reply(reply("220 mx.test"))
    with pytest.raises(RuntimeError, match="no reply is awaited"):
        dialogue.receive_reply(reply("220 mx.test"))
    assert dialogue.next_event() == d.Send(b"EHLO qsift.test\r\n")
    with pytest.raises(RuntimeError, match="no reply is awaited"):
        dialogue.receive_reply(reply("250 mx.test"))


def case_named(name: str) -> Case:
    [case] = [param.values[0] for param in CASES if param.id == name]
    assert isinstance(case, Case)
    return case


def test_queued_as_is_the_first_acceptance() -> None:
    dialogue, _ = play(case_named("452 past the server's limit: the rest in the next transaction"))
    assert dialogue.queued_as == "250 2.0.0 Ok: queued as Q1"
    dialogue, _ = play(case_named("every recipient refused: RSET, no DATA"))
    assert dialogue.queued_as is None


def test_abort_answers_whoever_is_unanswered_and_ends_the_session() -> None:
    dialogue = dialogue_for("ok@y.net", "gone@y.net", "late@y.net", lmtp=True)
    server = iter(["220 lmtp.test", "250 lmtp.test", "250 ok", "250 ok", "550 5.1.1 no", "250 ok", "354 go"])
    while not isinstance(event := dialogue.next_event(), d.SendBody):
        if isinstance(event, d.AwaitReply):
            dialogue.receive_reply(reply(next(server)))
    assert dialogue.next_event() == d.AwaitReply("the final dot", d.Wait.FINAL_REPLY)
    dialogue.receive_reply(reply("250 2.0.0 saved"))
    assert dialogue.next_event() == d.AwaitReply("the final dot", d.Wait.FINAL_REPLY)
    lost = Row.DOWNSTREAM_TROUBLE.relay(451, "4.4.2", text="connection lost", where=WHERE)
    dialogue.abort(lost)
    assert dialogue.next_event() == d.Done() and dialogue.next_event() == d.Done()
    assert answers(dialogue) == ["K250 2.0.0", "D550 5.1.1", "Z451 4.4.2"]
    assert dialogue.per_recipient()[2].reply == lost


def test_the_session_over_is_done_for_good() -> None:
    dialogue = dialogue_for("b@y.net")
    assert dialogue.next_event() == d.AwaitReply("the greeting")
    dialogue.receive_reply(reply("421 4.3.2 busy"))
    assert dialogue.next_event() == d.Done() and dialogue.next_event() == d.Done()
    assert answers(dialogue) == ["Z451 4.3.2"]


def run(dialogue: d.SmtpClientDialogue, server: list[str]) -> list[str]:
    """Play `server`'s replies; what the dialogue did, as play() writes it."""
    replies = iter(server)
    transcript: list[str] = []
    while not isinstance(event := dialogue.next_event(), d.Done):
        if isinstance(event, d.AwaitReply):
            said = next(replies)
            transcript.append(f"S: {said}")
            dialogue.receive_reply(reply(said))
        else:
            transcript.append(describe(event))
    return transcript


def test_a_session_kept_for_the_next_message_ends_without_quit_and_is_reusable() -> None:
    envelope = Envelope("a@x.org", (Recipient("b@y.net"),))
    dialogue = d.SmtpClientDialogue(
        envelope, size=SIZE, lmtp=False, helo_name="qsift.test", where=WHERE, quit=False
    )
    transcript = run(dialogue, ["220 mx.test", EHLO_PIPELINING, "250 ok", "250 ok", "354 go", "250 2.0.0 Q1"])
    assert transcript[-2:] == ["S: 250 2.0.0 Q1", "-- taken: b@y.net"]
    assert dialogue.reusable and dialogue.capabilities.pipelining
    # Taken up again: no greeting, no EHLO, the extensions as that EHLO gave them.
    again = d.SmtpClientDialogue(
        envelope,
        size=SIZE,
        lmtp=False,
        helo_name="qsift.test",
        where=WHERE,
        greeted=dialogue.capabilities,
        quit=False,
    )
    transcript = run(again, ["250 ok", "250 ok", "354 go", "250 2.0.0 Q2"])
    assert transcript[0] == f"C: {MAIL} | RCPT TO:<b@y.net> | DATA"
    assert answers(again) == ["K250 2.0.0"] and again.reusable


def test_a_session_refused_aborted_or_ended_with_quit_is_not_reusable() -> None:
    envelope = Envelope("a@x.org", (Recipient("b@y.net"),))

    def dialogue(quit: bool = False) -> d.SmtpClientDialogue:
        return d.SmtpClientDialogue(
            envelope, size=SIZE, lmtp=False, helo_name="qsift.test", where=WHERE, quit=quit
        )

    refused = dialogue()
    run(refused, ["421 4.3.2 busy"])
    assert not refused.reusable
    aborted = dialogue()
    assert aborted.next_event() == d.AwaitReply("the greeting")
    aborted.abort(Row.DOWNSTREAM_TROUBLE.relay(451, "4.4.2", text="connection lost", where=WHERE))
    assert not aborted.reusable
    quitting = dialogue(quit=True)
    run(quitting, ["220 mx.test", EHLO_PIPELINING, "250 ok", "250 ok", "354 go", "250 2.0.0 Q1", "221 bye"])
    assert not quitting.reusable
