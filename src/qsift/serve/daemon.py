"""The daemon: bind the listeners, serve until told to stop, drain, exit.

Foreground only (daemontools and systemd supervise it); logs go to stderr unless syslog is configured.
SIGTERM and SIGINT stop accepting at once and give in-flight sessions `drain_timeout` seconds to finish;
sessions still running then are cut, which their clients see as a temporary failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from qsift.act.bounce import DsnBouncer
from qsift.act.forward import make_forwarder
from qsift.act.notices import Notices
from qsift.checks.scanner_config import describe
from qsift.checks.scanner_set import ScannerSet
from qsift.config import Config, Listener
from qsift.listen.qmqp import QmqpListener
from qsift.listen.smtp import SmtpListener
from qsift.observe.log import logger
from qsift.pipeline import Pipeline
from qsift.spool import make_private_dir
from qsift.store.outcomes import OutcomeStore
from qsift.store.quarantine import Quarantine

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DRAIN_TIMEOUT = 60.0


@dataclass
class Daemon:
    config: Config
    drain_timeout: float = DRAIN_TIMEOUT
    handle_signals: bool = True
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    servers: list[asyncio.Server] = field(default_factory=list)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`), then drain and clean up."""
        spool_dir = make_private_dir(self.config.tmp_dir or None)
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        outcomes = OutcomeStore(os.path.join(self.config.state_dir, "outcomes.sqlite"))
        scanners = ScannerSet.build(self.config.virus, self.config.spam, self.config.tmp_dir or None)
        config = self.config
        quarantine = Quarantine(config.quarantine_dir)
        bouncer = DsnBouncer(
            make_forwarder(config.notify, config.myhostname),
            config.myhostname,
            re.compile(config.viruses_that_fake_sender, re.IGNORECASE),
        )
        pipeline = Pipeline(
            make_forwarder(config.forward, config.myhostname),
            outcomes,
            config.dedupe_window,
            checks=config.check_settings(),
            scanners=scanners,
            policies=config.policies,
            bounce=bouncer,
            refusal_notice=bouncer.refused,
            notices=Notices(
                make_forwarder(config.notify, config.myhostname), config.myhostname, config.notify_templates
            ),
            hostname=config.myhostname,
            quarantine=quarantine,
            site_key=_site_key(config),
            marking=config.mark.enabled,
        )
        try:
            for listener in self.config.listeners:
                await self._bind(listener, self._handler_for(listener, pipeline, spool_dir))
            if self.handle_signals:
                self._install_signals()
            self.ready.set()
            logger.warning(
                "qsift ready: %s; forward %s",
                ", ".join(listener.name for listener in self.config.listeners),
                pipeline.forwarder.method,
            )
            await self._greet_scanners(scanners)
            await self.stopping.wait()
            await self._drain()
        finally:
            for server in self.servers:
                server.close()
            outcomes.close()
            quarantine.close()
            await scanners.close()
            shutil.rmtree(spool_dir, ignore_errors=True)
            logger.warning("qsift stopped")

    async def _greet_scanners(self, scanners: ScannerSet) -> None:
        """Say which scanners are configured and whether they answer; a silent one is logged, not fatal
        (it may come up later; until then every message waits, as DESIGN.md invariant 4 wants)."""
        config = self.config
        logger.warning(
            "virus scanners: %s; backups: %s; spam: %s",
            describe(config.virus.scanners),
            describe(config.virus.backup_scanners),
            f"{config.spam.type} {config.spam.address}" if config.spam.type else "none",
        )
        for name, version in await scanners.health():
            if version:
                logger.info("%s answers: %s", name, version)
            else:
                logger.error("%s does not answer at start-up", name)

    def stop(self) -> None:
        self.stopping.set()

    def _handler_for(self, listener: Listener, pipeline: Pipeline, spool_dir: str) -> Handler:
        serve: Handler
        if listener.protocol == "qmqp":
            serve = QmqpListener(listener, pipeline, spool_dir).handle
        else:
            serve = SmtpListener(listener, pipeline, spool_dir, self.config.myhostname).handle

        async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.sessions.add(task)
            try:
                await serve(reader, writer)
            finally:
                self.sessions.discard(task)

        return track

    async def _bind(self, listener: Listener, handler: Handler) -> None:
        address = listener.address
        if address.path is not None:
            _remove_stale_socket(address.path)
            server = await asyncio.start_unix_server(handler, address.path)
            os.chmod(address.path, 0o660)
        else:
            server = await asyncio.start_server(handler, address.host, address.port, reuse_address=True)
        self.servers.append(server)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int) -> None:
        logger.warning(
            "%s: stop accepting, draining %d session(s)", signal.Signals(signum).name, len(self.sessions)
        )
        self.stop()

    def _on_hup(self) -> None:
        logger.warning("SIGHUP: configuration reload is not implemented yet; restart to apply changes")

    async def _drain(self) -> None:
        for server in self.servers:
            server.close()
        if not self.sessions:
            return
        _, pending = await asyncio.wait(set(self.sessions), timeout=self.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("drain timeout: cut %d session(s); their clients will retry", len(pending))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pending, timeout=5)


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _site_key(config: Config) -> bytes:
    """The site's secret, made at the first start: 32 random bytes in a 0600 file. It keys the
    X-Qsift-Scanned mark and checks qsift-queue's X-Qsift-Client field, so it is read even when marking
    is off (`[mark] key_file` names it; qsift-queue reads it through $QSIFT_MARK_KEY)."""
    path = config.mark.key_file or os.path.join(config.state_dir, "mark.key")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(os.urandom(32))
            stream.flush()
            os.fsync(stream.fileno())
    with open(path, "rb") as stream:
        return stream.read()
