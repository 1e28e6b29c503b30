"""One listener shell: what every connection goes through, whatever protocol it speaks.

`serve_connection` owns the connection from accept to close: the ACL, the per-client cap, the mapping of
errors to a refusal or a log line, and the close. Each protocol is a `Session` around its sans-IO codec
(listen/qmqp.py, listen/smtp.py): it reads, feeds the codec, takes a slot for a message in progress and
answers; it ends a message through `judge`, which owns the end-of-message log line and metrics, and it
spools content through a `SpoolLatch`, which keeps the first spool failure to answer at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from qsift.answers import Row, reply_for_error
from qsift.config import Listener
from qsift.errors import ClientTimeout, QsiftError, SpoolError, TooManyConnections
from qsift.listen.admission import ConnectionsPerClient, SessionSlots, client_allowed
from qsift.listen.session import ClientGoneWatch, peer_ip
from qsift.model import Envelope, Outcome, Reply
from qsift.observe import metrics
from qsift.observe.log import SUMMARY, logger, message_id, summary_line
from qsift.pipeline import Pipeline
from qsift.spool import MessageSpool

_HEAD_FOR_LOG = 64 * 1024


class Session(Protocol):
    """One connection's protocol: serve it, or refuse it before it is served."""

    #: The protocol's name in the log lines ("QMQP", "SMTP", "LMTP").
    name: str

    async def serve(self) -> None:
        """Serve the connection to its end; a QsiftError it raises is refused with its answer row."""

    async def refuse(self, reply: Reply) -> None:
        """Tell a client that will not be served why, in the protocol's shape."""


@dataclass
class Listening:
    """What the sessions of one listener share: its settings, the pipeline, the spool, the limits."""

    listener: Listener
    pipeline: Pipeline
    spool_dir: str | None
    slots: SessionSlots = field(init=False)
    clients: ConnectionsPerClient = field(init=False)

    def __post_init__(self) -> None:
        limits = self.listener.limits
        self.slots = SessionSlots(limits.max_sessions, limits.busy_wait, self.listener.name)
        self.clients = ConnectionsPerClient(
            limits.max_connections_per_client, self.listener.client_limit_exceptions
        )

    @contextlib.asynccontextmanager
    async def message(self) -> AsyncIterator[SpoolLatch]:
        """One message in progress: its slot (TooBusy after `busy_wait` without) and its spool."""
        async with self.slots.slot():
            with MessageSpool(self.spool_dir, self.listener.limits.memory_spool) as spool:
                yield SpoolLatch(spool)

    def answered(self, *replies: Reply) -> None:
        metrics.answered(self.listener.protocol, *replies)

    async def judge(
        self,
        envelope: Envelope,
        content: SpoolLatch,
        reader: asyncio.StreamReader,
        started: float,
        on_data: Callable[[bytes], None] | None = None,
    ) -> Outcome:
        """Carry a message read to its end through the pipeline, watching for its client to go away."""
        async with ClientGoneWatch(reader, on_data) as gone:
            outcome = await self.pipeline.handle(envelope, content.spool, gone.event)
        elapsed_ms = (time.monotonic() - started) * 1000
        head = content.spool.head(_HEAD_FOR_LOG)
        line = summary_line(
            outcome, envelope, size=content.spool.size, msgid=message_id(head), elapsed_ms=elapsed_ms
        )
        logger.log(SUMMARY, "%s", line)
        metrics.stage_done("total", started)
        return outcome


class SpoolLatch:
    """A message's spool and the first failure writing it.

    After a failure the rest of the content is read and dropped, not written: the client is answered at
    the end of its message (QMQP answers only after the final byte, SMTP only after the final dot).
    """

    def __init__(self, spool: MessageSpool) -> None:
        self.spool = spool
        self.failure: SpoolError | None = None

    def write(self, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            self.spool.write(data)
        except SpoolError as exc:
            self.failure = exc


SessionOpener = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "str | None"], Session]


async def serve_connection(
    listening: Listening,
    open_session: SessionOpener,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Serve one connection to its end with the session `open_session` makes; never raises."""
    client = peer_ip(writer)
    session = open_session(reader, writer, client)
    where = listening.listener.name
    try:
        try:
            if not client_allowed(client, listening.listener.acl):
                logger.warning("%s: access denied to [%s] on %s", session.name, client, where)
                await session.refuse(Row.ACCESS_DENIED.reply())
                return
            with listening.clients.connection(client):
                await session.serve()
        except TooManyConnections as exc:
            logger.info("%s: [%s] refused on %s: %s", session.name, client, where, exc)
            await session.refuse(reply_for_error(exc))
        except ClientTimeout:
            raise
        except QsiftError as exc:  # too busy, or an error found before the end of the request
            await session.refuse(reply_for_error(exc))
    except ClientTimeout as exc:
        logger.info("%s: [%s] %s; connection dropped", session.name, client, exc)
    except (ConnectionError, OSError) as exc:
        logger.info("%s: connection from [%s] lost: %s", session.name, client, exc)
    except Exception:
        logger.exception(
            "%s: internal error serving [%s]; connection dropped (client retries)", session.name, client
        )
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
