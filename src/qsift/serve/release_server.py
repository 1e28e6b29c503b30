"""amavisd-new's release protocol (AM.PDP), served so amavisd-release and the web front ends made for
amavisd-new (MailZu, modoboa-amavis, iRedAdmin, amacube) let quarantined mail out of qsift unchanged
(reference: amavisd-sql.md §3; docs/cluster.md).

Every worker accepts on the release sockets the parent bound, as it does on the mail listeners: a
release needs what a worker already holds (the forward, its log), a connection waiting in the backlog
survives a worker's death, and releases are rare and short enough that no balancing is needed. A
request is answered by `ReleaseDesk.answer`, which reuses release.py's path (`qsift release`): the
message is read from the quarantine, forwarded with every check bypassed, and recorded as released
(qsift_release, msgrcpt.rs 'R').

Who may release: over TCP, only clients in `[release] acl`, and only with the message's secret_id (the
one its mail_id was made from, or msgs.secret_id as the front ends read it); over the unix socket, its
file mode decides, and the secret_id is not needed unless `unix_socket_needs_secret` says so (Debian's
AM.PDP-SOCK bank). A recipient the message was already released to is not sent it again (a front end's
second click, iRedAdmin's retry): `qsift release --to` sends again on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from qsift.act.forward import Forwarder
from qsift.config import ListenAddress, ReleaseSettings
from qsift.errors import SpoolError
from qsift.mail_ids import secret_matches
from qsift.model import Answer, single_line
from qsift.observe.log import logger
from qsift.policy.bank import Network
from qsift.release import Released, release_quarantined
from qsift.store.quarantine import QuarantineStore, ReleaseLock
from qsift.wire.ampdp import AmpdpError, Request, RequestReader, SetReply, encode_reply

#: amavisd-new's own check of a requested mail_id (In/AMPDP.pm).
_MAIL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*={0,2}\Z")
#: Quarantine types whose message is found by its mail_id alone: the SQL quarantine (Q) and the files
#: amavisd-release names (F, or Z when gzipped). mail_file is never opened: qsift finds the message itself.
_WHOLE_MESSAGE_TYPES = ("", "Q", "F", "Z")
#: The downstream's words quoted in a reply, at most: each setreply line stays short, so the reply to a
#: release to one or two recipients stays under the 512 bytes MailZu reads.
_QUOTED = 100
_READ_SIZE = 4096
_LONGEST_ADDRESS = 1000
#: How long, and for how many bytes, a broken request's rest is read and dropped before the close.
_LINGER = 2.0
_LINGER_BYTES = 1 << 20


class Refused(Exception):
    """A request amavisd-new would answer `450 4.5.0 Failure: ...`; the text says why."""


def release_socket_name(address: ListenAddress) -> str:
    """How the parent and the workers name a release socket among the listeners' sockets."""
    return f"am.pdp:{address}"


@dataclass(frozen=True)
class ReleaseOrder:
    """What a `request=release` asks for, checked."""

    mail_id: str
    secret_id: str
    #: Empty: the recipients the message was kept for (amavisd-new's X-Envelope-To-Blocked).
    recipients: tuple[str, ...]
    #: None: the message's own sender.
    sender: str | None
    requested_by: str


def release_order(request: Request) -> ReleaseOrder:
    """The order a request gives, or Refused with amavisd-new's reason."""
    kind = request.first("request")
    if kind in ("requeue", "report"):
        raise Refused(
            f"request={kind} is not served by qsift, only request=release (a release bypasses the checks)"
        )
    if kind != "release":
        raise Refused(f"unknown request {kind!r}" if kind else "no request given")
    mail_id = request.first("mail_id") or ""
    if not _MAIL_ID.match(mail_id) or len(mail_id) > 64:
        raise Refused(f"invalid mail_id {single_line(mail_id)[:64]!r}" if mail_id else "no mail_id given")
    quar_type = request.first("quar_type") or ""
    if quar_type not in _WHOLE_MESSAGE_TYPES:
        raise Refused(f"quar_type={single_line(quar_type)[:8]} is not served: qsift keeps whole messages (Q)")
    partition = request.first("partition_tag") or "0"
    if partition.strip() != "0":
        raise Refused(f"no quarantined message {mail_id} in partition {single_line(partition)[:20]}")
    sender = request.first("sender")
    return ReleaseOrder(
        mail_id=mail_id,
        secret_id=request.first("secret_id") or "",
        recipients=tuple(dict.fromkeys(_address(r) for r in request.all("recipient"))),
        sender=None if sender is None else _address(sender),
        requested_by=single_line(request.first("requested_by") or "")[:200],
    )


