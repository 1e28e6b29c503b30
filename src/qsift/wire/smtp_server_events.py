"""What the sans-IO SMTP/LMTP server hands the application, one event per `next_event` call (smtp_server).

Each carries what the client said once the connection vetted it; a refused command makes no event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qsift.model import Params
from qsift.wire.smtp_args import Forwarded


@dataclass(frozen=True)
class NeedData:
    """Nothing more can happen until `receive_data` is called."""


@dataclass(frozen=True)
class Paused:
    """The connection waits for the application: `start_data` or `refuse_data`, or `answer_data`."""


@dataclass(frozen=True)
class Hello:
    name: str
    extended: bool


@dataclass(frozen=True)
class MailFrom:
    sender: bytes
    params: Params


@dataclass(frozen=True)
class RcptTo:
    recipient: bytes
    params: Params


@dataclass(frozen=True)
class DataStart:
    """DATA passed the connection's checks; nothing goes out until `start_data` (354) or `refuse_data`."""


@dataclass(frozen=True)
class DataChunk:
    """Body bytes, dot-unstuffed, line ends as the client sent them."""

    data: bytes


@dataclass(frozen=True)
class DataEnd:
    """The final dot arrived; the connection now waits for `answer_data`."""

    sender: bytes
    recipients: list[tuple[bytes, Params]]
    mail_params: Params
    size: int
    #: The body went past max_message_size; the chunks past the limit were not handed out.
    too_big: bool
    #: What XFORWARD said about the original client before this transaction: NAME, ADDR (without
    #: an IPV6: prefix), PORT, PROTO, HELO, IDENT, SOURCE, each decoded, None when the client said
    #: [UNAVAILABLE]. Empty when no XFORWARD came; names not sent are unavailable too (the README:
    #: a first XFORWARD sets every attribute to [UNAVAILABLE]).
    xforward: Forwarded = field(default_factory=dict)


@dataclass(frozen=True)
class Quit:
    """The client said QUIT; 221 is queued and the connection is closed."""


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection is over: the client went away (mid-message, the message is incomplete) or we closed."""


Event = (
    NeedData | Paused | Hello | MailFrom | RcptTo | DataStart | DataChunk | DataEnd | Quit | ConnectionClosed
)
