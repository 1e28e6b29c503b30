"""The client side of an SMTP or LMTP session that carries one message, sans-IO, in the manner of h11.

The forwarder (act/smtp_forward.py) asks `next_event` what to do and does it: send bytes, read one reply
and hand it to `receive_reply`, send the message body, tell who the message was taken for, close. The
dialogue never touches a socket, a clock or the spool; each event names which of the forwarder's timeouts
bounds it (`Wait`). smtp_client supplies the command lines and reads the replies.

The order kept, each step a rule whose breach costs mail:
- The greeting; EHLO, or LHLO for LMTP; HELO for an SMTP server that knows no ESMTP (RFC 5321 §3.2).
- Per transaction: XFORWARD when offered, then MAIL, the RCPTs and DATA, in one write when the server
  offers PIPELINING (RFC 2920), each after the reply to the last otherwise.
- Recipients answered 452 after another was accepted have met the server's limit (RFC 5321 §4.5.3.1.10)
  and go in the next transaction on the same connection, as do those past our own limit per transaction.
- No recipient accepted: RSET, after an empty message should a pipelined DATA have been answered 354.
  DATA refused: RSET. Otherwise the body, then one final reply (SMTP), or one per accepted recipient in
  RCPT order (LMTP, RFC 2033 §4.2).
- QUIT, once every recipient is answered; or, for a session the forwarder keeps for the next message,
  nothing: a session it takes up again (`greeted`) starts at the next transaction, its server's
  extensions known from the EHLO that opened it.

The dialogue is a generator: the order reads top to bottom as in the RFCs, and where it stands is its
state. An answer it must make itself (a refused greeting, an address no command line can carry) is a
`Reply` from the answer table; what the transport does wrong is the forwarder's to answer (`abort`).
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import TypeVar

from qsift.answers import Row
from qsift.model import Answer, Envelope, RecipientResult, Reply, address_bytes, reply_from_smtp
from qsift.wire.smtp_client import (
    DATA,
    QUIT,
    RSET,
    Capabilities,
    SmtpReply,
    UnsupportedByServer,
    hello,
    mail_from,
    rcpt_to,
    xforward,
)

__all__ = [
    "AwaitReply",
    "Done",
    "Event",
    "MessageTaken",
    "Send",
    "SendBody",
    "SmtpClientDialogue",
    "Wait",
    "XforwardRefused",
]


class Wait(enum.Enum):
    """Which of the forwarder's timeouts bounds a step (RFC 5321 §4.5.3.2 names one per step)."""

    COMMAND = enum.auto()
    DATA_BLOCK = enum.auto()
    FINAL_REPLY = enum.auto()
    #: QUIT, when every answer is known: a server slow to say goodbye must not hold up the answer.
    GOODBYE = enum.auto()


@dataclass(frozen=True)
class Send:
    """Send these bytes."""

    data: bytes
    wait: Wait = Wait.COMMAND


@dataclass(frozen=True)
class AwaitReply:
    """Read one reply and hand it to `receive_reply`; `waiting_for` names what it answers, for the logs."""

    waiting_for: str
    wait: Wait = Wait.COMMAND


@dataclass(frozen=True)
class SendBody:
    """Send the message, dot-stuffed, and the final dot (smtp_data.DataEncoder)."""

    wait: Wait = Wait.DATA_BLOCK


@dataclass(frozen=True)
class XforwardRefused:
    """The server refused XFORWARD; the message goes on without it, which is worth a warning."""

    reply: SmtpReply


@dataclass(frozen=True)
class MessageTaken:
    """A transaction's final replies are in: the downstream took the message for these recipients."""

    taken: tuple[RecipientResult, ...]


@dataclass(frozen=True)
class Done:
    """The session is over: close the connection; `per_recipient` holds every answer."""


Event = Send | AwaitReply | SendBody | XforwardRefused | MessageTaken | Done

