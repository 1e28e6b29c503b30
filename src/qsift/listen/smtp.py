"""The SMTP and LMTP sessions: the sans-IO server in wire.smtp_server, driven over one connection.

Postfix (content_filter on port 10024) or any MTA hands mail in here. A message takes its slot at DATA:
354 once it has one, 451 4.3.2 to DATA itself after `busy_wait` without, so a busy site reads no content
it would refuse. The body is spooled as it arrives (bounded memory); after the final dot the pipeline
decides, and the answer is sent only once the forward's outcome is known: one reply for SMTP, one per
recipient for LMTP (RFC 2033 §4.2).

With XFORWARD, Postfix names the client it had the message from; that client, not the connection's peer,
is then the envelope's client for the policy banks and the log. Postfix's XFORWARD_README says not to mix
the two: once XFORWARD came, an attribute it did not give is unknown, not the peer's. Since the named
client picks the policy bank, only the hosts in the listener's `xforward_hosts` may name one (Postfix's
smtpd_authorized_xforward_hosts, apart from the ACL that lets a client connect at all); to any other
client XFORWARD is neither offered nor taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

from qsift.answers import Row, reply_for_error
from qsift.errors import TooBusy
from qsift.listen.admission import xforward_allowed
from qsift.listen.session import Deadline, read_with_limits, read_within
from qsift.listen.shell import Listening, SessionOpener, SpoolLatch
from qsift.model import Answer, Envelope, Outcome, Recipient, Reply, address_from_bytes
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.wire import smtp_server as wire
from qsift.wire.smtp_args import Forwarded

READ_SIZE = 64 * 1024


def smtp_sessions(listening: Listening, hostname: str) -> SessionOpener:
    """What opens an SMTP or LMTP session (as the listener's protocol says) for each connection."""
    limits = listening.listener.limits
    settings = wire.ServerSettings(
        hostname=hostname,
        lmtp=listening.listener.protocol == "lmtp",
        max_message_size=limits.message_size,
        max_recipients=limits.recipients,
    )

    def open_session(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str | None
    ) -> SmtpSession:
        may_forward = xforward_allowed(client, listening.listener.xforward_hosts)
        conn = wire.SmtpServerConnection(replace(settings, xforward=may_forward))
        return SmtpSession(listening, conn, reader, writer, client)

    return open_session


class SmtpSession:
    """One connection's loop: feed bytes to the codec, act on its events, send what it queues."""

    def __init__(
        self,
        listening: Listening,
        conn: wire.SmtpServerConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> None:
        self.listening = listening
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.client = client
        self.lmtp = conn.settings.lmtp
        self.name = "LMTP" if self.lmtp else "SMTP"
        self.helo: str | None = None
        self.extended = False
        self.content: SpoolLatch | None = None
        #: The message's slot and spool, held from DATA to its answer: a connection between messages
        #: holds none.
        self.message = contextlib.AsyncExitStack()
        self.started = time.monotonic()
        self.deadline = self._next_command()

    async def serve(self) -> None:
        limits = self.listening.listener.limits
        await read_with_limits(self._run(), limits.session_timeout, what=f"{self.name} session")

    async def refuse(self, reply: Reply) -> None:
        self.conn.reject_connection(reply)
        await _flush(self.writer, self.conn)

    def _next_command(self) -> Deadline:
        return Deadline.after(self.listening.listener.limits.command_timeout, "command line")

    async def _run(self) -> None:
        limits = self.listening.listener.limits
        try:
            while not self.conn.closed:
                event = self.conn.next_event()
                # Replies the codec queued on its own (refusals make no event) leave before we wait.
                if await _flush(self.writer, self.conn) and self.content is None:
                    # A reply ended the command line: the next one has its own deadline.
                    self.deadline = self._next_command()
                if isinstance(event, wire.NeedData):
                    data = await read_within(
                        self.reader.read(READ_SIZE), limits.client_timeout, self.deadline, what="SMTP client"
                    )
                    self.conn.receive_data(data)
                elif isinstance(event, wire.ConnectionClosed | wire.Quit):
                    break
                else:
                    await self._on_event(event)
            await _flush(self.writer, self.conn)
        finally:
            await self._end_message()

    async def _end_message(self) -> None:
        self.content = None
        await self.message.aclose()

    async def _on_event(self, event: object) -> None:
        if isinstance(event, wire.Hello):
            self.helo = event.name
            self.extended = event.extended
        elif isinstance(event, wire.DataStart):
            await self._start_message()
        elif isinstance(event, wire.DataChunk):
            if self.content is not None:
                self.content.write(event.data)
        elif isinstance(event, wire.DataEnd):
            metrics.stage_done("receive", self.started)
            replies = await self._answer_message(event)
            self.listening.answered(*replies)
            self.conn.answer_data(replies)
            await _flush(self.writer, self.conn)
            await self._end_message()
            self.deadline = self._next_command()

    async def _start_message(self) -> None:
        limits = self.listening.listener.limits
        self.started = time.monotonic()
        try:
            self.content = await self.message.enter_async_context(self.listening.message())
        except TooBusy as exc:
            # Said to DATA itself, before the client sends content we would not use.
            self.conn.refuse_data(reply_for_error(exc))
            return
        self.deadline = Deadline.after(limits.request_timeout, "message content")
        self.conn.start_data()

    async def _answer_message(self, end: wire.DataEnd) -> list[Reply]:
        recipients = tuple(Recipient(address_from_bytes(a), p) for a, p in end.recipients)
        refusal = self._refusal(end)
        if refusal is not None:
            return [refusal] * (len(recipients) if self.lmtp else 1)
        assert self.content is not None  # a DataEnd always follows a DataStart
        client, name, helo, peer = self.client, None, self.helo, None
        if end.xforward:
            forwarded = end.xforward
            client, name, helo = forwarded.get("ADDR"), forwarded.get("NAME"), forwarded.get("HELO")
            peer = self.client
        envelope = Envelope(
            sender=address_from_bytes(end.sender),
            recipients=recipients,
            mail_params=end.mail_params,
            protocol="LMTP" if self.lmtp else ("ESMTP" if self.extended else "SMTP"),
            replies_per_recipient=self.lmtp,
            client_address=client,
            client_name=name,
            helo=helo,
            listener=self.listening.listener.name,
            peer_address=peer,
        )
        outcome = await self.listening.judge(
            envelope, self.content, self.reader, self.started, self.conn.receive_data
        )
        if end.xforward:
            _log_forwarded(outcome.mail_id, envelope, end.xforward)
        if self.lmtp:
            return _per_recipient(outcome, recipients)
        return [outcome.reply]

    def _refusal(self, end: wire.DataEnd) -> Reply | None:
        if end.too_big:
            return Row.TOO_BIG.reply()
        if self.content is not None and self.content.failure is not None:
            return reply_for_error(self.content.failure)
        return None


def _log_forwarded(mail_id: str, envelope: Envelope, xforward: Forwarded) -> None:
    """What XFORWARD said, by mail_id: the MTA's own queue ID (IDENT) and the real peer, for tracing."""
    attributes = " ".join(f"{name}={value or '[UNAVAILABLE]'}" for name, value in xforward.items())
    peer = envelope.peer_address or "-"
    logger.info("id=%s %s: XFORWARD from [%s]: %s", mail_id, envelope.protocol, peer, attributes)


def _per_recipient(outcome: Outcome, recipients: tuple[Recipient, ...]) -> list[Reply]:
    """LMTP's answer: each recipient's own result; recipients not forwarded (already delivered) get 250."""
    by_address = {r.recipient.address: r.reply for r in outcome.per_recipient}
    if not by_address:
        # Nothing was forwarded (rejected, discarded, bounced, held back, a duplicate): one answer for all.
        return [outcome.reply] * len(recipients)
    replies = []
    for recipient in recipients:
        reply = by_address.get(recipient.address)
        if reply is None:
            reply = (
                outcome.reply
                if outcome.reply.answer is Answer.ACCEPT
                else Row.ALREADY_DELIVERED.reply(mail_id=outcome.mail_id)
            )
        elif reply.answer is Answer.ACCEPT and f"id={outcome.mail_id}" not in reply.text:
            # The downstream's own words ("Ok: queued as X"), said with our mail_id; a reply of ours
            # (discarded, bounced) has it already.
            reply = Row.DELIVERED_TO_RECIPIENT.reply(mail_id=outcome.mail_id, downstream=reply.text)
        replies.append(reply)
    return replies


async def _flush(writer: asyncio.StreamWriter, conn: wire.SmtpServerConnection) -> bool:
    """Send what the codec queued; True if there was something."""
    data = conn.data_to_send()
    if data:
        writer.write(data)
        await writer.drain()
    return bool(data)
