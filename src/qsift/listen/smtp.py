"""The SMTP and LMTP listeners: a thin asyncio shell around the sans-IO server in wire.smtp_server.

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
from dataclasses import dataclass, replace

from qsift.answers import Row, reply_for_error
from qsift.config import Listener
from qsift.errors import ClientTimeout, SpoolError, TooBusy, TooManyConnections
from qsift.listen.admission import ConnectionsPerClient, SessionSlots, client_allowed, xforward_allowed
from qsift.listen.session import (
    ClientGoneWatch,
    Deadline,
    log_outcome,
    peer_ip,
    read_with_limits,
    read_within,
)
from qsift.model import Answer, Envelope, Outcome, Recipient, Reply, address_from_bytes
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline import Pipeline
from qsift.spool import MessageSpool
from qsift.wire import smtp_server as wire
from qsift.wire.smtp_args import Forwarded

READ_SIZE = 64 * 1024


@dataclass
class SmtpListener:
    listener: Listener
    pipeline: Pipeline
    spool_dir: str | None
    hostname: str

    def __post_init__(self) -> None:
        limits = self.listener.limits
        self.slots = SessionSlots(limits.max_sessions, limits.busy_wait, self.listener.name)
        self.clients = ConnectionsPerClient(
            limits.max_connections_per_client, self.listener.client_limit_exceptions
        )
        self.lmtp = self.listener.protocol == "lmtp"
        self.settings = wire.ServerSettings(
            hostname=self.hostname,
            lmtp=self.lmtp,
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one SMTP/LMTP connection to its end; never raises."""
        client = peer_ip(writer)
        may_forward = xforward_allowed(client, self.listener.xforward_hosts)
        conn = wire.SmtpServerConnection(replace(self.settings, xforward=may_forward))
        proto = "LMTP" if self.lmtp else "SMTP"
        try:
            if not client_allowed(client, self.listener.acl):
                logger.warning("%s: access denied to [%s] on %s", proto, client, self.listener.name)
                conn.reject_connection(Row.ACCESS_DENIED.reply())
                await _flush(writer, conn)
                return
            try:
                with self.clients.connection(client):
                    await read_with_limits(
                        _Session(self, conn, reader, writer, client).run(),
                        self.listener.limits.session_timeout,
                        what=f"{proto} session",
                    )
            except TooManyConnections as exc:
                logger.info("%s: [%s] refused on %s: %s", proto, client, self.listener.name, exc)
                conn.reject_connection(reply_for_error(exc))
                await _flush(writer, conn)
        except ClientTimeout as exc:
            logger.info("%s: [%s] %s; connection dropped", proto, client, exc)
        except (ConnectionError, OSError) as exc:
            logger.info("%s: connection from [%s] lost: %s", proto, client, exc)
        except Exception:
            logger.exception("%s: internal error serving [%s]; connection dropped", proto, client)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class _Session:
    """One connection's loop: feed bytes to the codec, act on its events, send what it queues."""

    def __init__(
        self,
        owner: SmtpListener,
        conn: wire.SmtpServerConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> None:
        self.owner = owner
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.client = client
        self.helo: str | None = None
        self.extended = False
        self.spool: MessageSpool | None = None
        self.spool_failure: SpoolError | None = None
        #: The message's slot, held from DATA to its answer: a connection between messages holds none.
        self.slot = contextlib.AsyncExitStack()
        self.started = time.monotonic()
        self.deadline = self._next_command()

    def _next_command(self) -> Deadline:
        return Deadline.after(self.owner.listener.limits.command_timeout, "command line")

    async def run(self) -> None:
        limits = self.owner.listener.limits
        try:
            while not self.conn.closed:
                event = self.conn.next_event()
                # Replies the codec queued on its own (refusals make no event) leave before we wait.
                if await _flush(self.writer, self.conn) and self.spool is None:
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
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        await self.slot.aclose()

    async def _on_event(self, event: object) -> None:
        if isinstance(event, wire.Hello):
            self.helo = event.name
            self.extended = event.extended
        elif isinstance(event, wire.DataStart):
            await self._start_message()
        elif isinstance(event, wire.DataChunk):
            self._spool_chunk(event.data)
        elif isinstance(event, wire.DataEnd):
            metrics.stage_done("receive", self.started)
            replies = await self._answer_message(event)
            metrics.answered(self.owner.listener.protocol, *replies)
            self.conn.answer_data(replies)
            await _flush(self.writer, self.conn)
            await self._end_message()
            self.deadline = self._next_command()

    async def _start_message(self) -> None:
        limits = self.owner.listener.limits
        self.started = time.monotonic()
        self.spool_failure = None
        try:
            await self.slot.enter_async_context(self.owner.slots.slot())
        except TooBusy as exc:
            # Said to DATA itself, before the client sends content we would not use.
            self.conn.refuse_data(reply_for_error(exc))
            return
        self.deadline = Deadline.after(limits.request_timeout, "message content")
        self.spool = MessageSpool(self.owner.spool_dir, limits.memory_spool)
        self.conn.start_data()

    def _spool_chunk(self, data: bytes) -> None:
        if self.spool is None or self.spool_failure is not None:
            return
        try:
            self.spool.write(data)
        except SpoolError as exc:
            self.spool_failure = exc

    async def _answer_message(self, end: wire.DataEnd) -> list[Reply]:
        recipients = tuple(Recipient(address_from_bytes(a), p) for a, p in end.recipients)
        refusal = self._refusal(end)
        if refusal is not None:
            return [refusal] * (len(recipients) if self.owner.lmtp else 1)
        assert self.spool is not None  # a DataEnd always follows a DataStart
        client, name, helo, peer = self.client, None, self.helo, None
        if end.xforward:
            forwarded = end.xforward
            client, name, helo = forwarded.get("ADDR"), forwarded.get("NAME"), forwarded.get("HELO")
            peer = self.client
        envelope = Envelope(
            sender=address_from_bytes(end.sender),
            recipients=recipients,
            mail_params=end.mail_params,
            protocol="LMTP" if self.owner.lmtp else ("ESMTP" if self.extended else "SMTP"),
            replies_per_recipient=self.owner.lmtp,
            client_address=client,
            client_name=name,
            helo=helo,
            listener=self.owner.listener.name,
            peer_address=peer,
        )
        async with ClientGoneWatch(self.reader, self.conn.receive_data) as gone:
            outcome = await self.owner.pipeline.handle(envelope, self.spool, gone.event)
        log_outcome(outcome, envelope, self.spool, self.started)
        metrics.stage_done("total", self.started)
        if end.xforward:
            _log_forwarded(outcome.mail_id, envelope, end.xforward)
        if self.owner.lmtp:
            return _per_recipient(outcome, recipients)
        return [outcome.reply]

    def _refusal(self, end: wire.DataEnd) -> Reply | None:
        if end.too_big:
            return Row.TOO_BIG.reply()
        if self.spool_failure is not None:
            return reply_for_error(self.spool_failure)
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
