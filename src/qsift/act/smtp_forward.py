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
- A session that carried a message well may carry the next one (`IdleSessions`, a few per worker, each
  closed after `IDLE_SECONDS` unused). Before it does, RSET must be answered 250: a session the server
  closed or broke while idle (Postfix's smtpd_timeout, a 421) is dropped and the next one tried, or a
  new connection opened, all before any of the message was sent; from then on it is any connection.
  It saves the connect, the greeting, EHLO and QUIT: about 0.6 ms of qsift's CPU a message on
  bench/passthrough.py, and half the sink's (docs/benchmarks.md).

The order of the dialogue (EHLO or HELO, XFORWARD, pipelining, 452, LMTP's replies) is kept by the
sans-IO wire/smtp_dialogue; this module is the I/O shell around it: the connection, the timeout each
step names, the body, the client's departure and the `delivered` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import assert_never

from qsift.answers import Row
from qsift.errors import ConfigError, ProtocolError
from qsift.model import Delivered, Envelope, ForwardResult, Reply
from qsift.observe.log import logger
from qsift.spool import MessageBody
from qsift.wire.smtp_client import QUIT, RSET, Capabilities, ReplyParser, SmtpReply
from qsift.wire.smtp_data import DataEncoder
from qsift.wire.smtp_dialogue import (
    AwaitReply,
    Done,
    MessageTaken,
    Send,
    SendBody,
    SmtpClientDialogue,
    Wait,
    XforwardRefused,
)


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


#: Longest wait for the reply to QUIT, in seconds.
_QUIT_WAIT = 2.0
#: Longest wait for the reply to the RSET that checks a kept session, in seconds; a server slower than
#: that costs only a new connection.
_CHECK_WAIT = 5.0
#: Seconds a kept session may stay unused before it is closed: well under the servers' idle timeouts
#: (Postfix 300 s, 10 s under stress; qmail-smtpd 1200 s), and a forking server under tcpserver holds
#: one of its -c slots for each.
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class SmtpTimeouts:
    """Seconds to wait at each step; RFC 5321 §4.5.3.2 gives 5/5/3/10 minutes as the client's minimum."""

    connect: float = 10.0
    command: float = 60.0
    data_block: float = 180.0
    final_reply: float = 600.0

    def seconds(self, wait: Wait) -> float:
        """The timeout for a step of the dialogue."""
        match wait:
            case Wait.COMMAND:
                return self.command
            case Wait.DATA_BLOCK:
                return self.data_block
            case Wait.FINAL_REPLY:
                return self.final_reply
            case Wait.GOODBYE:
                return min(self.command, _QUIT_WAIT)
            case _:
                assert_never(wait)


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
    sessions: IdleSessions | None = None,
) -> ForwardResult:
    """Deliver to every envelope recipient; never raises for anything the downstream does. `delivered`
    hears of each transaction's accepted recipients right after the final reply, before QUIT. With
    `sessions`, a kept session is used if one is still there, and the session is kept afterwards."""
    where = target.describe()
    kept = await sessions.take() if sessions is not None else None
    connection = kept or _Connection(where, timeouts)
    if sessions is not None and kept is None:
        sessions.opening.add(connection)
    dialogue = SmtpClientDialogue(
        envelope,
        size=spool.size,
        lmtp=target.lmtp,
        helo_name=helo_name,
        where=where,
        max_recipients_per_transaction=max_recipients_per_transaction,
        greeted=connection.capabilities if kept is not None else None,
        quit=sessions is None,
    )
    try:
        if kept is None:
            await connection.open(target)
        await _converse(dialogue, connection, spool, client_gone, delivered)
    except _Failed as exc:
        dialogue.abort(exc.reply)
    finally:
        if sessions is not None:
            sessions.opening.discard(connection)
        if sessions is not None and dialogue.reusable and not connection.parser.buffered:
            connection.capabilities = dialogue.capabilities
            sessions.keep(connection)
        else:
            await connection.close()
    return ForwardResult(where, dialogue.per_recipient(), dialogue.queued_as)


class IdleSessions:
    """Sessions to one downstream kept open between messages, at most `most` of them, each closed with
    QUIT after IDLE_SECONDS unused; one set per worker process, used only from its event loop.

    A session is not kept while a new connection of ours waits for its greeting: the server may be
    serving as many connections as it will (tcpserver -c, Postfix's process limit), and the one kept
    would hold the slot the new one waits for (the HOWTO's re-injection deadlock, in small)."""

    def __init__(self, most: int) -> None:
        self.most = most
        #: The most recently kept last: it is the least likely to have been closed by the server.
        self._idle: list[tuple[_Connection, asyncio.TimerHandle]] = []
        #: New connections carrying a message now; those not yet greeted stop a session being kept.
        self.opening: set[_Connection] = set()

    async def take(self) -> _Connection | None:
        """A kept session whose server still answers RSET with 250, or None."""
        while self._idle:
            connection, expiry = self._idle.pop()
            expiry.cancel()
            try:
                there = await connection.still_there()
            except BaseException:  # cancelled meanwhile: the session must not be left unclosed
                connection.goodbye()
                raise
            if there:
                return connection
            await connection.close()
        return None

    def keep(self, connection: _Connection) -> None:
        if len(self._idle) >= self.most or any(not c.greeted for c in self.opening):
            connection.goodbye()
            return
        expiry = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._expire, connection)
        self._idle.append((connection, expiry))

    def close(self) -> None:
        """Say goodbye to every kept session (the worker is stopping)."""
        while self._idle:
            connection, expiry = self._idle.pop()
            expiry.cancel()
            connection.goodbye()

    def _expire(self, connection: _Connection) -> None:
        self._idle = [(c, e) for c, e in self._idle if c is not connection]
        connection.goodbye()