_T = TypeVar("_T")
#: What the dialogue's steps yield, are sent (a reply, after an AwaitReply) and return.
_Steps = Generator[Event, SmtpReply | None, _T]


class SmtpClientDialogue:
    """One session with the downstream MTA, carrying one message in as many transactions as it takes."""

    def __init__(
        self,
        envelope: Envelope,
        *,
        size: int,
        lmtp: bool,
        helo_name: str,
        where: str,
        max_recipients_per_transaction: int = 1000,
        greeted: Capabilities | None = None,
        quit: bool = True,
    ) -> None:
        """`greeted`: the session is one kept from an earlier message, past its greeting and EHLO, with
        these extensions. `quit`: end with QUIT; without it a session that went well stays open."""
        self._envelope = envelope
        self._size = size
        self._lmtp = lmtp
        self._helo_name = helo_name
        #: The downstream as configured ("smtp:[127.0.0.1]:10025"), named in every answer it caused.
        self._where = where
        self._per_transaction = max(1, max_recipients_per_transaction)
        self._greeted = greeted is not None
        self._caps = greeted or Capabilities.basic()
        self._quit = quit
        #: The session went to its end without a refusal of the session or an abort.
        self._whole = False
        self._results: dict[int, Reply] = {}
        #: The recipients refused here, unasked, because no command line can carry their address.
        self._refused_here: set[int] = set()
        #: The downstream's own words on the first acceptance, e.g. "250 2.0.0 Ok: queued as 4Xyz".
        self.queued_as: str | None = None
        self._steps = self._session()
        self._event: Event | None = None
        self._reply: SmtpReply | None = None

    # --- the interface --------------------------------------------------------------------------------

    def next_event(self) -> Event:
        """What to do next: the same AwaitReply until `receive_reply`, and Done once the session is over."""
        if isinstance(self._event, AwaitReply) and self._reply is None:
            return self._event
        reply, self._reply = self._reply, None
        try:
            self._event = self._steps.send(reply)
        except StopIteration:
            self._event = Done()
        return self._event

    def receive_reply(self, reply: SmtpReply) -> None:
        if not isinstance(self._event, AwaitReply) or self._reply is not None:
            raise RuntimeError(f"no reply is awaited; the last event was {self._event!r}")
        self._reply = reply

    def abort(self, reply: Reply) -> None:
        """The session broke off (connection lost, timeout, the client gone): `reply` for every
        recipient not yet answered, and Done from now on."""
        self._steps.close()
        self._event = Done()
        self._answer_the_rest(reply)

    @property
    def capabilities(self) -> Capabilities:
        """The server's extensions as known now (XFORWARD dropped once the server refused it)."""
        return self._caps

    @property
    def reusable(self) -> bool:
        """Done without QUIT, and nothing went wrong with the session itself: it may carry another
        message (after an RSET to check it is still there)."""
        return self._whole and not self._quit

    def per_recipient(self) -> tuple[RecipientResult, ...]:
        """Each recipient's answer in envelope order; complete once Done came."""
        return tuple(
            RecipientResult(recipient, self._results[index], from_downstream=index not in self._refused_here)
            for index, recipient in enumerate(self._envelope.recipients)
        )

    # --- the session ----------------------------------------------------------------------------------

    def _session(self) -> _Steps[None]:
        refusal = None if self._greeted else (yield from self._greeting_and_hello())
        if refusal is not None:
            self._answer_the_rest(refusal)
            return
        pending = list(range(len(self._envelope.recipients)))
        while pending:
            batch, rest = pending[: self._per_transaction], pending[self._per_transaction :]
            deferred = yield from self._transaction(batch)
            pending = deferred + rest
        self._whole = True
        if self._quit:
            yield Send(QUIT, Wait.GOODBYE)
            yield from self._await("QUIT", Wait.GOODBYE)

    def _await(self, waiting_for: str, wait: Wait = Wait.COMMAND) -> _Steps[SmtpReply]:
        reply = yield AwaitReply(waiting_for, wait)
        assert reply is not None, "next_event sends a reply after every AwaitReply"
        return reply

    def _greeting_and_hello(self) -> _Steps[Reply | None]:
        """None when the session may go on, else the answer for every recipient."""
        greeting = yield from self._await("the greeting")
        if greeting.code != 220:
            return self._refused(greeting, "connection")
        yield Send(hello(self._helo_name, lmtp=self._lmtp))
        reply = yield from self._await("EHLO")
        if reply.positive:
            self._caps = Capabilities.from_ehlo(reply)
            return None
        if self._lmtp or reply.code in (421, 554):
            return self._refused(reply, "LHLO" if self._lmtp else "EHLO")
        yield Send(hello(self._helo_name, lmtp=False, extended=False))
        reply = yield from self._await("HELO")
        return None if reply.positive else self._refused(reply, "HELO")

    def _transaction(self, batch: list[int]) -> _Steps[list[int]]:
        """One MAIL..DATA transaction; returns the recipients deferred by 452 to the next one."""
        mail, rcpts = self._commands(batch)
        if not rcpts:
            return []
        yield from self._xforward()
        pipelined = self._caps.pipelining
        yield Send(mail + b"".join(r for _, r in rcpts) + DATA if pipelined else mail)
        mail_reply = yield from self._await("MAIL FROM")
        accepted, deferred = yield from self._recipients(rcpts, mail_reply, pipelined)
        if not accepted:
            yield from self._abandon(pipelined)
            return []
        if not pipelined:
            yield Send(DATA)
        yield from self._message(accepted)
        return deferred

    def _recipients(
        self, rcpts: list[tuple[int, bytes]], mail_reply: SmtpReply, pipelined: bool
    ) -> _Steps[tuple[list[int], list[int]]]:
        """The RCPTs' replies (and, unpipelined, the RCPTs): who was accepted, who deferred by 452."""
        accepted: list[int] = []
        deferred: list[int] = []
        for index, rcpt in rcpts:
            if not mail_reply.positive and not pipelined:
                self._results[index] = self._not_positive(mail_reply)
                continue
            if not pipelined:
                yield Send(rcpt)
            reply = yield from self._await("RCPT TO")
            if not mail_reply.positive:
                self._results[index] = self._not_positive(mail_reply)
            elif reply.positive:
                accepted.append(index)
            elif reply.code == 452 and accepted:
                deferred.append(index)  # the server's recipient limit: RFC 5321 §4.5.3.1.10
            else:
                self._results[index] = self._not_positive(reply)
        return accepted, deferred

    def _commands(self, batch: list[int]) -> tuple[bytes, list[tuple[int, bytes]]]:
        """MAIL and the RCPTs; a recipient that cannot be sent at all is answered here, permanently."""
        envelope = self._envelope
        sender = address_bytes(envelope.sender)
        addresses = [address_bytes(envelope.recipients[i].address) for i in batch]
        needs_utf8 = any(not a.isascii() for a in [sender, *addresses])
        try:
            mail = mail_from(sender, envelope.mail_params, self._caps, size=self._size, smtputf8=needs_utf8)
        except UnsupportedByServer:
            self._refuse_here(batch, Row.NO_SMTPUTF8_DOWNSTREAM.reply(where=self._where))
            return b"", []
        except ValueError as exc:
            self._refuse_here(batch, Row.SENDER_NOT_FORWARDABLE.reply(error=exc))
            return b"", []
        rcpts: list[tuple[int, bytes]] = []
        for index, address in zip(batch, addresses, strict=True):
            try:
                rcpts.append((index, rcpt_to(address, envelope.recipients[index].params, self._caps)))
            except ValueError as exc:
                self._refuse_here([index], Row.RECIPIENT_NOT_FORWARDABLE.reply(error=exc))
        return mail, rcpts

    def _refuse_here(self, batch: list[int], reply: Reply) -> None:
        for index in batch:
            self._results[index] = reply
        self._refused_here.update(batch)

    def _xforward(self) -> _Steps[None]:
        """Name the client to a server that takes XFORWARD; it forgets at the end of each transaction
        (XFORWARD_README), so this comes before every MAIL."""
        envelope = self._envelope
        if not self._caps.xforward or envelope.client_address is None:
            return
        attributes = {
            "ADDR": envelope.client_address,
            "NAME": envelope.client_name,
            "HELO": envelope.helo,
            "PROTO": envelope.protocol,
        }
        if envelope.ident is not None:
            attributes["IDENT"] = envelope.ident
        for command in xforward(attributes, self._caps.xforward):
            yield Send(command)
            reply = yield from self._await("XFORWARD")
            if not reply.positive:
                # Information only: the message goes on without it, in this transaction and the next.
                self._caps = replace(self._caps, xforward=frozenset())
                yield XforwardRefused(reply)
                return

    def _abandon(self, pipelined: bool) -> _Steps[None]:
        """No recipient was accepted: close the transaction without a message."""
        if pipelined:
            data_reply = yield from self._await("DATA")
            if data_reply.code == 354:
                # A server that accepts DATA with no recipient (RFC 2920 §3.1 forbids it): send an
                # empty message, which it has nobody to deliver to.
                yield Send(b".\r\n")
                yield from self._await("the final dot", Wait.FINAL_REPLY)
        yield Send(RSET)
        yield from self._await("RSET")

    def _message(self, accepted: list[int]) -> _Steps[None]:
        """DATA's reply, then the body and the final replies, or RSET when DATA is refused."""
        data_reply = yield from self._await("DATA")
        if data_reply.code != 354:
            for index in accepted:
                self._results[index] = self._not_positive(data_reply)
            yield Send(RSET)
            yield from self._await("RSET")
            return
        yield SendBody()
        yield from self._final_replies(accepted)
        recipients = self._envelope.recipients
        taken = tuple(
            RecipientResult(recipients[index], self._results[index])
            for index in accepted
            if self._results[index].answer is Answer.ACCEPT
        )
        if taken:
            yield MessageTaken(taken)

    def _final_replies(self, accepted: list[int]) -> _Steps[None]:
        if not self._lmtp:
            reply = yield from self._await("the final dot", Wait.FINAL_REPLY)
            for index in accepted:
                self._results[index] = self._final(reply)
            return
        for index in accepted:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            reply = yield from self._await("the final dot", Wait.FINAL_REPLY)
            self._results[index] = self._final(reply)

    # --- the answers ----------------------------------------------------------------------------------

    def _answer_the_rest(self, reply: Reply) -> None:
        for index in range(len(self._envelope.recipients)):
            self._results.setdefault(index, reply)

    def _final(self, reply: SmtpReply) -> Reply:
        if not reply.positive:
            return self._not_positive(reply)
        if self.queued_as is None:
            self.queued_as = reply.line()
        return reply_from_smtp(reply.code, reply.text)

    def _not_positive(self, reply: SmtpReply) -> Reply:
        if reply.positive or not (reply.transient or reply.permanent):
            # A 2xx/3xx where a refusal was due cannot be trusted either way.
            return self._trouble("4.5.0", f"unexpected reply {reply.line()}")
        said = reply_from_smtp(reply.code, reply.text)
        return replace(said, text=f"{said.text} ({self._where})")

    def _refused(self, reply: SmtpReply, step: str) -> Reply:
        """A reply that ends the session before any recipient: always temporary (a broken or busy
        downstream, or our own misconfiguration, must never bounce mail)."""
        answer = reply_from_smtp(reply.code, reply.text)
        status = answer.enhanced_status if answer.enhanced_status.startswith("4") else "4.4.2"
        return self._trouble(status, f"{step} refused: {reply.line()}")

    def _trouble(self, status: str, text: str) -> Reply:
        return Row.DOWNSTREAM_TROUBLE.relay(451, status, text=text, where=self._where)
