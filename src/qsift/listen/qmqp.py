"""The QMQP session: qmail-qmqpc or qsift-queue in, one K/Z/D answer out (QMQPqq).

One message per connection (cr.yp.to/proto/qmqp.html). The answer is sent only after the client's final
byte and only once the outcome is certain; a client that goes away early gets nothing, and nothing it
sent is forwarded. A client that goes away while the forward is running makes the forward stop before
the final dot, so no message is delivered that its sender will send again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from qsift.answers import reply_for_error
from qsift.errors import ClientTimeout
from qsift.listen.session import Deadline, Received, read_within
from qsift.listen.shell import Listening, SpoolLatch
from qsift.model import Envelope, Recipient, Reply, address_from_bytes
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.wire import qmqp

READ_SIZE = 64 * 1024
_LINGER_SECONDS = 5.0


class QmqpSession:
    """One QMQP connection: read the request through the codec, judge it, answer it."""

    name = "QMQP"

    def __init__(
        self,
        listening: Listening,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> None:
        self.listening = listening
        self.reader = reader
        self.writer = writer
        self.client = client

    async def serve(self) -> None:
        limits = self.listening.listener.limits
        # From the connection on: an idle client and one sending a byte a second both run into it.
        deadline = Deadline.after(min(limits.request_timeout, limits.session_timeout), "QMQP request")
        try:
            first = await self._read(deadline)
        except ClientTimeout as exc:
            logger.info("QMQP: [%s] %s; nothing answered, nothing forwarded", self.client, exc)
            return
        if not first:
            logger.info("QMQP: [%s] closed the connection without sending a request", self.client)
            return
        # A slot is taken by a request that has begun, not by a connection: idle ones hold none.
        async with self.listening.message() as content:
            await self._receive_and_answer(content, first, deadline)

    async def refuse(self, reply: Reply) -> None:
        """Answer a client we will not serve, then read and drop what it still sends.

        Closing with its request unread would make the kernel send a reset, which can destroy our answer
        in the client's receive buffer: qmail-qmqpc would then see a broken connection instead of Z.
        """
        await self._answer(reply)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(_LINGER_SECONDS):
                while await self.reader.read(65536):
                    pass

    async def _read(self, deadline: Deadline) -> bytes:
        limits = self.listening.listener.limits
        return await read_within(
            self.reader.read(READ_SIZE), limits.client_timeout, deadline, what="QMQP client"
        )

    async def _receive_and_answer(self, content: SpoolLatch, first: bytes, deadline: Deadline) -> None:
        started = time.monotonic()
        try:
            received = await self._read_request(content, first, deadline)
        except ClientTimeout as exc:
            logger.info("QMQP: [%s] %s; nothing answered, nothing forwarded", self.client, exc)
            return
        if received is None:
            logger.info("QMQP: [%s] closed the connection before the end of the request", self.client)
            return
        metrics.stage_done("receive", started)
        if isinstance(received, Reply):
            logger.info("QMQP: [%s] refused: %s", self.client, received.smtp_line())
            self.listening.answered(received)
            await self._answer(received)
            return
        envelope = Envelope(
            sender=received.sender,
            recipients=received.recipients,
            protocol="QMQP",
            client_address=self.client,
            listener=self.listening.listener.name,
        )
        outcome = await self.listening.judge(envelope, content, self.reader, started)
        self.listening.answered(outcome.reply)
        await self._answer(outcome.reply)

    async def _read_request(
        self, content: SpoolLatch, first: bytes, deadline: Deadline
    ) -> Received | Reply | None:
        limits = self.listening.listener.limits
        parser = qmqp.RequestParser(
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
            max_address_length=limits.address_length,
        )
        sender = ""
        recipients: list[Recipient] = []
        parser.receive_data(first)
        while True:
            event = parser.next_event()
            if isinstance(event, qmqp.NeedData):
                data = await self._read(deadline)
                if not data:
                    return None
                parser.receive_data(data)
            elif isinstance(event, qmqp.MessageChunk):
                content.write(event.data)
            elif isinstance(event, qmqp.Sender):
                sender = address_from_bytes(event.address)
            elif isinstance(event, qmqp.Recipient):
                recipients.append(Recipient(address_from_bytes(event.address)))
            elif isinstance(event, qmqp.RequestRejected):
                return reply_for_error(event.error)
            elif isinstance(event, qmqp.RequestEnd):
                if content.failure is not None:
                    return reply_for_error(content.failure)
                return Received(sender, tuple(recipients))

    async def _answer(self, reply: Reply) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(qmqp.encode_response(reply.answer.value, reply.qmqp_text()))
            await self.writer.drain()