async def _converse(
    dialogue: SmtpClientDialogue,
    connection: _Connection,
    spool: MessageBody,
    client_gone: asyncio.Event | None,
    delivered: Delivered | None,
) -> None:
    """Do what the dialogue asks, step by step, until it is done."""
    while True:
        event = dialogue.next_event()
        match event:
            case Send(data, wait):
                await connection.send(data, wait)
            case AwaitReply(waiting_for, wait):
                dialogue.receive_reply(await connection.reply(waiting_for, wait))
            case SendBody(wait):
                await _send_body(connection, spool, client_gone, wait)
            case XforwardRefused(reply):
                logger.warning(
                    "%s refused XFORWARD: %s; forwarding without it", connection.where, reply.line()
                )
            case MessageTaken(taken):
                if delivered is not None:
                    await delivered(taken)
            case Done():
                return
            case _:
                assert_never(event)


async def _send_body(
    connection: _Connection, spool: MessageBody, client_gone: asyncio.Event | None, wait: Wait
) -> None:
    encoder = DataEncoder()
    held = b""
    for chunk in spool.chunks():
        # One chunk is held back so the last one leaves with the dot in a single write.
        if held:
            _check_client(connection, client_gone)
            await connection.send(held, wait)
        held = encoder.encode(chunk)
    _check_client(connection, client_gone)
    await connection.send(held + encoder.finish(), wait)


def _check_client(connection: _Connection, client_gone: asyncio.Event | None) -> None:
    if client_gone is not None and client_gone.is_set():
        # Without the dot the downstream drops the message, and the client, which heard nothing,
        # sends it again: one delivery in the end. With it, the retry would be a duplicate.
        raise _Failed(connection.trouble("4.4.2", "client went away before the message was complete"))


class _Connection:
    """The socket to the downstream MTA: bytes out and replies in, each within its timeout."""

    def __init__(self, where: str, timeouts: SmtpTimeouts) -> None:
        self.where = where
        self.timeouts = timeouts
        self.parser = ReplyParser()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: What the server's EHLO offered, once a session is kept for the next message.
        self.capabilities = Capabilities.basic()
        #: A first reply (the greeting) came.
        self.greeted = False

    async def open(self, target: SmtpTarget) -> None:
        try:
            if target.path is not None:
                opening = asyncio.open_unix_connection(target.path)
            else:
                opening = asyncio.open_connection(target.host, target.port)
            self.reader, self.writer = await asyncio.wait_for(opening, self.timeouts.connect)
        except TimeoutError:
            raise _Failed(self.trouble("4.4.1", "connect timed out")) from None
        except OSError as exc:
            raise _Failed(self.trouble("4.4.1", f"cannot connect: {exc.strerror or exc}")) from None

    async def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def still_there(self) -> bool:
        """A kept session's check before it carries a message: RSET, answered 250 in time."""
        try:
            await self.send(RSET, Wait.COMMAND)
            async with asyncio.timeout(_CHECK_WAIT):
                reply = await self.reply("RSET", Wait.COMMAND)
        except (_Failed, TimeoutError):
            return False
        return reply.code == 250 and not self.parser.buffered

    def goodbye(self) -> None:
        """QUIT without waiting for the answer, and close: for a kept session nobody waits on."""
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(QUIT)
            self.writer.close()

    def trouble(self, status: str, text: str) -> Reply:
        return Row.DOWNSTREAM_TROUBLE.relay(451, status, text=text, where=self.where)

    async def send(self, data: bytes, wait: Wait) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.timeouts.seconds(wait)):
                await self.writer.drain()
        except TimeoutError:
            raise _Failed(self.trouble("4.4.2", "timed out sending to the downstream MTA")) from None
        except (ConnectionError, OSError) as exc:
            raise _Failed(self.trouble("4.4.2", f"connection lost: {exc}")) from None

    async def reply(self, waiting_for: str, wait: Wait) -> SmtpReply:
        assert self.reader is not None
        deadline = asyncio.get_running_loop().time() + self.timeouts.seconds(wait)
        while True:
            try:
                reply = self.parser.next_reply()
            except ProtocolError as exc:
                raise _Failed(self.trouble("4.5.0", f"unparseable reply to {waiting_for}: {exc}")) from None
            if reply is not None:
                self.greeted = True
                return reply
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(65536)
            except TimeoutError:
                raise _Failed(
                    self.trouble("4.4.2", f"timed out waiting for the reply to {waiting_for}")
                ) from None
            except (ConnectionError, OSError) as exc:
                raise _Failed(self.trouble("4.4.2", f"connection lost after {waiting_for}: {exc}")) from None
            if not data:
                raise _Failed(self.trouble("4.4.2", f"connection closed after {waiting_for}"))
            self.parser.receive_data(data)
