"""Spam scores from SpamAssassin's spamd and from rspamd, over their own protocols.

amavisd-new runs SpamAssassin inside its own processes; qsift asks a spamd (or rspamd) instead, so the
rules, their memory and their compile time live in one daemon that several qsift instances can share,
and a slow rule cannot stall the event loop.

What both clients keep to, whatever the daemon does:
- `check` never raises. A refused connection, a timeout, a reset, a reply that cannot be parsed: each is
  a SpamResult with `error` set, and the caller decides what a failed scanner means (DESIGN.md
  invariant 4: pass unscored, logged).
- One deadline (`timeout`) covers the whole exchange; connecting has its own shorter one. spamd keeps
  scanning after we give up, so the socket is closed at once, not drained.
- spamd is sent a slimmed copy (wire/slim_mail.py): headers and text whole, attachments cut to their
  first `attachment_head` bytes, the whole cut at `max_size` as amavisd-new cuts at
  `$sa_mail_body_size_limit`, so a large message is checked by its start rather than not at all. With
  `slim` off, and for rspamd, a message over `max_size` is not sent: `skipped` (spamc's default is 500 KB).
- One connection per message: spamd allows one request per connection, and rspamd is asked with
  `Connection: close` so its reply ends at EOF like spamd's.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from typing import IO

from qsift.checks.scanners import (
    ScannerAddress,
    SpamEnvelope,
    SpamResult,
    header_safe,
    parse_scanner_address,
)
from qsift.errors import ProtocolError
from qsift.model import address_bytes
from qsift.observe.log import level, logger
from qsift.wire import rspamd as rspamd_wire
from qsift.wire import spamd as spamd_wire
from qsift.wire.slim_mail import MailSlimmer

_CHUNK = 64 * 1024
#: How much of the spool file is read at once to make the slimmed copy.
_SLIM_BLOCK = 256 * 1024

_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Failed(Exception):
    """The exchange cannot go on; the text becomes SpamResult.error."""


class _ShortMessage(Exception):
    """The message ended before its stated size while its slimmed copy was made."""


def _ended_early(missing: int) -> str:
    return f"the message ended {missing} bytes before its stated size"


def _return_path(sender: str, message: bytes) -> bytes:
    """The Return-Path field a delivery agent would add, as amavisd-new gives it to SpamAssassin, with
    the line end the message's first line has (a header of mixed line ends reads as broken)."""
    first = message.find(b"\n")
    end = b"\r\n" if first > 0 and message[first - 1 : first] == b"\r" else b"\n"
    return b"Return-Path: <" + address_bytes(sender) + b">" + end


async def _exchange(
    address: ScannerAddress,
    head: bytes,
    message: IO[bytes] | None,
    size: int,
    *,
    connect_timeout: float,
    half_close: bool,
    feed: Callable[[bytes], bool],
) -> str:
    """Connect, send `head` and `size` bytes of `message`, read the reply into `feed` until it says done
    or EOF. Returns "" or, when sending failed, why: the daemon may have answered and closed early (spamd
    refuses a bad header before the body), so its reply is still read and is the better error message.
    """
    reader, writer = await _connect(address, connect_timeout)
    try:
        send_error = ""
        try:
            await _send(writer, head, message, size)
            if half_close:
                writer.write_eof()  # as libspamc does: spamd may wait for EOF when unsure of the length
        except (ConnectionError, OSError) as exc:
            send_error = f"connection lost while sending: {exc}"
        try:
            while chunk := await reader.read(_CHUNK):
                if feed(chunk):
                    break
        except (ConnectionError, OSError) as exc:
            raise _Failed(send_error or f"connection lost while reading: {exc}") from None
        return send_error
    finally:
        # No graceful wait: after a timeout the daemon may never close its side.
        writer.transport.abort()


async def _connect(address: ScannerAddress, seconds: float) -> _Streams:
    try:
        async with asyncio.timeout(seconds):
            if address.path is not None:
                return await asyncio.open_unix_connection(address.path)
            return await asyncio.open_connection(address.host, address.port)
    except TimeoutError:
        raise _Failed(f"connect timed out after {seconds:g}s") from None
    except OSError as exc:
        raise _Failed(f"cannot connect: {exc.strerror or exc}") from None


