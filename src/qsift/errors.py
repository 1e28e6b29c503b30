"""The qsift error tree: each class knows the answer it maps to on the wire.

Errors are split by who is at fault (the client, the downstream MTA, a scanner, the configuration).
Policy outcomes are never exceptions; these are for things that went wrong.
"""

from __future__ import annotations


class QsiftError(Exception):
    """Root of every error qsift raises on purpose."""

    # Plain class attributes, not typing.ClassVar: qsift-queue imports this module once per message and
    # importing typing would cost it several milliseconds.
    enhanced_status: str = "4.3.0"
    qmqp_reply: str = "Z"
    smtp_code: int = 451


# --- the client (the MTA side that hands us the message) broke a rule ---------------------------------


class ClientError(QsiftError):
    """The sending side broke the protocol or a limit; the answer is permanent."""

    enhanced_status = "5.5.2"
    qmqp_reply = "D"
    smtp_code = 554


class ProtocolError(ClientError):
    """Bytes that are not valid for the protocol (netstrings, QMQP, SMTP)."""


class NetstringError(ProtocolError):
    """A malformed netstring: bad length, leading zero, missing comma."""


class MessageTooBig(ClientError):
    """The message is larger than the configured size limit."""

    enhanced_status = "5.3.4"
    smtp_code = 552


class TooManyRecipients(ClientError):
    """More recipients than the configured limit."""

    enhanced_status = "5.5.3"
    smtp_code = 552


class BadAddress(ClientError):
    """An envelope address qsift refuses to carry (NUL bytes, control characters, too long)."""

    enhanced_status = "5.1.3"
    smtp_code = 553


class NoRecipients(ClientError):
    """A request that names no recipient at all."""

    enhanced_status = "5.5.1"
    smtp_code = 554


class ClientTimeout(QsiftError):
    """The client stalled past its time limit; nothing is answered or forwarded."""


class AccessDenied(QsiftError):
    """The client's address is not in the listener's ACL.

    Temporary on purpose: a misconfigured ACL must make mail wait, never bounce it.
    """

    enhanced_status = "4.7.1"


class TooBusy(QsiftError):
    """Every slot stayed taken past the bounded wait."""

    enhanced_status = "4.3.2"
    smtp_code = 421


class TooManyConnections(QsiftError):
    """The client's address already holds its share of connections (Postfix's anvil limit)."""

    enhanced_status = "4.7.0"
    smtp_code = 421


# --- the downstream MTA (forward or notify target) ------------------------------------------------------


class DownstreamError(QsiftError):
    """The forward could not be completed for now: 4xx, refused, timed out, broken connection."""

    enhanced_status = "4.4.0"


class DownstreamRejected(QsiftError):
    """The downstream MTA refused the message permanently for every recipient."""

    enhanced_status = "5.0.0"
    qmqp_reply = "D"
    smtp_code = 554


# --- the local system ---------------------------------------------------------------------------------


class SpoolError(QsiftError):
    """A temp file or durable store could not be written (disk full, permissions)."""

    enhanced_status = "4.3.0"


class ScannerFailure(QsiftError):
    """Every virus scanner failed: the message must wait (DESIGN.md invariant 4)."""

    enhanced_status = "4.5.0"


class ConfigError(QsiftError):
    """The configuration is invalid; raised at load time, never while serving mail."""
