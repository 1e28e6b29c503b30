"""Hand a message to the downstream MTA over SMTP or LMTP and learn, per recipient, what became of it.

amavisd-new's `$forward_method`: `smtp:[127.0.0.1]:10025` (Postfix's re-injection port, or the HOWTO's
second qmail-smtpd) or `lmtp:[host]:port` / `lmtp:unix:/path` (a delivery agent such as Dovecot or
Cyrus, which answers each recipient after the final dot, RFC 2033 §4.2).

Rules this module keeps, because each one costs mail when broken:
- Every failure (refused connection, timeout, lost connection, garbage) becomes a temporary failure for
  each recipient not yet answered, so the sending side keeps the message and retries.
- The dot is sent only if the client that gave us the message is still there. Once the dot is out, a lost
  reply is still a temporary failure; the retry may then duplicate the message, which SMTP cannot avoid
  (RFC 1047) and which is better than losing it.
- Recipients past the server's limit (452 4.5.3) go in a further transaction on the same connection.
- The client the message came from goes with it by XFORWARD when the server offers it (Postfix, to its
  smtpd_authorized_xforward_hosts), as amavisd-new does, so the re-injecting MTA logs and judges the real
  client rather than qsift. It is information only: a server refusing it does not stop the message.
- One connection per message. A pool would save a TCP handshake and a greeting on loopback, some tens of
  microseconds against the milliseconds a message costs; bench/passthrough.py measures the whole path.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace

from qsift.answers import Row
from qsift.errors import ConfigError, ProtocolError
from qsift.model import (
    Answer,
    Delivered,
    Envelope,
    ForwardResult,
    RecipientResult,
    Reply,
    address_bytes,
    reply_from_smtp,
)
from qsift.observe.log import logger
from qsift.spool import MessageBody
from qsift.wire import smtp_client as wire
from qsift.wire.smtp_data import DataEncoder


@dataclass(frozen=True)
class SmtpTarget:
    """Where the forward connects: a TCP host and port or a unix socket path."""

    lmtp: bool
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def describe(self) -> str:
        scheme = "lmtp" if self.lmtp else "smtp"
        if self.path is not None:
            return f"{scheme}:unix:{self.path}"
        return f"{scheme}:[{self.host}]:{self.port}"


def parse_forward_method(method: str) -> SmtpTarget:
    """`smtp:[host]:port`, `smtp:host:port`, `lmtp:[host]:port`, `lmtp:unix:/path` (amavisd-new syntax)."""
    scheme, _, rest = method.partition(":")
    if scheme not in ("smtp", "lmtp"):
        raise ConfigError(f"forward method {method!r}: expected smtp:, lmtp:, qmail-queue: or maildir:")
    lmtp = scheme == "lmtp"
    if rest.startswith("unix:"):
        path = rest[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(f"forward method {method!r}: the socket path must be absolute")
        return SmtpTarget(lmtp, path=path)
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ConfigError(f"forward method {method!r}: expected [host]:port")
        port_text = port_text[1:]
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ConfigError(f"forward method {method!r}: no host")
    if not port_text:
        return SmtpTarget(lmtp, host=host, port=24 if lmtp else 25)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"forward method {method!r}: bad port {port_text!r}")
    return SmtpTarget(lmtp, host=host, port=int(port_text))


@dataclass(frozen=True)
class SmtpTimeouts:
    """Seconds to wait at each step; RFC 5321 §4.5.3.2 gives 5/5/3/10 minutes as the client's minimum."""

    connect: float = 10.0
    command: float = 60.0
    data_block: float = 180.0
    final_reply: float = 600.0


#: Longest wait for the reply to QUIT, in seconds.
_QUIT_WAIT = 2.0


