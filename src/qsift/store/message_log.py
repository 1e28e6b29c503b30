"""One finished message as amavisd-new's message log keeps it (reference: amavisd-sql.md §1.3-1.4): the
values of its `msgs` row and of a `msgrcpt` row per recipient, made by the pipeline (pipeline/logged.py)
and written by store/pg_log.py. Values only; no driver.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoggedRecipient:
    """One recipient's `msgrcpt` row."""

    address: str
    #: rseqnum: its place among the envelope's recipients, from 1; the shared quarantine numbers the
    #: recipients it keeps the same way, so the two writers meet on the same rows.
    number: int
    #: is_local: Y or N.
    local: bool
    #: content: the letter of the category it saw (amavisd_forms.CONTENT_CODES).
    content: str
    #: ds: P pass, R reject, B bounce, D discard, T tempfail.
    delivery_status: str
    #: bspam_level: the spam score it was judged by; None without a spam check.
    spam_level: float | None
    #: smtp_resp: the reply given for it.
    reply: str
    #: bl, wl: the recipient's sender lists blacklisted or whitelisted the sender.
    blacklisted: bool = False
    whitelisted: bool = False


@dataclass(frozen=True)
class LoggedMessage:
    """One message's `msgs` row and its recipients."""

    mail_id: str
    #: Authorizes a release over AM.PDP (mail_ids.py).
    secret_id: str
    #: When it came in (time_num, time_iso).
    received: float
    sender: str
    recipients: tuple[LoggedRecipient, ...]
    #: The message as it came (without qsift-queue's X-Qsift-Client fields), in bytes.
    size: int
    #: content: the letter of the most severe category any recipient saw.
    content: str
    #: policy: the policy banks that applied, comma-separated (amavisd-new's %p).
    policy: str
    client_address: str
    originating: bool
    #: spam_level: the lowest score any recipient was judged by, None without a spam check.
    spam_level: float | None
    #: dsn_sent: Y a DSN went out, q it was suppressed, N none was due.
    dsn_sent: str
    #: The message's header section: message_id, from_addr and subject are read from it.
    head: bytes