def _address(text: str) -> str:
    """An address as amavisd-new takes it: bare or in one pair of angle brackets."""
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if len(text.encode("utf-8", "surrogateescape")) > _LONGEST_ADDRESS or not text.isprintable():
        raise Refused(f"invalid address {single_line(text)[:80]!r}")
    return text


def failure(reason: str) -> bytes:
    """amavisd-new's answer to a request it cannot carry out (In/AMPDP.pm)."""
    return encode_reply(
        [SetReply(450, "4.5.0", f"Failure: {reason}")], [("return_value", "tempfail"), ("exit_code", "75")]
    )


class ReleaseDesk:
    """Answers release requests: checks who asks, releases, and says per recipient what happened."""

    def __init__(self, quarantine: QuarantineStore, forwarder: Forwarder) -> None:
        self.quarantine = quarantine
        self.forwarder = forwarder

    async def answer(self, request: Request, *, secret_needed: bool, client: str) -> bytes:
        """The reply to one request, whatever happens: a failure is a reply too."""
        try:
            order = release_order(request)
            await self._authorize(order, secret_needed)
            return await self._release(order, client)
        except Refused as exc:
            logger.warning("AM.PDP from %s: refused: %s", client, exc)
            return failure(str(exc))
        except SpoolError as exc:  # PostgreSQL down, a damaged quarantined copy
            logger.error("AM.PDP from %s: %s", client, exc)
            return failure(single_line(str(exc))[:200])
        except Exception:  # the client hears a failure, never a dropped connection
            logger.exception("AM.PDP from %s: release failed", client)
            return failure("internal error, see qsift's log")

    async def _authorize(self, order: ReleaseOrder, secret_needed: bool) -> None:
        if not order.secret_id:
            if secret_needed:
                raise Refused("Secret_id is required, but missing")
            return
        if secret_matches(order.mail_id, order.secret_id):
            return
        stored = await asyncio.to_thread(self.quarantine.secret_id, order.mail_id)
        if not (stored and secrets.compare_digest(stored.encode(), order.secret_id.encode())):
            # The secret given is not repeated: it may be a real one mistyped.
            raise Refused(f"Secret_id does not match mail_id {order.mail_id}")

    async def _release(self, order: ReleaseOrder, client: str) -> bytes:
        """Release under the message's release lock, so that what was released already is read and the
        rest is sent by one release at a time, on any worker or node sharing the quarantine."""
        lock = self.quarantine.release_lock(order.mail_id)
        acquiring = asyncio.ensure_future(asyncio.to_thread(lock.acquire))
        try:
            await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The thread may still get the lock: let it go the moment it does.
            acquiring.add_done_callback(functools.partial(_let_go_if_taken, lock))
            raise
        try:
            return await self._release_held(order, client)
        finally:
            await asyncio.to_thread(lock.release)

    async def _release_held(self, order: ReleaseOrder, client: str) -> bytes:
        try:
            entry = await asyncio.to_thread(self.quarantine.get, order.mail_id)
        except ValueError:
            entry = None
        if entry is None:
            raise Refused(f"no quarantined message {order.mail_id}")
        targets = order.recipients or entry.recipients
        already = [r for r in targets if r in entry.released]
        wanted = [r for r in targets if r not in entry.released]
        earlier = [
            SetReply(250, "2.0.0", f"Ok, id={order.mail_id} released to <{r}> earlier") for r in already
        ]
        if not wanted:
            return encode_reply(earlier or [SetReply(250, "2.5.0", "No recipients, nothing to do")])
        try:
            released = await release_quarantined(
                self.quarantine, self.forwarder, order.mail_id, wanted, order.sender
            )
        except (KeyError, ValueError):  # purged or taken away since the lookup
            raise Refused(f"no quarantined message {order.mail_id}") from None
        _log(order, client, released)
        return encode_reply([*_replies(order.mail_id, released), *earlier])