class _Failed(Exception):
    """The session cannot go on; every recipient still unanswered gets `reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


async def forward_via_smtp(
    target: SmtpTarget,
    envelope: Envelope,
    spool: MessageBody,
    *,
    helo_name: str,
    timeouts: SmtpTimeouts,
    max_recipients_per_transaction: int = 1000,
    client_gone: asyncio.Event | None = None,
    delivered: Delivered | None = None,
) -> ForwardResult:
    """Deliver to every envelope recipient; never raises for anything the downstream does. `delivered`
    hears of each transaction's accepted recipients right after the final reply, before QUIT."""
    session = _Session(target, envelope, spool, helo_name, timeouts, client_gone, delivered)
    recipients = envelope.recipients
    try:
        await session.connect()
    except _Failed as exc:
        return ForwardResult(target.describe(), tuple(RecipientResult(r, exc.reply) for r in recipients))
    try:
        await session.run(max(1, max_recipients_per_transaction))
    except _Failed as exc:
        for index in range(len(recipients)):
            session.results.setdefault(index, exc.reply)
    finally:
        await session.close()
    per_recipient = tuple(
        RecipientResult(r, session.results[i], from_downstream=i not in session.refused_here)
        for i, r in enumerate(recipients)
    )
    return ForwardResult(target.describe(), per_recipient, session.queued_as)


