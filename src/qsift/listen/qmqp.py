"""The QMQP listener: qmail-qmqpc or qsift-queue in, one K/Z/D answer out (QMQPqq).

One message per connection (cr.yp.to/proto/qmqp.html). The answer is sent only after the client's final
byte and only once the outcome is certain; a client that goes away early gets nothing, and nothing it
sent is forwarded. A client that goes away while the forward is running makes the forward stop before
the final dot, so no message is delivered that its sender will send again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from qsift.answers import Row, reply_for_error
from qsift.config import Listener
from qsift.errors import ClientTimeout, QsiftError, SpoolError, TooManyConnections
from qsift.listen.admission import ConnectionsPerClient, SessionSlots, client_allowed
from qsift.listen.session import (
    ClientGoneWatch,
    Deadline,
    Received,
    log_outcome,
    peer_ip,
    read_within,
)
from qsift.model import Envelope, Recipient, Reply, address_from_bytes
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline import Pipeline
from qsift.spool import MessageSpool
from qsift.wire import qmqp

READ_SIZE = 64 * 1024


@dataclass
class QmqpListener:
    listener: Listener
    pipeline: Pipeline
    spool_dir: str | None

    def __post_init__(self) -> None:
        limits = self.listener.limits
        self.slots = SessionSlots(limits.max_sessions, limits.busy_wait, self.listener.name)
        self.clients = ConnectionsPerClient(
            limits.max_connections_per_client, self.listener.client_limit_exceptions
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one QMQP connection to its end; never raises."""
        client = peer_ip(writer)
        try:
            if not client_allowed(client, self.listener.acl):
                logger.warning("QMQP: access denied to [%s] on %s", client, self.listener.name)
                await _answer_before_the_request(reader, writer, Row.ACCESS_DENIED.reply())
                return
            with self.clients.connection(client):
                await self._serve(reader, writer, client)
        except TooManyConnections as exc:
            logger.info("QMQP: [%s] refused on %s: %s", client, self.listener.name, exc)
            await _answer_before_the_request(reader, writer, reply_for_error(exc))
        except QsiftError as exc:  # too busy, or an error found before the end of the request
            await _answer_before_the_request(reader, writer, reply_for_error(exc))
        except (ConnectionError, OSError) as exc:
            logger.info("QMQP: connection from [%s] lost: %s", client, exc)
        except Exception:
            logger.exception("QMQP: internal error serving [%s]; connection dropped (client retries)", client)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str | None
    ) -> None:
        limits = self.listener.limits
        # From the connection on: an idle client and one sending a byte a second both run into it.
        deadline = Deadline.after(min(limits.request_timeout, limits.session_timeout), "QMQP request")
        try:
            first = await read_within(
                reader.read(READ_SIZE), limits.client_timeout, deadline, what="QMQP client"
            )
        except ClientTimeout as exc:
            logger.info("QMQP: [%s] %s; nothing answered, nothing forwarded", client, exc)
            return
        if not first:
            logger.info("QMQP: [%s] closed the connection without sending a request", client)
            return
        # A slot is taken by a request that has begun, not by a connection: idle ones hold none.
        async with self.slots.slot():
            await self._receive_and_answer(reader, writer, client, first, deadline)

    async def _receive_and_answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
        first: bytes,
        deadline: Deadline,
    ) -> None:
        started = time.monotonic()
        limits = self.listener.limits
        spool = MessageSpool(self.spool_dir, limits.memory_spool)
        with spool:
            try:
                received = await self._read_request(reader, spool, first, deadline)
            except ClientTimeout as exc:
                logger.info("QMQP: [%s] %s; nothing answered, nothing forwarded", client, exc)
                return
            if received is None:
                logger.info("QMQP: [%s] closed the connection before the end of the request", client)
                return
            metrics.stage_done("receive", started)
            if isinstance(received, Reply):
                logger.info("QMQP: [%s] refused: %s", client, received.smtp_line())
                metrics.answered(self.listener.protocol, received)
                await _answer(writer, received)
                return
            envelope = Envelope(
                sender=received.sender,
                recipients=received.recipients,
                protocol="QMQP",
                client_address=client,
                listener=self.listener.name,
            )
            async with ClientGoneWatch(reader) as gone:
                outcome = await self.pipeline.handle(envelope, spool, gone.event)
            log_outcome(outcome, envelope, spool, started)
            metrics.stage_done("total", started)
            metrics.answered(self.listener.protocol, outcome.reply)
            await _answer(writer, outcome.reply)

    async def _read_request(
        self, reader: asyncio.StreamReader, spool: MessageSpool, first: bytes, deadline: Deadline
    ) -> Received | Reply | None:
        limits = self.listener.limits
        parser = qmqp.RequestParser(
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
            max_address_length=limits.address_length,
        )
        sender = ""
        recipients: list[Recipient] = []
        spool_failure: SpoolError | None = None
        parser.receive_data(first)
        while True:
            event = parser.next_event()
            if isinstance(event, qmqp.NeedData):
                data = await read_within(
                    reader.read(READ_SIZE), limits.client_timeout, deadline, what="QMQP client"
                )
                if not data:
                    return None
                parser.receive_data(data)
            elif isinstance(event, qmqp.MessageChunk):
                if spool_failure is None:
                    try:
                        spool.write(event.data)
                    except SpoolError as exc:
                        # Keep reading to the end of the request: QMQP answers only after the final byte.
                        spool_failure = exc
            elif isinstance(event, qmqp.Sender):
                sender = address_from_bytes(event.address)
            elif isinstance(event, qmqp.Recipient):
                recipients.append(Recipient(address_from_bytes(event.address)))
            elif isinstance(event, qmqp.RequestRejected):
                return reply_for_error(event.error)
            elif isinstance(event, qmqp.RequestEnd):
                if spool_failure is not None:
                    return reply_for_error(spool_failure)
                return Received(sender, tuple(recipients))


async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(qmqp.encode_response(reply.answer.value, reply.qmqp_text()))
        await writer.drain()


_LINGER_SECONDS = 5.0


async def _answer_before_the_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: Reply
) -> None:
    """Answer a client we will not serve, then read and drop what it still sends.

    Closing with its request unread would make the kernel send a reset, which can destroy our answer
    in the client's receive buffer: qmail-qmqpc would then see a broken connection instead of Z.
    """
    await _answer(writer, reply)
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(_LINGER_SECONDS):
            while await reader.read(65536):
                pass
