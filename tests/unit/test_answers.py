"""The answer table: the rows in code are the rows of docs/design.md §3, and each says its bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qsift import errors
from qsift.answers import Row, reply_for_error
from qsift.model import Reply

DESIGN = Path(__file__).parents[2] / "docs" / "design.md"
_DOC_ROW = re.compile(
    r"^\| `(?P<name>[A-Z0-9_]+)` \| .+? \| (?P<letter>[KZD]) \| (?P<code>\d{3})(?P<relayed> \(relayed\))? "
    r"\| (?P<status>[245]\.\d+\.\d+) \| `(?P<template>.+)` \|$"
)


def documented_rows() -> dict[str, tuple[str, int, str, str, bool]]:
    """The rows of the table in docs/design.md §3, by name."""
    section = DESIGN.read_text().split("## 3. ", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            match = _DOC_ROW.match(line)
            assert match, f"not a row of the answer table: {line}"
            name = match["name"]
            assert name not in rows, f"{name} twice in docs/design.md"
            rows[name] = (
                match["letter"],
                int(match["code"]),
                match["status"],
                match["template"],
                bool(match["relayed"]),
            )
    return rows


def test_the_rows_in_code_are_the_rows_in_the_design() -> None:
    in_code = {row.name: tuple(row.row) for row in Row}
    documented = documented_rows()
    assert sorted(in_code) == sorted(documented)
    for name, values in in_code.items():
        assert values == documented[name], name


def test_no_row_is_an_alias_of_another() -> None:
    assert len(Row.__members__) == len(list(Row))


# One line per row: the fields it is filled with, then its QMQP text and SMTP line, byte for byte.
ROW_CASES: list[tuple[Row, dict[str, object], str]] = [
    (
        Row.DELIVERED,
        {"mail_id": "M", "method": "smtp:[::1]:25", "queued_as": "250 2.0.0 Ok: queued as Q", "others": ""},
        "K250 2.0.0 Ok, id=M, from MTA(smtp:[::1]:25): 250 2.0.0 Ok: queued as Q",
    ),
    (
        Row.DELIVERED_TO_RECIPIENT,
        {"mail_id": "M", "downstream": "Ok: queued as Q"},
        "K250 2.0.0 Ok, id=M, Ok: queued as Q",
    ),
    (Row.ALREADY_DELIVERED, {"mail_id": "M"}, "K250 2.0.0 Ok, id=M, already delivered"),
    (
        Row.DUPLICATE,
        {"mail_id": "M", "earlier": "E"},
        "K250 2.0.0 Ok, id=M, already delivered as id=E (identical retry, not forwarded again)",
    ),
    (
        Row.DELIVERED_THEN_ERROR,
        {"mail_id": "M", "error": "disk full"},
        "K250 2.0.0 Ok, id=M, delivered (an internal error followed: disk full)",
    ),
    (Row.BOUNCED, {"mail_id": "M"}, "K250 2.5.0 Ok, id=M, BOUNCE"),
    (
        Row.BOUNCE_SUPPRESSED,
        {"mail_id": "M", "reason": "faked sender"},
        "K250 2.7.0 Ok, id=M, DISCARD(bounce.suppressed: faked sender)",
    ),
    (Row.DISCARDED, {"mail_id": "M", "reason": "SPAM 9.1"}, "K250 2.7.0 Ok, discarded, id=M - SPAM 9.1"),
    (
        Row.NONE_DELIVERED,
        {"mail_id": "M", "others": "1 BOUNCE, 1 DISCARD"},
        "K250 2.5.0 Ok, id=M, 1 BOUNCE, 1 DISCARD",
    ),
    (
        Row.QUEUED_BY_PROGRAM,
        {"program": "/var/qmail/bin/qmail-queue"},
        "K250 2.0.0 Ok: queued by /var/qmail/bin/qmail-queue",
    ),
    (Row.MAILDIR_DELIVERED, {"name": "1.2.host"}, "K250 2.0.0 Ok: delivered as 1.2.host"),
    (Row.REJECTED, {"mail_id": "M", "reason": "VIRUS Eicar"}, "D554 5.7.0 Reject, id=M - VIRUS Eicar"),
    (
        Row.OUTCOME_RECORD_UNREACHABLE,
        {"mail_id": "M", "error": "PostgreSQL: connection refused"},
        "Z451 4.3.0 id=M - cannot read the shared outcome record: PostgreSQL: connection refused",
    ),
    (
        Row.LOOKUP_UNREACHABLE,
        {"mail_id": "M", "error": "PostgreSQL: connection refused"},
        "Z451 4.3.0 id=M - cannot read the per-recipient settings from SQL: PostgreSQL: connection refused",
    ),
    (
        Row.PENPALS_UNREACHABLE,
        {"mail_id": "M", "error": "PostgreSQL: connection refused"},
        "Z451 4.3.0 id=M - cannot read the message log for pen pals: PostgreSQL: connection refused",
    ),
    (
        Row.REJECTED_DMARC,
        {"mail_id": "M", "domain": "example.org"},
        "D550 5.7.26 Unauthenticated email from example.org is not accepted due to domain's DMARC "
        "policy, id=M",
    ),
    (
        Row.REJECTED_DOWNSTREAM,
        {"mail_id": "M", "method": "F", "code": 550, "status": "5.1.1", "text": "no such user"},
        "D554 5.0.0 id=M - rejected by next-hop MTA, from MTA(F): 550 5.1.1 no such user",
    ),
    (
        Row.REFUSED_BY_QSIFT,
        {"mail_id": "M", "method": "F", "code": 553, "status": "5.1.7", "text": "bad"},
        "D553 5.1.7 id=M - refused by qsift, not sent to MTA(F): 553 5.1.7 bad",
    ),
    (
        Row.NO_SMTPUTF8_DOWNSTREAM,
        {"where": "[127.0.0.1]:25"},
        "D553 5.6.7 non-ASCII address, and the downstream MTA has no SMTPUTF8 ([127.0.0.1]:25)",
    ),
    (Row.SENDER_NOT_FORWARDABLE, {"error": "x"}, "D553 5.1.7 sender cannot be forwarded: x"),
    (Row.RECIPIENT_NOT_FORWARDABLE, {"error": "x"}, "D553 5.1.3 recipient cannot be forwarded: x"),
    (Row.XFORWARD_NOT_AUTHORIZED, {}, "D550 5.7.0 Error: insufficient authorization"),
    (Row.UTF8_NOT_DECLARED, {}, "D553 5.6.7 Must declare SMTPUTF8 to send unicode address"),
    (Row.SENDER_NOT_UTF8, {}, "D553 5.1.7 Bad sender address syntax: not UTF-8"),
    (Row.RECIPIENT_NOT_UTF8, {}, "D553 5.1.3 Bad recipient address syntax: not UTF-8"),
    (Row.PROGRAM_REFUSED, {"method": "qmail-queue", "text": "no"}, "D554 5.3.0 qmail-queue: no"),
    (Row.TOO_BIG, {}, "D552 5.3.4 message too big"),
    (Row.TOO_MANY_RECIPIENTS, {}, "D552 5.5.3 too many recipients"),
    (Row.NO_RECIPIENTS, {}, "D554 5.5.1 no recipients"),
    (Row.BAD_ADDRESS, {"detail": "NUL in address"}, "D553 5.1.3 NUL in address"),
    (Row.PROTOCOL_ERROR, {"detail": "protocol error: x"}, "D554 5.5.2 protocol error: x"),
    (
        Row.FORWARD_FAILED,
        {"mail_id": "M", "method": "F", "code": 421, "status": "4.4.2", "text": "timeout"},
        "Z451 4.0.0 id=M - forward failed, from MTA(F): 421 4.4.2 timeout",
    ),
    (Row.DOWNSTREAM_TROUBLE, {"text": "cannot connect", "where": "W"}, "Z451 4.4.0 cannot connect (W)"),
    (Row.PROGRAM_FAILED, {"method": "qmail-queue", "text": "busy"}, "Z451 4.3.0 qmail-queue: busy"),
    (Row.LOCAL_FAILURE, {"detail": "disk full"}, "Z451 4.3.0 disk full"),
    (Row.MAILDIR_FAILED, {"error": "read-only"}, "Z451 4.3.0 maildir delivery failed: read-only"),
    (Row.SCANNERS_FAILED, {"mail_id": "M", "detail": "clamd down"}, "Z451 4.5.0 id=M - clamd down"),
    (Row.QUARANTINE_FAILED, {"mail_id": "M", "error": "full"}, "Z451 4.3.0 id=M - cannot quarantine: full"),
    (
        Row.DSN_FAILED,
        {"mail_id": "M", "text": "x"},
        "Z451 4.5.0 id=M - BOUNCE: the DSN could not be sent (x)",
    ),
    (
        Row.REFUSAL_DSN_FAILED,
        {"mail_id": "M", "count": 2},
        "Z451 4.5.0 id=M - the DSN for 2 refused recipient(s) could not be sent, try later",
    ),
    (
        Row.ERROR_AFTER_SOME_DELIVERED,
        {"mail_id": "M", "delivered": 1, "owed": 2, "error": "x"},
        "Z451 4.3.0 id=M - internal error after 1 of 2 recipients were delivered, "
        "the others are kept for the retry: x",
    ),
    (Row.TOO_BUSY, {}, "Z451 4.3.2 too busy, try later"),
    (Row.TOO_BUSY_IN_WORKER, {"mail_id": "M"}, "Z451 4.3.2 id=M - too busy, try later"),
    (Row.ACCESS_DENIED, {}, "Z421 4.7.1 access denied"),
    (
        Row.TOO_MANY_CONNECTIONS,
        {"detail": "too many connections from [::1]"},
        "Z421 4.7.0 too many connections from [::1]",
    ),
]


@pytest.mark.parametrize(("row", "fields", "said"), ROW_CASES, ids=[case[0].name for case in ROW_CASES])
def test_each_row_says_its_bytes(row: Row, fields: dict[str, object], said: str) -> None:
    reply = row.reply(**fields)
    assert reply.answer.value.encode() + reply.qmqp_text() == said.encode()
    assert reply.smtp_line() == said[1:]


def test_every_row_has_a_line_in_the_case_table() -> None:
    assert sorted(case[0].name for case in ROW_CASES) == sorted(row.name for row in Row)


RELAY_CASES: list[tuple[Row, int, str, tuple[int, str]]] = [
    (Row.FORWARD_FAILED, 421, "4.4.2", (421, "4.4.2")),
    # A reply that is neither 4xx nor 5xx where a refusal was due: the row's own code, a 4.x.x status kept.
    (Row.FORWARD_FAILED, 354, "4.0.0", (451, "4.0.0")),
    (Row.FORWARD_FAILED, 451, "5.1.1", (451, "4.0.0")),
    (Row.REJECTED_DOWNSTREAM, 550, "5.1.1", (550, "5.1.1")),
    (Row.REJECTED_DOWNSTREAM, 450, "4.1.1", (554, "5.0.0")),
    (Row.REFUSED_BY_QSIFT, 553, "5.6.7", (553, "5.6.7")),
    (Row.DOWNSTREAM_TROUBLE, 451, "4.4.1", (451, "4.4.1")),
]


@pytest.mark.parametrize(("row", "code", "status", "said"), RELAY_CASES)
def test_a_relayed_row_keeps_what_fits_its_letter(
    row: Row, code: int, status: str, said: tuple[int, str]
) -> None:
    fields = {"mail_id": "M", "method": "F", "code": code, "status": status, "text": "t", "where": "W"}
    reply = row.relay(code, status, **fields)
    assert (reply.smtp_code, reply.enhanced_status) == said
    assert reply.answer is row.answer


def test_a_row_of_our_own_relays_nothing() -> None:
    with pytest.raises(ValueError, match="relays none"):
        Row.TOO_BUSY.relay(421, "4.3.2")


def _error_classes(root: type[errors.QsiftError]) -> list[type[errors.QsiftError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_error_classes(sub))
    return found


@pytest.mark.parametrize("error_class", _error_classes(errors.QsiftError), ids=lambda c: c.__name__)
def test_every_error_names_a_row(error_class: type[errors.QsiftError]) -> None:
    reply = reply_for_error(error_class("what went wrong"), mail_id="M")
    assert isinstance(reply, Reply)
    assert (
        reply.text.endswith("what went wrong") or "{detail}" not in Row[error_class.answer_row].row.template
    )


def test_an_error_with_no_text_is_named_by_its_class() -> None:
    assert reply_for_error(errors.SpoolError()).text == "SpoolError"