async def _send(writer: asyncio.StreamWriter, head: bytes, message: IO[bytes] | None, size: int) -> None:
    writer.write(head)
    left = size
    while left > 0:
        assert message is not None
        # A spool file on local disk: a 64 KiB read does not stall the loop long enough to matter.
        try:
            chunk = message.read(min(_CHUNK, left))
        except OSError as exc:
            raise _Failed(f"cannot read the message: {exc}") from None
        if not chunk:
            raise _Failed(_ended_early(left))
        writer.write(chunk)
        left -= len(chunk)
        await writer.drain()
    await writer.drain()


# --- spamd ---------------------------------------------------------------------------------------------


class SpamdScanner:
    """SpamAssassin's spamd, asked `SYMBOLS`: verdict, score, threshold and rule names in one request."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_size: int = 400 * 1024,
        slim: bool = False,
        attachment_head: int = 4096,
        cut_text_attachments: bool = True,
    ) -> None:
        self.name = name
        self.address = parse_scanner_address(address, default_port=783)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: With `slim`, the most that is sent; without, the largest message sent at all.
        self.max_size = max_size
        self.slim = slim
        self.attachment_head = attachment_head
        self.cut_text_attachments = cut_text_attachments

    async def check(
        self, message: IO[bytes], size: int, *, user: str | None = None, envelope: SpamEnvelope | None = None
    ) -> SpamResult:
        if size > self.max_size and not self.slim:
            return SpamResult(self.name, skipped=f"larger than {self.max_size} bytes")
        sender = header_safe(envelope.sender) if envelope is not None else None
        if self.slim or sender is not None:
            try:
                # Past one block, off the event loop: 10 MB of base64 takes about 30 ms to look through.
                copy = (
                    self.sample(message, size)
                    if size <= _SLIM_BLOCK
                    else await asyncio.to_thread(self.sample, message, size)
                )
            except _ShortMessage as exc:
                return self._error(str(exc))
            except OSError as exc:
                return self._error(f"cannot read the message: {exc}")
            if sender is not None:
                copy = _return_path(sender, copy) + copy
            message, size = io.BytesIO(copy), len(copy)
        try:
            head = spamd_wire.request_head("SYMBOLS", size, user)
        except ValueError as exc:
            return self._error(str(exc))
        try:
            reply = await self._ask(head, message, size)
        except _Failed as exc:
            return self._error(str(exc))
        if reply.code != 0:
            return self._error(f"spamd answered {reply.code} {reply.message}")
        if reply.score is None:
            return self._error("spamd reply has no Spam header")
        try:
            rules = spamd_wire.parse_symbols(reply.body)
        except ProtocolError as exc:
            return self._error(str(exc))
        return SpamResult(self.name, score=reply.score, required=reply.threshold, rules=rules)

    def sample(self, message: IO[bytes], size: int) -> bytes:
        """The copy spamd is sent: with `slim`, the slimmed copy of the message's first `size` bytes, at
        most `max_size` of them; without, the message itself (then at most `max_size`).

        Made in one go, in memory bounded by `max_size`: what is left out is found by a regex or
        `bytes.find` over each block, about 3 ms per megabyte of base64."""
        if not self.slim:
            whole = message.read(size)
            if len(whole) < size:
                raise _ShortMessage(_ended_early(size - len(whole)))
            return whole
        slimmer = MailSlimmer(
            attachment_head=self.attachment_head,
            limit=self.max_size,
            text_attachments=self.cut_text_attachments,
        )
        pieces: list[bytes] = []
        left = size
        while left > 0 and not slimmer.full:
            block = message.read(min(_SLIM_BLOCK, left))
            if not block:
                # A spool shorter than it says is broken: the copy would be of a message nobody sent.
                raise _ShortMessage(_ended_early(left))
            left -= len(block)
            pieces.append(slimmer.feed(block))
        pieces.append(slimmer.finish())
        return b"".join(pieces)

    async def ping(self) -> str:
        """spamd's answer to PING ("PONG"), or "" when it did not give one."""
        try:
            reply = await self._ask(spamd_wire.PING_REQUEST, None, 0)
        except _Failed:
            return ""
        return reply.message if reply.code == 0 else ""

    async def _ask(self, head: bytes, message: IO[bytes] | None, size: int) -> spamd_wire.SpamdResponse:
        parser = spamd_wire.ResponseParser()

        def feed(data: bytes) -> bool:
            parser.feed(data)
            return False  # a spamd reply ends only at EOF

        send_error = ""
        try:
            async with asyncio.timeout(self.timeout):
                send_error = await _exchange(
                    self.address,
                    head,
                    message,
                    size,
                    connect_timeout=self.connect_timeout,
                    half_close=True,
                    feed=feed,
                )
            return parser.finish()
        except TimeoutError:
            raise _Failed(f"no reply within {self.timeout:g}s") from None
        except ProtocolError as exc:
            raise _Failed(send_error or str(exc)) from None

    def _error(self, text: str) -> SpamResult:
        return SpamResult(self.name, error=f"{text} ({self.address})")


