"""The pen pals question to the message log and its answer, as values (the query: pg_penpals.py).

amavisd-new asks, for each local recipient of a message: did this recipient send mail to this message's
sender, or send the mail this message replies to? (reference: amavisd-sql.md §2.5, sid and rid swapped).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PenPalQuery:
    """One message's question: every recipient worth asking about, at once."""

    sender: str
    #: The local recipients the bonus may go to, none of them the sender.
    recipients: tuple[str, ...]
    #: The Message-IDs its In-Reply-To and References fields name, as msgs.message_id keeps them.
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class SentMail:
    """A mail a recipient sent earlier, as the message log (msgs, msgrcpt) kept it."""

    mail_id: str
    #: msgs.time_num: when it passed, in Unix seconds.
    time_num: int
    subject: str
    #: Found by a Message-ID the message names in In-Reply-To or References (sel_penpals_msgid), not
    #: by its sender alone (sel_penpals).
    by_reference: bool
