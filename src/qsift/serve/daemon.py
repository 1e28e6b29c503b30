"""One serving process: the listeners, the pipeline, until told to stop; then drain and exit.

`qsift serve` runs several of these as worker processes under a parent (supervisor.py) that bound the
listening sockets and hands them over; tests run one in-process, binding its own. SIGTERM and SIGINT
stop accepting at once and give in-flight sessions `drain_timeout` seconds to finish; sessions still
running then are cut, which their clients see as a temporary failure. After `max_requests` messages the
worker stops the same way, and its parent starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from qsift.checks.scanner_config import describe
from qsift.config import Config, ListenAddress, Listener
from qsift.listen.admission import SessionSlots
from qsift.listen.qmqp import QmqpSession
from qsift.listen.shell import Listening, SessionOpener, serve_connection
from qsift.listen.smtp import smtp_sessions
from qsift.observe.log import logger
from qsift.pipeline import Pipeline, build_pipeline, open_quarantine
from qsift.serve.accept import Acceptor
from qsift.serve.keys import SiteKeys, load_keys
from qsift.serve.release_server import ReleaseDesk, release_socket_name, serve_release_connection
from qsift.serve.status import SessionInfo, status_dir, write_status
from qsift.spool import make_private_dir

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DRAIN_TIMEOUT = 60.0


@dataclass
class Daemon:
    config: Config
    drain_timeout: float = DRAIN_TIMEOUT
    handle_signals: bool = True
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    servers: list[asyncio.Server] = field(default_factory=list)
    #: Who accepts on the sockets the parent bound (those are shared with the other workers).
    acceptors: list[Acceptor] = field(default_factory=list)
    #: Each listener's slots, whose releases wake the acceptors.
    slots: list[SessionSlots] = field(default_factory=list)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    #: Connections accepted and not yet finished, counted when asyncio makes their protocol: that is
    #: a few loop turns before the session task exists, and the drain must not miss them.
    accepted: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Listening sockets the parent bound, by listener name; None: bind them here.
    sockets: Mapping[str, socket.socket] | None = None
    #: Which worker this is (for the log and the status file); -1 when it runs alone.
    index: int = -1
    #: How many workers share max_servers (this one gets its share).
    workers: int = 1
    #: The keys, read by the parent; None: read (or make) them here.
    keys: SiteKeys | None = None
    #: What each session is doing, for SIGUSR1 / `qsift status`.
    activity: dict[asyncio.Task[None], SessionInfo] = field(default_factory=dict)
    #: Whether the worker stopped because it reached max_requests (its parent replaces it).
    recycled: bool = False
    #: Seconds between clear-outs of the outcome record and the quarantine (by one worker only).
    housekeeping_every: float = 3600.0

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`): build, bind, say ready, wait, drain; then close."""
        async with contextlib.AsyncExitStack() as closing:  # undone in reverse, whatever happens
            closing.callback(self._say_stopped)
            self.pipeline = pipeline = self._build()
            closing.push_async_callback(pipeline.close)
            spool_dir = make_private_dir(self.config.tmp_dir or None)
            closing.callback(shutil.rmtree, spool_dir, ignore_errors=True)
            closing.callback(self._stop_listening)
            await self._bind_all(pipeline, spool_dir)
            if self.config.release.listen:
                quarantine = open_quarantine(self.config)  # its pool opens at the first release
                closing.callback(quarantine.close)
                await self._bind_releases(ReleaseDesk(quarantine, pipeline.forwarder))
            self._ready(pipeline)
            if self.index <= 0:  # one worker says it and clears out for all
                await self._greet_scanners(pipeline)
                housekeeping = asyncio.create_task(self._housekeeping(pipeline))
                closing.push_async_callback(_cancel, housekeeping)
            await self.stopping.wait()
            await self._drain()

    def _build(self) -> Pipeline:
        config = self.config
        keys = self.keys if self.keys is not None else load_keys(config)
        return build_pipeline(
            config,
            client_key=keys.client,
            mark_key=keys.mark,
            dkim_keys=keys.dkim,
            arc_key=keys.arc,
            workers=self.workers,
        )

    async def _bind_all(self, pipeline: Pipeline, spool_dir: str) -> None:
        # The outcome record's writes, the quarantine and the maildir forward work in threads: a worker
        # whose threads cannot start (or cannot read the record) cannot serve, and must fail here rather
        # than say ready and drop every connection after its forward. A shared record opens its pool
        # here, after the fork, and checks the schema. The local record's lookup reads on the event
        # loop, so the threads get a round trip of their own.
        await pipeline.outcomes.lookup(("",), 0.0)
        await asyncio.to_thread(int)
        for listener in self.config.listeners:
            handler, slots = self._handler_for(listener, pipeline, spool_dir)
            await self._bind(listener, handler, slots)
            self.slots.append(slots)
        # A slot coming free on one listener also frees its message's share of max_servers, which
        # every listener's acceptor may be waiting for.
        for slots in self.slots:
            slots.on_release += [acceptor.room_changed for acceptor in self.acceptors]

    async def _bind_releases(self, desk: ReleaseDesk) -> None:
        """The AM.PDP release sockets (serve/release_server.py), accepted from as a mail listener's."""
        settings = self.config.release
        for address in settings.listen:
            serve = functools.partial(
                serve_release_connection, desk, settings=settings, unix=address.path is not None
            )

            async def track(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, serve: Handler = serve
            ) -> None:
                task = asyncio.current_task()
                assert task is not None
                self.sessions.add(task)
                try:
                    await serve(reader, writer)
                finally:
                    self.sessions.discard(task)
                    self._finished()

            await self._bind_address(release_socket_name(address), address, track, lambda: True)

    def _ready(self, pipeline: Pipeline) -> None:
        if self.handle_signals:
            self._install_signals()
        self.ready.set()
        if self.index < 0:
            logger.warning(
                "qsift ready: %s; forward %s",
                ", ".join(listener.name for listener in self.config.listeners),
                pipeline.forwarder.method,
            )

    def _stop_listening(self) -> None:
        for acceptor in self.acceptors:
            acceptor.stop()
        for server in self.servers:
            server.close()

    def _say_stopped(self) -> None:
        if self.index < 0:
            logger.warning("qsift stopped")
        else:
            logger.info("worker %d stopped", self.index)

    async def _housekeeping(self, pipeline: Pipeline) -> None:
        """Keep the durable state bounded: outcome records past the dedupe window go (they can no longer
        answer a retry), the message log past `[store] log_days`, and quarantined mail past `[quarantine]
        max_age_days` when that is set."""
        config = self.config
        while True:
            now = time.time()
            try:
                # A shared record is purged by one node at a time (the others find it locked and skip).
                gone = await pipeline.outcomes.purge(now - config.dedupe_window)
                if gone:
                    logger.info("outcome record: %d entries past the dedupe window removed", gone)
                days = config.store.log_days
                if days:
                    # Shared as the record is: one node at a time.
                    gone = await pipeline.message_log.purge(now - days * 86400)
                    if gone:
                        logger.info("message log: %d messages older than %d days deleted", gone, days)
                days = config.quarantine.max_age_days
                if days:
                    gone = await asyncio.to_thread(pipeline.quarantine.purge, now - days * 86400)
                    if gone:
                        logger.info("quarantine: %d messages older than %d days deleted", gone, days)
            except Exception as exc:  # housekeeping must never stop mail
                logger.error("housekeeping: %s", exc)
            await asyncio.sleep(self.housekeeping_every)

    async def _greet_scanners(self, pipeline: Pipeline) -> None:
        """Say which scanners are configured and whether they answer; a silent one is logged, not fatal
        (it may come up later; until then every message waits, as DESIGN.md invariant 4 wants)."""
        config = self.config
        logger.warning(
            "virus scanners: %s; backups: %s; spam: %s",
            describe(config.virus.scanners),
            describe(config.virus.backup_scanners),
            f"{config.spam.type} {config.spam.address}" if config.spam.type else "none",
        )
        for name, version in await pipeline.checks.health():
            if version:
                logger.info("%s answers: %s", name, version)
            else:
                logger.error("%s does not answer at start-up", name)

    def stop(self) -> None:
        self.stopping.set()

    def _handler_for(
        self, listener: Listener, pipeline: Pipeline, spool_dir: str
    ) -> tuple[Handler, SessionSlots]:
        listening = Listening(listener, pipeline, spool_dir)
        open_session: SessionOpener
        if listener.protocol == "qmqp":
            open_session = functools.partial(QmqpSession, listening)
        else:
            open_session = smtp_sessions(listening, self.config.myhostname)
        serve = functools.partial(serve_connection, listening, open_session)

        async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.sessions.add(task)
            self.activity[task] = SessionInfo(listener.name, _peer(writer), time.time())
            try:
                await serve(reader, writer)
            finally:
                self.sessions.discard(task)
                self.activity.pop(task, None)
                self._finished()
                self._recycle_if_due()

        return track, listening.slots

    def _protocols(self, handler: Handler) -> Callable[[], asyncio.Protocol]:
        """What asyncio.start_server would make per connection, counted when the connection is accepted."""
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            self.accepted += 1
            self.idle.clear()
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), handler, loop=loop)

        return make

    def _finished(self) -> None:
        self.accepted -= 1
        if self.accepted <= 0:
            self.accepted = 0
            self.idle.set()

    def _recycle_if_due(self) -> None:
        limit = self.config.max_requests
        if limit and not self.stopping.is_set() and self.pipeline.handled >= limit:
            logger.info(
                "worker %d: %d messages handled (max_requests): making way for a fresh one",
                self.index,
                self.pipeline.handled,
            )
            self.recycled = True
            self.stop()

    def write_status(self, directory: str) -> None:
        """Say what this worker is doing, for `qsift status` (amavisd-nanny's view)."""
        write_status(directory, self.index, self.pipeline.handled, list(self.activity.values()))

    async def _bind(self, listener: Listener, handler: Handler, slots: SessionSlots) -> None:
        pipeline = self.pipeline
        await self._bind_address(
            listener.name, listener.address, handler, lambda: not slots.full and not pipeline.full
        )

    async def _bind_address(
        self, name: str, address: ListenAddress, handler: Handler, has_room: Callable[[], bool]
    ) -> None:
        loop = asyncio.get_running_loop()
        protocols = self._protocols(handler)
        if self.sockets is not None:
            # Shared with the other workers: accept only while this one has room (serve/accept.py).
            acceptor = Acceptor(self.sockets[name], protocols, has_room)
            acceptor.start()
            self.acceptors.append(acceptor)
            return
        if address.path is not None:
            _remove_stale_socket(address.path)
            server = await loop.create_unix_server(protocols, address.path)
            os.chmod(address.path, 0o660)
        else:
            assert address.port is not None  # an address is a socket path or has a port
            server = await loop.create_server(protocols, address.host, address.port, reuse_address=True)
        self.servers.append(server)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)

    def _on_stop_signal(self, signum: int) -> None:
        logger.warning(
            "%s: stop accepting, draining %d session(s)", signal.Signals(signum).name, len(self.sessions)
        )
        self.stop()

    def _on_hup(self) -> None:
        # The parent reloads (it starts workers with the new configuration); a worker has nothing to do.
        logger.info("worker %d: SIGHUP is for the parent process", self.index)

    def _on_usr1(self) -> None:
        try:
            self.write_status(status_dir(self.config.state_dir))
        except OSError as exc:
            logger.error("worker %d: cannot write its status: %s", self.index, exc)

    async def _drain(self) -> None:
        # A connection the loop has accepted gets its transport (and is counted) in a task already
        # queued; a Server closed before that task runs drops the connection (asyncio asserts the server
        # is open when the transport attaches), leaving the client waiting for an answer. So: stop
        # accepting, give those tasks one turn, and only then close. With shared sockets this is the
        # common case: the other workers keep accepting while this one makes way.
        loop = asyncio.get_running_loop()
        for acceptor in self.acceptors:
            acceptor.stop()
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        for server in self.servers:
            server.close()
        if self.accepted == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), self.drain_timeout)
        pending = set(self.sessions)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("drain timeout: cut %d session(s); their clients will retry", len(pending))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pending, timeout=5)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