# --- rspamd --------------------------------------------------------------------------------------------


class RspamdScanner:
    """rspamd's normal worker (or proxy), asked `POST /checkv2`."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_size: int = 50 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.address = parse_scanner_address(address, default_port=11333)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: rspamd's own `max_message` default; it refuses anything larger anyway.
        self.max_size = max_size

    async def check(
        self, message: IO[bytes], size: int, *, user: str | None = None, envelope: SpamEnvelope | None = None
    ) -> SpamResult:
        """The SpamScanner call; the envelope, when given, lets rspamd's SPF/DKIM/RBL rules work. Only
        values that cannot end a header line are sent: rspamd's request refuses the others, and a client
        must not turn its spam check into a failure by its choice of sender."""
        told = envelope or SpamEnvelope()
        recipients = [r for r in map(header_safe, told.recipients) if r]
        result, _ = await self.analyse(
            message,
            size,
            user=user,
            ip=header_safe(told.ip),
            helo=header_safe(told.helo),
            sender=header_safe(told.sender),
            recipients=recipients,
        )
        return result

    async def analyse(
        self,
        message: IO[bytes],
        size: int,
        *,
        user: str | None = None,
        ip: str | None = None,
        helo: str | None = None,
        sender: str | None = None,
        recipients: Sequence[str] = (),
        queue_id: str | None = None,
        host: str | None = None,
    ) -> tuple[SpamResult, rspamd_wire.RspamdReply | None]:
        """As `check`, plus rspamd's whole reply (action, SMTP message) when there was one."""
        if size > self.max_size:
            return SpamResult(self.name, skipped=f"larger than {self.max_size} bytes"), None
        try:
            head = rspamd_wire.request_head(
                size,
                ip=ip,
                helo=helo,
                sender=sender,
                recipients=recipients,
                queue_id=queue_id,
                user=user,
                host=host,
            )
        except ValueError as exc:
            return self._error(str(exc)), None
        try:
            reply = await self._ask(head, message, size)
        except _Failed as exc:
            return self._error(str(exc)), None
        # `is_skipped` is not "unscored": rspamd sets it when a pre-result cut the rules short, GTUBE's
        # reject included, and the score and action are then the verdict.
        result = SpamResult(self.name, score=reply.score, required=reply.required_score, rules=reply.symbols)
        if reply.header_fields:
            logger.log(
                level(2),
                "%s asked to add %s: not added (qsift signs DKIM and writes Authentication-Results itself)",
                self.name,
                ", ".join(reply.header_fields),
            )
        return result, reply

    async def _ask(self, head: bytes, message: IO[bytes], size: int) -> rspamd_wire.RspamdReply:
        parser = rspamd_wire.HttpResponseParser()
        send_error = ""
        try:
            async with asyncio.timeout(self.timeout):
                send_error = await _exchange(
                    self.address,
                    head,
                    message,
                    size,
                    connect_timeout=self.connect_timeout,
                    half_close=False,
                    feed=parser.feed,
                )
            response = parser.finish()
            return rspamd_wire.parse_reply(response.status, response.body)
        except TimeoutError:
            raise _Failed(f"no reply within {self.timeout:g}s") from None
        except ProtocolError as exc:
            raise _Failed(send_error or str(exc)) from None

    def _error(self, text: str) -> SpamResult:
        return SpamResult(self.name, error=f"{text} ({self.address})")
