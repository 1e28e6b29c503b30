"""A downstream MTA for tests: a real SMTP or LMTP listener on loopback whose replies a test scripts.

It stands where Postfix's re-injection port, the HOWTO's second qmail-smtpd or an LMTP delivery agent
stands, and can be told to answer 250, 4xx or 5xx at any step, to limit recipients per transaction
(452), to never greet, or to hang after the final dot. Written independently of qsift's own codecs (a
plain line reader, RFC 5321 and RFC 2033 read literally) so it can catch their mistakes rather than share
them. Everything it receives is kept, byte for byte, for the test to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

#: Longest line the fake takes (a real MTA takes any length in DATA; tests send 1 MB header lines).
_LINE_LIMIT = 16 * 1024 * 1024


@dataclass
class Script:
    lmtp: bool = False
    greeting: str = "220 sink.test ESMTP fake"
    never_greet: bool = False
    pipelining: bool = True
    smtputf8: bool = True
    dsn: bool = True
    #: False: EHLO answers 502 (an RFC 821 server), and the client must fall back to HELO.
    esmtp: bool = True
    mail_reply: str = "250 2.1.0 Ok"
    #: Replies to RCPT by address; others get 250.
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: Recipients per transaction; more get 452 4.5.3.
    max_recipients: int | None = None
    data_reply: str = "354 End data with <CR><LF>.<CR><LF>"
    #: The reply after the dot (SMTP); "{id}" becomes the queue id.
    final_reply: str = "250 2.0.0 Ok: queued as {id}"
    #: LMTP: replies after the dot by recipient; others get final_reply.
    lmtp_final: dict[str, str] = field(default_factory=dict)
    #: Seconds before the reply to the dot.
    final_delay: float = 0.0
    #: Never answer the dot (the forward must time out).
    hang_after_dot: bool = False
    #: The reply to QUIT; None: say nothing and keep the connection open.
    quit_reply: str | None = "221 2.0.0 Bye"
    #: Sessions served at once, as tcpserver -c: the others wait, connected but not greeted.
    max_connections: int | None = None
    #: The XFORWARD attributes offered after EHLO, as Postfix's smtpd to an authorized host; "" none.
    xforward: str = ""
    xforward_reply: str = "250 2.0.0 Ok"
    #: The reply to RSET ("421 ..." as a server about to close says it).
    rset_reply: str = "250 2.0.0 Ok"


@dataclass
class Delivery:
    sender: bytes
    recipients: list[bytes]
    #: What came between DATA and the dot, exactly as sent (still dot-stuffed, CRLF line ends).
    raw: bytes
    queue_id: str
    #: Whether the final reply was accepting: only then is this a delivery.
    accepted: bool

    @property
    def body(self) -> bytes:
        """The message with the dot-stuffing undone."""
        return b"".join(
            line[1:] if line.startswith(b".") else line for line in self.raw.splitlines(keepends=True)
        )


class FakeMta:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.deliveries: list[Delivery] = []
        self.transcript: list[bytes] = []
        self.connections = 0
        #: Set as soon as a whole message (up to the dot) has arrived, before any reply to it.
        self.data_received = asyncio.Event()
        #: Set when a client says QUIT, before the reply to it.
        self.quit_received = asyncio.Event()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.port = 0
        self._slots = asyncio.Semaphore(self.script.max_connections or 1_000_000)
        #: The most sessions served at once.
        self.peak = 0
        self._serving = 0

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.accepted]

    async def start(self, unix_path: str | None = None) -> int:
        if unix_path is not None:
            self._server = await asyncio.start_unix_server(self._serve, unix_path, limit=_LINE_LIMIT)
            return 0
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_LINE_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def drop_sessions(self) -> None:
        """Close every open session at once, as a server timing out idle clients does."""
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            async with self._slots:
                self._serving += 1
                self.peak = max(self.peak, self._serving)
                try:
                    await self._session(reader, writer)
                finally:
                    self._serving -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        if script.never_greet:
            await reader.read()  # until the client gives up
            return
        say = _Replier(writer)
        await say(script.greeting)
        sender: bytes | None = None
        recipients: list[bytes] = []
        while line := await reader.readline():
            self.transcript.append(line)
            assert line.endswith(b"\r\n"), f"command without CRLF: {line!r}"
            command = line[:-2]
            verb = command[:4].upper()
            if verb in (b"EHLO", b"LHLO") and script.esmtp:
                await say(*self._capabilities())
            elif verb in (b"EHLO", b"LHLO"):
                await say("502 5.5.1 No ESMTP here")
            elif verb == b"XFOR" and script.xforward:
                await say(script.xforward_reply)
            elif verb == b"HELO":
                await say("250 sink.test")
            elif verb == b"MAIL":
                sender = _path(command)
                recipients = []
                await say(script.mail_reply)
            elif verb == b"RCPT":
                address = _path(command)
                if script.max_recipients is not None and len(recipients) >= script.max_recipients:
                    await say("452 4.5.3 Too many recipients")
                    continue
                reply = script.rcpt_replies.get(address.decode(), "250 2.1.5 Ok")
                if reply.startswith("2") and script.mail_reply.startswith("2"):
                    recipients.append(address)
                await say(reply)
            elif verb == b"DATA":
                if sender is None or not recipients or not script.mail_reply.startswith("2"):
                    await say("554 5.5.1 Error: no valid recipients")
                    continue
                await say(script.data_reply)
                if script.data_reply.startswith("354"):
                    await self._message(reader, say, sender, recipients)
                sender, recipients = None, []
            elif verb == b"RSET":
                sender, recipients = None, []
                await say(script.rset_reply)
            elif verb == b"QUIT":
                self.quit_received.set()
                if script.quit_reply is None:
                    await reader.read()
                else:
                    await say(script.quit_reply)
                return
            else:
                await say("502 5.5.2 Error: command not recognized")

    def _capabilities(self) -> list[str]:
        script = self.script
        words = ["sink.test", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
        words += ["PIPELINING"] * script.pipelining + ["SMTPUTF8"] * script.smtputf8 + ["DSN"] * script.dsn
        words += [f"XFORWARD {script.xforward}"] * bool(script.xforward)
        return [f"250{'-' if i < len(words) - 1 else ' '}{w}" for i, w in enumerate(words)]

    async def _message(
        self, reader: asyncio.StreamReader, say: _Replier, sender: bytes, recipients: list[bytes]
    ) -> None:
        raw = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b".\r\n":
                break
            raw += line
        queue_id = f"SINK{next(self._ids)}"
        script = self.script
        self.data_received.set()
        if script.hang_after_dot:
            await asyncio.sleep(3600)
        await asyncio.sleep(script.final_delay)
        if script.lmtp:
            replies = [script.lmtp_final.get(r.decode(), script.final_reply) for r in recipients]
        else:
            replies = [script.final_reply]
        replies = [r.format(id=queue_id) for r in replies]
        per_recipient = replies if script.lmtp else replies * len(recipients)
        accepted = [r for r, reply in zip(recipients, per_recipient, strict=True) if reply[0] == "2"]
        if accepted:
            self.deliveries.append(Delivery(sender, accepted, bytes(raw), queue_id, True))
        for reply in replies:
            await say(reply)


class _Replier:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def __call__(self, *lines: str) -> None:
        self._writer.write(b"".join(line.encode() + b"\r\n" for line in lines))
        await self._writer.drain()


def _path(command: bytes) -> bytes:
    start, end = command.find(b"<"), command.find(b">")
    assert 0 <= start < end, f"no <path> in {command!r}"
    return command[start + 1 : end]


@contextlib.asynccontextmanager
async def fake_mta(script: Script | None = None, unix_path: str | None = None) -> AsyncIterator[FakeMta]:
    mta = FakeMta(script)
    await mta.start(unix_path)
    try:
        yield mta
    finally:
        await mta.stop()
