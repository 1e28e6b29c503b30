"""The qsift error tree: each class names the row of the answer table (answers.Row) it is answered with.

Errors are split by who is at fault (the client, a scanner, the local system, the configuration); what a
downstream MTA says is a reply, not an error (act/smtp_forward.py).
Policy outcomes are never exceptions; these are for things that went wrong.
"""

from __future__ import annotations


class QsiftError(Exception):
    """Root of every error qsift raises on purpose."""

    # The row of the answer table (answers.Row) this error is answered with. A name, not the row: this
    # module stays free of imports, since qsift-queue imports it once per message.
    answer_row: str = "LOCAL_FAILURE"


# --- the client (the MTA side that hands us the message) broke a rule ---------------------------------


class ClientError(QsiftError):
    """The sending side broke the protocol or a limit; the answer is permanent."""

    answer_row = "PROTOCOL_ERROR"


class ProtocolError(ClientError):
    """Bytes that are not valid for the protocol (netstrings, QMQP, SMTP)."""


class NetstringError(ProtocolError):
    """A malformed netstring: bad length, leading zero, missing comma."""


class MessageTooBig(ClientError):
    """The message is larger than the configured size limit."""

    answer_row = "TOO_BIG"


class TooManyRecipients(ClientError):
    """More recipients than the configured limit."""

    answer_row = "TOO_MANY_RECIPIENTS"


class BadAddress(ClientError):
    """An envelope address qsift refuses to carry (NUL bytes, control characters, too long)."""

    answer_row = "BAD_ADDRESS"


class NoRecipients(ClientError):
    """A request that names no recipient at all."""

    answer_row = "NO_RECIPIENTS"


class ClientTimeout(QsiftError):
    """The client stalled past its time limit; nothing is answered or forwarded."""


class TooBusy(QsiftError):
    """Every slot stayed taken past the bounded wait."""

    answer_row = "TOO_BUSY"


class TooManyConnections(QsiftError):
    """The client's address already holds its share of connections (Postfix's anvil limit)."""

    answer_row = "TOO_MANY_CONNECTIONS"


# --- the local system ---------------------------------------------------------------------------------


class SpoolError(QsiftError):
    """A temp file or durable store could not be written (disk full, permissions)."""


class StoreUnreachable(SpoolError):
    """The shared PostgreSQL store did not answer: down, refusing, or past the connect timeout."""


class ScannerFailure(QsiftError):
    """Every virus scanner failed: the message must wait (DESIGN.md invariant 4)."""

    answer_row = "SCANNERS_FAILED"


class ConfigError(QsiftError):
    """The configuration is invalid; raised at load time, never while serving mail."""