class _Session:
    """One connection to the downstream MTA, carrying one message in one or more transactions."""

    def __init__(
        self,
        target: SmtpTarget,
        envelope: Envelope,
        spool: MessageBody,
        helo_name: str,
        timeouts: SmtpTimeouts,
        client_gone: asyncio.Event | None,
        delivered: Delivered | None = None,
    ) -> None:
        self.target = target
        self.envelope = envelope
        self.spool = spool
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.client_gone = client_gone
        self.delivered = delivered
        self.results: dict[int, Reply] = {}
        #: The recipients qsift refused without asking the downstream (addresses it cannot send).
        self.refused_here: set[int] = set()
        self.queued_as: str | None = None
        self.where = target.describe()
        self.parser = wire.ReplyParser()
        self.caps = wire.Capabilities.basic()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    # --- the connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        target = self.target
        try:
            if target.path is not None:
                opening = asyncio.open_unix_connection(target.path)
            else:
                opening = asyncio.open_connection(target.host, target.port)
            self.reader, self.writer = await asyncio.wait_for(opening, self.timeouts.connect)
        except TimeoutError:
            raise _Failed(self._tempfail("4.4.1", "connect timed out")) from None
        except OSError as exc:
            raise _Failed(self._tempfail("4.4.1", f"cannot connect: {exc.strerror or exc}")) from None

    async def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def _tempfail(self, status: str, text: str) -> Reply:
        return Row.DOWNSTREAM_TROUBLE.relay(451, status, text=text, where=self.where)

    async def _send(self, data: bytes, seconds: float) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
            async with asyncio.timeout(seconds):
                await self.writer.drain()
        except TimeoutError:
            raise _Failed(self._tempfail("4.4.2", "timed out sending to the downstream MTA")) from None
        except (ConnectionError, OSError) as exc:
            raise _Failed(self._tempfail("4.4.2", f"connection lost: {exc}")) from None

    async def _reply(self, seconds: float, *, waiting_for: str) -> wire.SmtpReply:
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                reply = self.parser.next_reply()
            except ProtocolError as exc:
                raise _Failed(self._tempfail("4.5.0", f"unparseable reply to {waiting_for}: {exc}")) from None
            if reply is not None:
                return reply
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(65536)
            except TimeoutError:
                raise _Failed(
                    self._tempfail("4.4.2", f"timed out waiting for the reply to {waiting_for}")
                ) from None
            except (ConnectionError, OSError) as exc:
                raise _Failed(
                    self._tempfail("4.4.2", f"connection lost after {waiting_for}: {exc}")
                ) from None
            if not data:
                raise _Failed(self._tempfail("4.4.2", f"connection closed after {waiting_for}"))
            self.parser.receive_data(data)

    def _refused(self, reply: wire.SmtpReply, step: str) -> Reply:
        """A reply that ends the session before any recipient: always temporary (a broken or busy
        downstream, or our own misconfiguration, must never bounce mail)."""
        answer = reply_from_smtp(reply.code, reply.text)
        status = answer.enhanced_status if answer.enhanced_status.startswith("4") else "4.4.2"
        return self._tempfail(status, f"{step} refused: {reply.line()}")

    # --- the session ----------------------------------------------------------------------------------

    async def run(self, per_transaction: int) -> None:
        await self._greeting_and_hello()
        pending = list(range(len(self.envelope.recipients)))
        while pending:
            batch, rest = pending[:per_transaction], pending[per_transaction:]
            deferred = await self._transaction(batch)
            pending = deferred + rest
        with contextlib.suppress(_Failed):
            # Every result is known by now; a server slow to say goodbye must not hold up the answer.
            goodbye = min(self.timeouts.command, _QUIT_WAIT)
            await self._send(wire.QUIT, goodbye)
            await self._reply(goodbye, waiting_for="QUIT")

    async def _greeting_and_hello(self) -> None:
        greeting = await self._reply(self.timeouts.command, waiting_for="the greeting")
        if greeting.code != 220:
            raise _Failed(self._refused(greeting, "connection"))
        await self._send(wire.hello(self.helo_name, lmtp=self.target.lmtp), self.timeouts.command)
        reply = await self._reply(self.timeouts.command, waiting_for="EHLO")
        if reply.positive:
            self.caps = wire.Capabilities.from_ehlo(reply)
            return
        if self.target.lmtp or reply.code in (421, 554):
            raise _Failed(self._refused(reply, "LHLO" if self.target.lmtp else "EHLO"))
        # An SMTP server without ESMTP (RFC 5321 §3.2): say HELO and send nothing extended.
        await self._send(wire.hello(self.helo_name, lmtp=False, extended=False), self.timeouts.command)
        reply = await self._reply(self.timeouts.command, waiting_for="HELO")
        if not reply.positive:
            raise _Failed(self._refused(reply, "HELO"))

    def _commands(self, batch: list[int]) -> tuple[bytes, list[tuple[int, bytes]]]:
        """MAIL and the RCPTs; a recipient that cannot be sent at all is answered here, permanently."""
        envelope = self.envelope
        sender = address_bytes(envelope.sender)
        addresses = [address_bytes(envelope.recipients[i].address) for i in batch]
        needs_utf8 = any(not a.isascii() for a in [sender, *addresses])
        try:
            mail = wire.mail_from(
                sender, envelope.mail_params, self.caps, size=self.spool.size, smtputf8=needs_utf8
            )
        except wire.UnsupportedByServer:
            return self._refuse_all(batch, Row.NO_SMTPUTF8_DOWNSTREAM.reply(where=self.where))
        except ValueError as exc:
            return self._refuse_all(batch, Row.SENDER_NOT_FORWARDABLE.reply(error=exc))
        rcpts: list[tuple[int, bytes]] = []
        for index, address in zip(batch, addresses, strict=True):
            try:
                rcpts.append((index, wire.rcpt_to(address, envelope.recipients[index].params, self.caps)))
            except ValueError as exc:
                self.results[index] = Row.RECIPIENT_NOT_FORWARDABLE.reply(error=exc)
                self.refused_here.add(index)
        return (mail, rcpts) if rcpts else (b"", [])

    def _refuse_all(self, batch: list[int], reply: Reply) -> tuple[bytes, list[tuple[int, bytes]]]:
        for index in batch:
            self.results[index] = reply
        self.refused_here.update(batch)
        return b"", []

    async def _transaction(self, batch: list[int]) -> list[int]:
        """One MAIL..DATA transaction; returns the recipients deferred by 452 to the next one."""
        mail, rcpts = self._commands(batch)
        if not mail:
            return []
        command = self.timeouts.command
        await self._xforward()
        pipelined = self.caps.pipelining
        if pipelined:
            await self._send(mail + b"".join(r for _, r in rcpts) + wire.DATA, command)
        else:
            await self._send(mail, command)
        mail_reply = await self._reply(command, waiting_for="MAIL FROM")
        accepted: list[int] = []
        deferred: list[int] = []
        for index, rcpt in rcpts:
            if not mail_reply.positive and not pipelined:
                self.results[index] = self._not_positive(mail_reply)
                continue
            if not pipelined:
                await self._send(rcpt, command)
            reply = await self._reply(command, waiting_for="RCPT TO")
            if not mail_reply.positive:
                self.results[index] = self._not_positive(mail_reply)
            elif reply.positive:
                accepted.append(index)
            elif reply.code == 452 and accepted:
                deferred.append(index)  # the server's recipient limit: RFC 5321 §4.5.3.1.10
            else:
                self.results[index] = self._not_positive(reply)
        if accepted and not pipelined:
            await self._send(wire.DATA, command)
        if not accepted:
            await self._abandon(pipelined)
            return []
        data_reply = await self._reply(command, waiting_for="DATA")
        if data_reply.code != 354:
            for index in accepted:
                self.results[index] = self._not_positive(data_reply)
            await self._send(wire.RSET, command)
            await self._reply(command, waiting_for="RSET")
            return deferred
        await self._send_body()
        await self._final_replies(accepted)
        await self._tell_delivered(accepted)
        return deferred

    async def _tell_delivered(self, accepted: list[int]) -> None:
        taken = tuple(
            RecipientResult(self.envelope.recipients[index], self.results[index])
            for index in accepted
            if self.results[index].answer is Answer.ACCEPT
        )
        if taken and self.delivered is not None:
            await self.delivered(taken)

    async def _xforward(self) -> None:
        """Name the client to a server that takes XFORWARD; it forgets at the end of each transaction
        (XFORWARD_README), so this comes before every MAIL."""
        envelope = self.envelope
        if not self.caps.xforward or envelope.client_address is None:
            return
        attributes = {
            "ADDR": envelope.client_address,
            "NAME": envelope.client_name,
            "HELO": envelope.helo,
            "PROTO": envelope.protocol,
        }
        if envelope.ident is not None:
            attributes["IDENT"] = envelope.ident
        for command in wire.xforward(attributes, self.caps.xforward):
            await self._send(command, self.timeouts.command)
            reply = await self._reply(self.timeouts.command, waiting_for="XFORWARD")
            if not reply.positive:
                logger.warning("%s refused XFORWARD: %s; forwarding without it", self.where, reply.line())
                self.caps = replace(self.caps, xforward=frozenset())
                return

    def _not_positive(self, reply: wire.SmtpReply) -> Reply:
        if reply.positive or not (reply.transient or reply.permanent):
            # A 2xx/3xx where a refusal was due cannot be trusted either way.
            return self._tempfail("4.5.0", f"unexpected reply {reply.line()}")
        said = reply_from_smtp(reply.code, reply.text)
        return replace(said, text=f"{said.text} ({self.where})")

    async def _abandon(self, pipelined: bool) -> None:
        """No recipient was accepted: close the transaction without a message."""
        command = self.timeouts.command
        if pipelined:
            data_reply = await self._reply(command, waiting_for="DATA")
            if data_reply.code == 354:
                # A server that accepts DATA with no recipient (RFC 2920 §3.1 forbids it): send an
                # empty message, which it has nobody to deliver to.
                await self._send(b".\r\n", command)
                await self._reply(self.timeouts.final_reply, waiting_for="the final dot")
        await self._send(wire.RSET, command)
        await self._reply(command, waiting_for="RSET")

    async def _send_body(self) -> None:
        encoder = DataEncoder()
        held = b""
        for chunk in self.spool.chunks():
            # One chunk is held back so the last one leaves with the dot in a single write.
            if held:
                self._check_client()
                await self._send(held, self.timeouts.data_block)
            held = encoder.encode(chunk)
        self._check_client()
        await self._send(held + encoder.finish(), self.timeouts.data_block)

    def _check_client(self) -> None:
        if self.client_gone is not None and self.client_gone.is_set():
            # Without the dot the downstream drops the message, and the client, which heard nothing,
            # sends it again: one delivery in the end. With it, the retry would be a duplicate.
            raise _Failed(self._tempfail("4.4.2", "client went away before the message was complete"))

    async def _final_replies(self, accepted: list[int]) -> None:
        final = self.timeouts.final_reply
        if not self.target.lmtp:
            reply = await self._reply(final, waiting_for="the final dot")
            for index in accepted:
                self.results[index] = self._final(reply)
            return
        for index in accepted:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            self.results[index] = self._final(await self._reply(final, waiting_for="the final dot"))

    def _final(self, reply: wire.SmtpReply) -> Reply:
        if not reply.positive:
            return self._not_positive(reply)
        if self.queued_as is None:
            self.queued_as = reply.line()
        return reply_from_smtp(reply.code, reply.text)
