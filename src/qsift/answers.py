"""The answer table (docs/design.md §3): every answer qsift gives the sending side, one named row each.

A reply is made only from a row: its QMQP letter, SMTP code, enhanced status and text template are
written here and nowhere else, and a test walks these rows against the table in docs/design.md. Rows
marked `relayed` pass on a downstream's (or local delivery program's) own code and status; their
row values are what is said when that code does not fit the letter.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from qsift.errors import QsiftError
from qsift.model import Answer, Reply


class _Row(NamedTuple):
    letter: str
    smtp_code: int
    status: str
    template: str
    relayed: bool = False


class Row(enum.Enum):
    """One row of the answer table."""

    # --- accepted (K / 2xx) -------------------------------------------------------------------------------
    DELIVERED = _Row("K", 250, "2.0.0", "Ok, id={mail_id}, from MTA({method}): {queued_as}{others}")
    DELIVERED_TO_RECIPIENT = _Row("K", 250, "2.0.0", "Ok, id={mail_id}, {downstream}")
    ALREADY_DELIVERED = _Row("K", 250, "2.0.0", "Ok, id={mail_id}, already delivered")
    DUPLICATE = _Row(
        "K",
        250,
        "2.0.0",
        "Ok, id={mail_id}, already delivered as id={earlier} (identical retry, not forwarded again)",
    )
    DELIVERED_THEN_ERROR = _Row(
        "K", 250, "2.0.0", "Ok, id={mail_id}, delivered (an internal error followed: {error})"
    )
    BOUNCED = _Row("K", 250, "2.5.0", "Ok, id={mail_id}, BOUNCE")
    BOUNCE_SUPPRESSED = _Row("K", 250, "2.7.0", "Ok, id={mail_id}, DISCARD(bounce.suppressed: {reason})")
    DISCARDED = _Row("K", 250, "2.7.0", "Ok, discarded, id={mail_id} - {reason}")
    NONE_DELIVERED = _Row("K", 250, "2.5.0", "Ok, id={mail_id}, {others}")
    QUEUED_BY_PROGRAM = _Row("K", 250, "2.0.0", "Ok: queued by {program}")
    MAILDIR_DELIVERED = _Row("K", 250, "2.0.0", "Ok: delivered as {name}")
    # --- refused (D / 5xx) --------------------------------------------------------------------------------
    REJECTED = _Row("D", 554, "5.7.0", "Reject, id={mail_id} - {reason}")
    REJECTED_DMARC = _Row(
        "D",
        550,
        "5.7.26",
        "Unauthenticated email from {domain} is not accepted due to domain's DMARC policy, id={mail_id}",
    )
    REJECTED_DOWNSTREAM = _Row(
        "D",
        554,
        "5.0.0",
        "id={mail_id} - rejected by next-hop MTA, from MTA({method}): {code} {status} {text}",
        relayed=True,
    )
    REFUSED_BY_QSIFT = _Row(
        "D",
        553,
        "5.1.7",
        "id={mail_id} - refused by qsift, not sent to MTA({method}): {code} {status} {text}",
        relayed=True,
    )
    NO_SMTPUTF8_DOWNSTREAM = _Row(
        "D", 553, "5.6.7", "non-ASCII address, and the downstream MTA has no SMTPUTF8 ({where})"
    )
    SENDER_NOT_FORWARDABLE = _Row("D", 553, "5.1.7", "sender cannot be forwarded: {error}")
    RECIPIENT_NOT_FORWARDABLE = _Row("D", 553, "5.1.3", "recipient cannot be forwarded: {error}")
    XFORWARD_NOT_AUTHORIZED = _Row("D", 550, "5.7.0", "Error: insufficient authorization")
    UTF8_NOT_DECLARED = _Row("D", 553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
    SENDER_NOT_UTF8 = _Row("D", 553, "5.1.7", "Bad sender address syntax: not UTF-8")
    RECIPIENT_NOT_UTF8 = _Row("D", 553, "5.1.3", "Bad recipient address syntax: not UTF-8")
    PROGRAM_REFUSED = _Row("D", 554, "5.3.0", "{method}: {text}")
    TOO_BIG = _Row("D", 552, "5.3.4", "message too big")
    TOO_MANY_RECIPIENTS = _Row("D", 552, "5.5.3", "too many recipients")
    NO_RECIPIENTS = _Row("D", 554, "5.5.1", "no recipients")
    BAD_ADDRESS = _Row("D", 553, "5.1.3", "{detail}")
    PROTOCOL_ERROR = _Row("D", 554, "5.5.2", "{detail}")
    # --- try later (Z / 4xx) ------------------------------------------------------------------------------
    FORWARD_FAILED = _Row(
        "Z",
        451,
        "4.0.0",
        "id={mail_id} - forward failed, from MTA({method}): {code} {status} {text}",
        relayed=True,
    )
    DOWNSTREAM_TROUBLE = _Row("Z", 451, "4.4.0", "{text} ({where})", relayed=True)
    PROGRAM_FAILED = _Row("Z", 451, "4.3.0", "{method}: {text}")
    MAILDIR_FAILED = _Row("Z", 451, "4.3.0", "maildir delivery failed: {error}")
    SCANNERS_FAILED = _Row("Z", 451, "4.5.0", "id={mail_id} - {detail}")
    QUARANTINE_FAILED = _Row("Z", 451, "4.3.0", "id={mail_id} - cannot quarantine: {error}")
    OUTCOME_RECORD_UNREACHABLE = _Row(
        "Z", 451, "4.3.0", "id={mail_id} - cannot read the shared outcome record: {error}"
    )
    LOOKUP_UNREACHABLE = _Row(
        "Z", 451, "4.3.0", "id={mail_id} - cannot read the per-recipient settings from SQL: {error}"
    )
    PENPALS_UNREACHABLE = _Row(
        "Z", 451, "4.3.0", "id={mail_id} - cannot read the message log for pen pals: {error}"
    )
    DSN_FAILED = _Row("Z", 451, "4.5.0", "id={mail_id} - BOUNCE: the DSN could not be sent ({text})")
    REFUSAL_DSN_FAILED = _Row(
        "Z",
        451,
        "4.5.0",
        "id={mail_id} - the DSN for {count} refused recipient(s) could not be sent, try later",
    )
    ERROR_AFTER_SOME_DELIVERED = _Row(
        "Z",
        451,
        "4.3.0",
        "id={mail_id} - internal error after {delivered} of {owed} recipients were delivered, "
        "the others are kept for the retry: {error}",
    )
    LOCAL_FAILURE = _Row("Z", 451, "4.3.0", "{detail}")
    TOO_BUSY = _Row("Z", 451, "4.3.2", "too busy, try later")
    TOO_BUSY_IN_WORKER = _Row("Z", 451, "4.3.2", "id={mail_id} - too busy, try later")
    ACCESS_DENIED = _Row("Z", 421, "4.7.1", "access denied")
    TOO_MANY_CONNECTIONS = _Row("Z", 421, "4.7.0", "{detail}")

    @property
    def row(self) -> _Row:
        value: _Row = self.value
        return value

    @property
    def answer(self) -> Answer:
        return Answer(self.row.letter)

    def reply(self, **fields: object) -> Reply:
        """The reply this row says, its template filled in with `fields`."""
        row = self.row
        return Reply(self.answer, row.smtp_code, row.status, row.template.format(**fields))

    def relay(self, smtp_code: int, status: str, /, **fields: object) -> Reply:
        """A relayed row's reply with another party's code and status, where they fit the row's letter."""
        row = self.row
        if not row.relayed:
            raise ValueError(f"{self.name} says its own code, it relays none")
        if smtp_code // 100 != row.smtp_code // 100:
            smtp_code = row.smtp_code
        if status[:1] != row.status[:1]:
            status = row.status
        return Reply(self.answer, smtp_code, status, row.template.format(**fields))


def reply_for_error(error: QsiftError, **fields: object) -> Reply:
    """The answer an error's class names for itself (errors.py), with the error's text as `detail`."""
    return Row[error.answer_row].reply(detail=str(error) or type(error).__name__, **fields)
