"""Values that cross stages: the envelope, the answer to the sending side, the outcome of a message.

Addresses are `str` decoded from the wire as UTF-8 with `surrogateescape`, so any byte sequence an MTA
hands us survives the round trip to the downstream MTA unchanged (`address_bytes`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: ESMTP parameters as (KEYWORD, value or None), keywords upper-cased, order kept.
Params = tuple[tuple[str, str | None], ...]


def address_from_bytes(raw: bytes) -> str:
    """Decode an envelope address from the wire without losing any byte."""
    return raw.decode("utf-8", "surrogateescape")


def address_bytes(address: str) -> bytes:
    """Encode an envelope address back to the exact bytes it came as."""
    return address.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient and the RCPT parameters to carry forward (NOTIFY, ORCPT)."""

    address: str
    params: Params = ()


@dataclass(frozen=True)
class Client:
    """The SMTP client the message came from: the connection's peer, or what qsift-queue vouched for
    from qmail-smtpd's environment (TCPREMOTEIP, TCPREMOTEHOST, RELAYCLIENT, the SMTP AUTH user)."""

    ip: str = ""
    host: str = ""
    #: qmail-smtpd let this client relay (RELAYCLIENT was set): our own users' mail.
    relay_client: bool = False
    #: The SMTP AUTH user, "" when the client did not log in (or the MTA does not say).
    auth_user: str = ""


@dataclass(frozen=True)
class Envelope:
    """Who the message is from and to, and what the client told us about itself."""

    sender: str
    recipients: tuple[Recipient, ...]
    #: MAIL parameters to carry forward (BODY, SMTPUTF8, RET, ENVID); SIZE is recomputed.
    mail_params: Params = ()
    #: The protocol the message came in by: QMQP, SMTP, ESMTP, LMTP.
    protocol: str = "QMQP"
    #: The client hears each recipient's own reply after the data (LMTP, RFC 2033 §4.2), so a recipient
    #: can be refused alone, whatever became of the others; else one reply answers for all.
    replies_per_recipient: bool = False
    client_address: str | None = None
    #: The client's host name where it is known (XFORWARD NAME, qmail's TCPREMOTEHOST).
    client_name: str | None = None
    #: The id the sending side gave the message (ours, the mail_id, once it goes downstream: XFORWARD IDENT).
    ident: str | None = None
    helo: str | None = None
    #: The listener's name ("qmqp:127.0.0.1:10628"), which may choose a policy bank.
    listener: str = ""
    #: The connection's peer when the MTA named the client itself (Postfix's XFORWARD); then
    #: client_address and helo are the client the MTA had the message from. None otherwise.
    peer_address: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients)


class Answer(enum.Enum):
    """The three answers of QMQP, which every protocol's answer maps onto."""

    ACCEPT = "K"
    TEMPFAIL = "Z"
    REJECT = "D"


@dataclass(frozen=True)
class Reply:
    """One answer to the sending side, protocol-neutral until the listener renders it.

    qsift's own answers are made from the rows of the answer table (answers.Row), never by hand; a
    Reply built here is one another party said (reply_from_smtp)."""

    answer: Answer
    smtp_code: int
    enhanced_status: str
    text: str

    def qmqp_text(self) -> bytes:
        """The QMQP response's text, after its letter: the code, the status and the text, one line."""
        line = f"{self.smtp_code} {self.enhanced_status} {self.text}"
        return single_line(line).encode("utf-8", "replace")

    def smtp_line(self) -> str:
        return single_line(f"{self.smtp_code} {self.enhanced_status} {self.text}")


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def reply_from_smtp(code: int, text: str) -> Reply:
    """A Reply from an SMTP/LMTP reply line; the enhanced status comes from the text or the code."""
    match = _ENHANCED.match(text)
    if match and match.group(1) == str(code)[0]:
        enhanced = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        text = text[match.end() :]
    else:
        enhanced = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")
    if 200 <= code < 300:
        answer = Answer.ACCEPT
    elif 500 <= code < 600:
        answer = Answer.REJECT
    else:
        answer = Answer.TEMPFAIL
    return Reply(answer, code, enhanced, text)


def single_line(text: str) -> str:
    """The text with every control character (CR and LF among them) replaced by a space: safe in one
    SMTP reply line, one qmail-smtpd reply, one header field."""
    return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)