def _let_go_if_taken(lock: ReleaseLock, acquiring: asyncio.Future[None]) -> None:
    if not acquiring.cancelled() and acquiring.exception() is None:
        lock.release()


def _replies(mail_id: str, released: Released) -> list[SetReply]:
    """One setreply per recipient, the accepted ones first (MailZu and amacube test only the first line),
    with " Ok" right after the status as modoboa wants it."""
    replies = []
    for item in released.result.per_recipient:
        reply = item.reply
        said = single_line(f"{reply.smtp_code} {reply.enhanced_status} {reply.text}")[:_QUOTED]
        address = item.recipient.address
        if reply.answer is Answer.ACCEPT:
            text = f"Ok, id={mail_id} released to <{address}>: {said}"
        else:
            text = f"Failed, id={mail_id} not released to <{address}>: {said}"
        replies.append(
            (reply.answer is not Answer.ACCEPT, SetReply(reply.smtp_code, reply.enhanced_status, text))
        )
    return [reply for _, reply in sorted(replies, key=lambda pair: pair[0])]


def _log(order: ReleaseOrder, client: str, released: Released) -> None:
    by = f" (requested by {order.requested_by})" if order.requested_by else ""
    outcome = ", ".join(f"<{r.recipient.address}> {r.reply.smtp_code}" for r in released.result.per_recipient)
    logger.warning("AM.PDP from %s%s: id=%s released: %s", client, by, order.mail_id, outcome)
    if released.unrecorded is not None:
        logger.error("id=%s released but not recorded as released: %s", order.mail_id, released.unrecorded)


async def serve_release_connection(
    desk: ReleaseDesk,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    settings: ReleaseSettings,
    unix: bool,
) -> None:
    """Answer a connection's requests in turn until it closes; a client outside the acl is closed
    unanswered, one that breaks the framing hears why and is closed."""
    peer = writer.get_extra_info("peername")
    client = "unix" if unix else str(peer[0]) if isinstance(peer, tuple) else "?"
    try:
        if not unix and not _allowed(client, settings.acl):
            logger.warning("AM.PDP from %s: refused: not in [release] acl", client)
            return
        secret_needed = not unix or settings.unix_socket_needs_secret
        requests = RequestReader()
        while True:
            try:
                request = requests.next_request()
            except AmpdpError as exc:
                logger.warning("AM.PDP from %s: %s", client, exc)
                writer.write(failure(str(exc)))
                await _last_word(reader, writer)
                return
            if request is None:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), settings.timeout)
                if not data:
                    return
                requests.feed(data)
                continue
            # Not under the timeout: a release cut after its forward would go out unrecorded. The forward
            # has its own deadlines.
            answer = await desk.answer(request, secret_needed=secret_needed, client=client)
            writer.write(answer)
            await writer.drain()
    except (TimeoutError, ConnectionError) as exc:
        logger.info("AM.PDP from %s: connection dropped: %s", client, exc or type(exc).__name__)
    finally:
        writer.close()


async def _last_word(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send what is written and say no more; read and drop what the client still sends for a moment, so
    that closing with its bytes unread (a TCP reset) does not destroy the reply before it is read."""
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_LINGER):
            dropped = 0
            while dropped < _LINGER_BYTES and (data := await reader.read(_READ_SIZE)):
                dropped += len(data)


def _allowed(client: str, acl: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(client.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in acl)
