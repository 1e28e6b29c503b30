"""The server side of SMTP (RFC 5321) and LMTP (RFC 2033), sans-IO, in the manner of h11.

Feed bytes with `receive_data`, take events with `next_event`, send what `data_to_send` returns. The
connection answers every command itself except two, where it pauses for the application:
- DATA, once the connection's own checks pass (a sender, a recipient): a `DataStart` event, nothing sent,
  until the application calls `start_data` (354, the content follows) or `refuse_data` with its reply
  (too busy). That is what lets a busy listener say 451 before the client sends any content.
- The end of DATA: a `DataEnd` event until the application calls `answer_data` with one reply (SMTP) or
  one per accepted recipient (LMTP, RFC 2033 §4.2). That is what lets qsift answer only once the
  forward's outcome is known.

Why not aiosmtpd: it holds the whole body in memory and gives LMTP a single reply after DATA
(aio-libs/aiosmtpd#517). Here the body leaves as `DataChunk` events as it arrives, so memory is bounded
by the read size whatever the message size.

Defences, each one a known attack or a known breakage (those on bytes are in smtp_server_framing):
- Bytes that arrive while the connection waits for the application (a pipelined QUIT, or a flood) are
  buffered up to a bound; past it the connection is closed after the answer.
- A client must wait for the reply to DATA before it sends content (RFC 5321 §4.1.1.4; RFC 2920 §3.1
  makes DATA the last command of a group). Bytes it sent ahead are content once the application starts
  the message (they could as well have come just after the 354), but after a refusal they are neither
  content nor commands: read as commands, a message's own lines would run as SMTP (smuggling), so the
  refusal is followed by 421 and the close.
- Too many refused commands, and the connection is closed with 421.
- No input makes `receive_data` or `next_event` raise.

XFORWARD (Postfix's XFORWARD_README), when offered: Postfix, handing a message to the filter, names the
client it had the message from. The attributes are taken only outside a mail transaction, accumulate
over several commands, and are dropped when the transaction ends (the final dot, RSET, or a new EHLO,
an implicit RSET by RFC 5321 §4.1.4); `DataEnd.xforward` carries them. Who may send it is the
application's call, made per connection (`ServerSettings.xforward`): a client not allowed is not offered it
and hears Postfix smtpd's own refusal, 550 5.7.0, with nothing changed.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qsift.answers import Row
from qsift.model import Params, Reply
from qsift.wire.smtp_args import (
    XFORWARD_ATTRIBUTES,
    ArgumentError,
    Forwarded,
    parse_mail,
    parse_rcpt,
    parse_xforward,
)
from qsift.wire.smtp_server_events import (
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Hello,
    MailFrom,
    NeedData,
    Paused,
    Quit,
    RcptTo,
)
from qsift.wire.smtp_server_framing import ClientInput, LineTooLong, bare_reply, reply_line

__all__ = [
    "ConnectionClosed",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Event",
    "Hello",
    "MailFrom",
    "NeedData",
    "Paused",
    "Quit",
    "RcptTo",
    "ServerSettings",
    "SmtpServerConnection",
]

_PAUSED_INPUT_LIMIT = 64 * 1024
#: The EHLO keyword and the attributes taken, as Postfix's smtpd announces them; Postfix's client sends
#: only the attributes named here.
_XFORWARD_OFFER = b"XFORWARD " + " ".join(XFORWARD_ATTRIBUTES).encode()


@dataclass(frozen=True)
class ServerSettings:
    hostname: str
    lmtp: bool = False
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    #: Longest command line, CR LF included (RFC 5321 §4.5.3.1.4 says 512 at least).
    max_line_length: int = 2048
    #: Refused commands before the connection is closed with 421.
    max_errors: int = 20
    max_address_length: int = 1000
    #: This client may send XFORWARD (Postfix's XFORWARD_README): offer it in the EHLO/LHLO reply and take
    #: it; otherwise refuse it with 550 5.7.0.
    xforward: bool = False


class _State(enum.Enum):
    COMMAND = enum.auto()
    #: DATA passed the connection's checks; the application decides between 354 and a refusal.
    DATA_PENDING = enum.auto()
    DATA = enum.auto()
    PAUSED = enum.auto()
    CLOSED = enum.auto()


@dataclass
class _Transaction:
    sender: bytes | None = None
    mail_params: Params = ()
    recipients: list[tuple[bytes, Params]] = field(default_factory=list)
    size: int = 0
    too_big: bool = False
    xforward: Forwarded = field(default_factory=dict)


class SmtpServerConnection:
    """One SMTP or LMTP connection, from greeting to close."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._state = _State.COMMAND
        self._input = ClientInput(settings.max_line_length)
        self._output = bytearray()
        self._events: deque[Event] = deque()
        self._eof = False
        self._greeted = False
        self._hello: str | None = None
        self._extended = False
        self._errors = 0
        self._paused_overflow = False
        self._txn = _Transaction()

    # --- the application's side -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED and not self._events

    def reject_connection(self, reply: Reply) -> None:
        """Greet with a refusal instead of 220 (access denied, too busy) and close."""
        if not self._greeted:
            self._greeted = True
            self._output += reply_line(reply.smtp_code, reply.enhanced_status, reply.text)
        self._close()

    def data_to_send(self) -> bytes:
        self._greet()
        data = bytes(self._output)
        self._output.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" means it closed its side."""
        if not data:
            self._eof = True
        elif self._state is _State.CLOSED:
            return
        elif self._state in _WAITING and len(self._input) + len(data) > _PAUSED_INPUT_LIMIT:
            self._paused_overflow = True
        else:
            self._input.append(data)

    def next_event(self) -> Event:
        self._greet()
        while True:
            if self._events:
                return self._events.popleft()
            if self._state is _State.CLOSED:
                return ConnectionClosed()
            if self._state in _WAITING:
                return Paused()
            progressed = self._data_step() if self._state is _State.DATA else self._command_step()
            if not progressed and not self._events:
                if self._eof:
                    self._close()
                    return ConnectionClosed()
                return NeedData()

    def start_data(self) -> None:
        """Take the message DataStart announced: 354 goes out, and its content follows as DataChunk events."""
        self._check_data_pending("start_data")
        if self._paused_overflow:
            # Content sent ahead of the 354 was dropped past the bound: what would follow is not the message.
            self._close_for_pipelining()
            return
        self._output += bare_reply(354, [b"End data with <CR><LF>.<CR><LF>"])
        self._state = _State.DATA
        self._input.start_body()

    def refuse_data(self, reply: Reply) -> None:
        """Answer DATA with `reply` (4xx or 5xx) instead of 354; no content is read.

        The envelope stays, as after any refused command (RFC 5321 §4.1.4 keeps the state): the client may
        send DATA again, RSET or QUIT; a new MAIL hears 503 until it does RSET.
        """
        self._check_data_pending("refuse_data")
        if reply.smtp_code < 400:
            raise ValueError(f"refuse_data needs a 4xx or 5xx reply, got {reply.smtp_code}")
        # The application's call (too busy), not a client mistake: it does not count towards max_errors.
        self._output += reply_line(reply.smtp_code, reply.enhanced_status, reply.text)
        self._state = _State.COMMAND
        if len(self._input) or self._paused_overflow:
            self._close_for_pipelining()

    def answer_data(self, replies: list[Reply]) -> None:
        """The answer to the message just received: one reply, or one per recipient for LMTP."""
        if self._state is not _State.PAUSED:
            raise RuntimeError("answer_data called while no message waits for an answer")
        expected = len(self._txn.recipients) if self.settings.lmtp else 1
        if len(replies) != expected:
            raise RuntimeError(f"answer_data needs {expected} replies, got {len(replies)}")
        for reply in replies:
            # The message's fate, not a client mistake: it does not count towards max_errors.
            self._output += reply_line(reply.smtp_code, reply.enhanced_status, reply.text)
        self._txn = _Transaction()
        self._state = _State.COMMAND
        if self._paused_overflow:
            self._send(421, "4.7.0", "Too much pipelined input, closing connection")
            self._close()

    # --- output ---------------------------------------------------------------------------------------

    def _greet(self) -> None:
        if not self._greeted:
            self._greeted = True
            service = "LMTP" if self.settings.lmtp else "ESMTP"
            self._output += bare_reply(220, [b"%s %s qsift" % (self._hostname_bytes(), service.encode())])

    def _hostname_bytes(self) -> bytes:
        return self.settings.hostname.encode("ascii", "replace")

    def _send(self, code: int, status: str, text: str) -> None:
        """Queue a one-line reply; a refusal counts towards max_errors."""
        self._output += reply_line(code, status, text)
        if code >= 400:
            self._errors += 1

    def _send_row(self, row: Row) -> None:
        reply = row.reply()
        self._send(reply.smtp_code, reply.enhanced_status, reply.text)

    def _check_data_pending(self, method: str) -> None:
        if self._state is not _State.DATA_PENDING:
            raise RuntimeError(f"{method} called while no DATA waits for a decision")

    def _close_for_pipelining(self) -> None:
        """The client sent content without waiting for the reply to DATA; none of it can be trusted."""
        self._send(421, "4.5.0", "Improper use of SMTP command pipelining, closing connection")
        self._close()

    def _close(self) -> None:
        self._state = _State.CLOSED
        self._input.clear()

    # --- commands -------------------------------------------------------------------------------------

    def _command_step(self) -> bool:
        line = self._input.read_line()
        if line is None:
            return False
        if isinstance(line, LineTooLong):
            self._send(500, "5.5.6", "Line too long")
        else:
            self._command(line)
        if self._state is not _State.CLOSED and self._errors > self.settings.max_errors:
            self._send(421, "4.7.0", "Too many errors, closing connection")
            self._close()
        return True

    def _command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        handler = _HANDLERS.get(verb.upper())
        if handler is None:
            if verb.upper() in _NOT_OFFERED:
                self._send(502, "5.5.1", "Command not implemented")
            else:
                self._send(500, "5.5.2", "Command unrecognized")
            return
        handler(self, arg.strip(b" "))

    def _do_helo(self, arg: bytes) -> None:
        self._hello_command(arg, extended=False, lmtp_verb=False)

    def _do_ehlo(self, arg: bytes) -> None:
        self._hello_command(arg, extended=True, lmtp_verb=False)

    def _do_lhlo(self, arg: bytes) -> None:
        self._hello_command(arg, extended=True, lmtp_verb=True)

    def _hello_command(self, arg: bytes, *, extended: bool, lmtp_verb: bool) -> None:
        if lmtp_verb != self.settings.lmtp:
            text = "Use LHLO" if self.settings.lmtp else "Command unrecognized"
            self._send(500, "5.5.1" if self.settings.lmtp else "5.5.2", text)
            return
        name = arg.split(b" ", 1)[0]
        if not name or any(b < 0x21 or b > 0x7E for b in name):
            self._send(501, "5.5.4", "Syntax: EHLO hostname")
            return
        self._hello = name.decode("ascii")
        self._extended = extended
        self._txn = _Transaction()
        self._events.append(Hello(self._hello, extended))
        if not extended:
            self._output += bare_reply(250, [self._hostname_bytes()])
            return
        lines = [
            self._hostname_bytes(),
            b"PIPELINING",
            b"SIZE %d" % self.settings.max_message_size,
            b"8BITMIME",
            b"SMTPUTF8",
            b"DSN",
            b"ENHANCEDSTATUSCODES",
        ]
        if self.settings.xforward:
            lines.insert(-1, _XFORWARD_OFFER)
        self._output += bare_reply(250, lines)

    def _do_mail(self, arg: bytes) -> None:
        if self._hello is None:
            self._send(503, "5.5.1", f"Send {'LHLO' if self.settings.lmtp else 'HELO/EHLO'} first")
            return
        if self._txn.sender is not None:
            self._send(503, "5.5.1", "Nested MAIL command")
            return
        parsed = parse_mail(
            arg,
            extended=self._extended,
            max_length=self.settings.max_address_length,
            max_message_size=self.settings.max_message_size,
        )
        if isinstance(parsed, ArgumentError):
            self._send(parsed.code, parsed.status, parsed.text)
            return
        self._txn.sender = parsed.sender
        self._txn.mail_params = parsed.params
        self._events.append(MailFrom(parsed.sender, parsed.params))
        self._send(250, "2.1.0", "Ok")

    def _do_rcpt(self, arg: bytes) -> None:
        if self._txn.sender is None:
            self._send(503, "5.5.1", "Need MAIL command")
            return
        if len(self._txn.recipients) >= self.settings.max_recipients:
            self._send(452, "4.5.3", "Too many recipients")
            return
        parsed = parse_rcpt(
            arg,
            extended=self._extended,
            max_length=self.settings.max_address_length,
            smtputf8=("SMTPUTF8", None) in self._txn.mail_params,
        )
        if isinstance(parsed, ArgumentError):
            self._send(parsed.code, parsed.status, parsed.text)
            return
        self._txn.recipients.append((parsed.recipient, parsed.params))
        self._events.append(RcptTo(parsed.recipient, parsed.params))
        self._send(250, "2.1.5", "Ok")

    def _do_data(self, arg: bytes) -> None:
        if arg:
            self._send(501, "5.5.4", "Syntax: DATA")
        elif self._txn.sender is None:
            self._send(503, "5.5.1", "Need MAIL command")
        elif not self._txn.recipients:
            self._send(554, "5.5.1", "No valid recipients")
        else:
            # Input after this line waits in the buffer, neither content nor command, until the decision.
            self._state = _State.DATA_PENDING
            self._events.append(DataStart())

    def _do_xforward(self, arg: bytes) -> None:
        if not self.settings.xforward:
            # Postfix's smtpd to a host not in smtpd_authorized_xforward_hosts, word for word.
            self._send_row(Row.XFORWARD_NOT_AUTHORIZED)
        elif not self._extended:
            # The client may send it once the EHLO (LHLO) reply offered it.
            self._send(503, "5.5.1", f"Send {'LHLO' if self.settings.lmtp else 'EHLO'} first")
        elif self._txn.sender is not None:
            self._send(503, "5.5.1", "Mail transaction in progress")
        else:
            parsed = parse_xforward(arg)
            if isinstance(parsed, ArgumentError):
                self._send(parsed.code, parsed.status, parsed.text)
                return
            self._txn.xforward.update(parsed)
            self._send(250, "2.0.0", "Ok")

    def _do_rset(self, arg: bytes) -> None:
        self._txn = _Transaction()
        self._send(250, "2.0.0", "Ok")

    def _do_noop(self, arg: bytes) -> None:
        self._send(250, "2.0.0", "Ok")

    def _do_vrfy(self, arg: bytes) -> None:
        self._send(252, "2.5.2", "Cannot VRFY user, but will accept message")

    def _do_help(self, arg: bytes) -> None:
        self._send(214, "2.0.0", "qsift content filter; see RFC 5321")

    def _do_quit(self, arg: bytes) -> None:
        self._send(221, "2.0.0", "Bye")
        self._events.append(Quit())
        self._close()

    # --- the message body -----------------------------------------------------------------------------

    def _data_step(self) -> bool:
        read = self._input.read_body()
        self._add_body(read.data)
        if read.ended:
            txn = self._txn
            self._events.append(
                DataEnd(
                    txn.sender or b"",
                    txn.recipients,
                    txn.mail_params,
                    txn.size,
                    txn.too_big,
                    dict(txn.xforward),
                )
            )
            self._state = _State.PAUSED
        return read.consumed

    def _add_body(self, body: bytes) -> None:
        if not body:
            return
        txn = self._txn
        txn.size += len(body)
        if txn.size > self.settings.max_message_size:
            txn.too_big = True
        if not txn.too_big:
            self._events.append(DataChunk(body))


#: States where the connection waits for the application and reads no input.
_WAITING = frozenset({_State.DATA_PENDING, _State.PAUSED})

_HANDLERS: dict[bytes, Callable[[SmtpServerConnection, bytes], None]] = {
    b"HELO": SmtpServerConnection._do_helo,
    b"EHLO": SmtpServerConnection._do_ehlo,
    b"LHLO": SmtpServerConnection._do_lhlo,
    b"MAIL": SmtpServerConnection._do_mail,
    b"RCPT": SmtpServerConnection._do_rcpt,
    b"DATA": SmtpServerConnection._do_data,
    b"RSET": SmtpServerConnection._do_rset,
    b"NOOP": SmtpServerConnection._do_noop,
    b"VRFY": SmtpServerConnection._do_vrfy,
    b"HELP": SmtpServerConnection._do_help,
    b"QUIT": SmtpServerConnection._do_quit,
    b"XFORWARD": SmtpServerConnection._do_xforward,
}

#: Known verbs qsift does not offer: refused with 502, not the 500 of nonsense.
_NOT_OFFERED = frozenset({b"EXPN", b"STARTTLS", b"AUTH", b"BDAT", b"ETRN", b"TURN", b"ATRN", b"XCLIENT"})