class Disposition(enum.Enum):
    """What became of the message as a whole; the summary log line starts with it."""

    PASSED = "Passed"
    BLOCKED = "Blocked"
    TEMPFAILED = "Tempfailed"
    DUPLICATE = "Duplicate"


@dataclass(frozen=True)
class RecipientResult:
    """What the downstream MTA (or policy) said for one recipient."""

    recipient: Recipient
    reply: Reply
    #: False when qsift refused the recipient itself on the way (an address it cannot put in an SMTP
    #: command), so the downstream never saw it and the answer must not read as the downstream's.
    from_downstream: bool = True


@dataclass(frozen=True)
class Outcome:
    """The certain result of handling one message: the answer and what happened on the way."""

    mail_id: str
    reply: Reply
    disposition: Disposition
    category: str = "CLEAN"
    #: One result per recipient, in envelope order; LMTP answers each recipient with its own.
    per_recipient: tuple[RecipientResult, ...] = ()
    queued_as: str | None = None
    #: The forward method the delivered recipients went by ("" when none were forwarded).
    method: str = ""
    notes: tuple[str, ...] = field(default=())
    #: The client as qsift-queue vouched for it, when it did (the log shows its address).
    client: Client | None = None
    #: The policy banks the message was judged by.
    banks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardResult:
    """What the downstream MTA (or queue program, or maildir) said, one result per recipient."""

    #: The forward method as configured, for logs and answers: "smtp:[127.0.0.1]:10025".
    method: str
    #: One entry per recipient handed to the forward, in envelope order.
    per_recipient: tuple[RecipientResult, ...]
    #: The downstream's own words on acceptance, e.g. "250 2.0.0 Ok: queued as 4Xyz"; None if nothing taken.
    queued_as: str | None = None

    @property
    def all_accepted(self) -> bool:
        return all(r.reply.answer is Answer.ACCEPT for r in self.per_recipient)


#: Told by a forward which recipients the downstream has just accepted, before the forward goes on (to
#: QUIT, to the next transaction), so they are recorded as delivered at once: a worker killed after the
#: downstream's 250 and before the record makes the client's retry a duplicate. It must not raise.
Delivered = Callable[[tuple["RecipientResult", ...]], Awaitable[None]]


class Category(enum.Enum):
    """What a message (or a recipient's view of it) is, amavisd-new's content categories.

    Declared from most to least severe: the main category of a message is the first one present.
    """

    VIRUS = "virus"
    BANNED = "banned"
    #: The From: domain publishes DMARC p=reject and the message fails it (a forgery, or a forwarder
    #: that broke it). Above UNCHECKED: an encrypted attachment must not let a forged message pass.
    DMARC = "dmarc"
    UNCHECKED = "unchecked"
    SPAM = "spam"
    SPAMMY = "spammy"
    BAD_HEADER = "bad-header"
    OVERSIZED = "oversized"
    CLEAN = "clean"

    @property
    def rank(self) -> int:
        """0 for the most severe; lower wins."""
        return _CATEGORY_RANK[self]

    @property
    def log_word(self) -> str:
        """The word of the summary log line: `Passed BANNED`, `Blocked INFECTED`."""
        return "INFECTED" if self is Category.VIRUS else self.value.upper()


_CATEGORY_RANK = {category: rank for rank, category in enumerate(Category)}


@dataclass(frozen=True)
class Finding:
    """One reason a message is in a category, with amavisd-new's minor code where it has one.

    Minor codes: unchecked 1 encrypted, 2 over limits, 3 undecipherable; bad-header 1 mime, 2 8bit,
    3 control, 4 empty line, 5 long line, 6 syntax, 7 missing, 8 multiple.
    """

    category: Category
    minor: int
    #: Human-readable: the banned part's path and the rule, the header and what is wrong with it.
    detail: str
    #: The part it is about ("2/invoice.zip/a.exe"), or "" for the message as a whole.
    part: str = ""


def main_category(findings: tuple[Finding, ...] | list[Finding]) -> Category:
    """The most severe category present; CLEAN when there is none."""
    return min((f.category for f in findings), key=lambda c: c.rank, default=Category.CLEAN)
