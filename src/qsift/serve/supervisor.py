"""`qsift serve`: the parent. Bind, drop privileges, fork the workers, keep them alive, reload, stop.

The parent holds no event loop and reads no mail: it binds every listener once, so all workers accept
from the same sockets (a connection waiting in the backlog survives a worker's death), forks `workers`
copies of the serving process (daemon.py), and then only waits for signals:

- a worker that exits is replaced at once (after a crash the log says how it died; a worker that
  reached `max_requests` exits 0 and is replaced as planned); a worker that keeps dying right after
  start is restarted more slowly, so a broken scanner library cannot turn into a fork storm;
- SIGHUP reads the configuration again: a bad one is refused, logged, and the old one kept; a good one
  starts fresh workers and lets the old ones finish their messages (listeners that appeared are bound,
  ones that went away are closed once their workers are gone);
- SIGTERM or SIGINT pass the signal on, wait up to `drain_timeout` for the workers to finish their
  messages, then kill what is left (its clients see a dropped connection and retry) and exit;
- SIGUSR1 asks every worker to write its status file (`qsift status` prints them).

A session in a killed worker is cut before its answer, so its client retries: nothing is half
delivered (a message forwarded but not answered is answered from the outcome record on the retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qsift import config as config_module
from qsift.config import Config, ListenAddress
from qsift.errors import ConfigError, StoreUnreachable
from qsift.observe import log, metrics
from qsift.observe.log import logger
from qsift.serve import memory, privileges
from qsift.serve.daemon import Daemon
from qsift.serve.keys import SiteKeys, load_keys
from qsift.serve.release_server import release_socket_name
from qsift.serve.status import status_dir
from qsift.store.settings import StoreSettings

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
#: A worker that dies sooner than this after its start counts as a crash loop.
_EARLY_DEATH = 2.0
_MAX_BACKOFF = 10.0
#: How long the parent waits for the workers to bind and say they are ready.
_READY_TIMEOUT = 60.0


class NotServing(Exception):
    """Not every worker of the first generation could serve: the daemon does not start."""


@dataclass
class _Worker:
    index: int
    pid: int
    started: float
    generation: int


@dataclass
class Supervisor:
    config: Config
    #: Where the configuration came from, for SIGHUP; None: embedded defaults (nothing to reload).
    config_path: str | None
    workers: dict[int, _Worker] = field(default_factory=dict)
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    generation: int = 0
    stopping: bool = False
    #: Consecutive early deaths, for the restart backoff.
    early_deaths: int = 0
    keys: SiteKeys | None = None
    #: Listener sockets of an older configuration, closed once no worker of it is left.
    retired: list[tuple[int, socket.socket]] = field(default_factory=list)
    on_ready: Callable[[], None] | None = None
    #: The process serving the Prometheus endpoint, when `[metrics] address` is set.
    metrics_pid: int = 0

    def run(self) -> int:
        os.umask(0o077)
        user = privileges.run_as(self.config)
        if user is not None:
            privileges.check_can_run(user)
        privileges.prepare_private_dirs(self.config, user)
        self.keys = load_keys(self.config, (user.uid, user.gid) if user is not None else None)
        self.sockets = {name: bind_address(*how) for name, how in _sockets_wanted(self.config).items()}
        if user is not None:
            # As amavisd-new's amavisd.sock is amavis:amavis: the group qsift runs as may release.
            for address in self.config.release.listen:
                if address.path is not None:
                    os.chown(address.path, user.uid, user.gid)
        _write_pid_file(self.config)
        if user is not None:
            privileges.import_before_drop()
            privileges.drop(user)
        if self.config.store.url:
            _check_shared_store(self.config.store)  # as the run user, who has the ~/.pgpass
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        memory.prepare_workers()
        if self.config.metrics.address:
            # After the drop (the files must be the workers'), before the first fork.
            metrics.setup(os.path.join(self.config.state_dir, "metrics"))
            self._spawn_metrics()
        ready = self._start_generation()
        if ready < self.config.worker_count:
            self.stopping = True
            self._shut_down()
            raise NotServing(
                f"{ready} of {self.config.worker_count} workers could serve (their errors are above)"
            )
        return self._loop()

    def _spawn_metrics(self) -> None:
        """The Prometheus endpoint in a process of its own: the parent stays free of event loops and
        threads, so that its forks are safe."""
        address = self.config.metrics.address
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                for signum in _SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                for sock in self.sockets.values():
                    sock.close()
                asyncio.run(_serve_metrics(address))
                code = 0
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    logger.error("metrics endpoint %s: %s", address, exc)
            finally:
                with contextlib.suppress(BaseException):
                    log.flush()
                os._exit(code)
        self.metrics_pid = pid

    def _start_generation(self) -> int:
        """Start a set of workers; how many of them proved they can serve. "Ready" only if all did."""
        self.generation += 1
        count = self.config.worker_count
        ready_r, ready_w = os.pipe()
        for index in range(count):
            self._spawn(index, ready_w, ready_r)
        os.close(ready_w)
        ready = _wait_ready(ready_r, count, _READY_TIMEOUT)
        os.close(ready_r)
        if ready < count:
            logger.error("only %d of %d worker(s) could serve", ready, count)
            return ready
        config = self.config
        logger.warning(
            "qsift ready: %s; forward %s; %d worker(s), max_servers %d",
            ", ".join(_sockets_wanted(config)),
            config.forward.method,
            count,
            config.max_servers,
        )
        if self.on_ready is not None:
            self.on_ready()
        return ready

    def _spawn(self, index: int, ready_w: int = -1, ready_r: int = -1) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                if ready_r >= 0:
                    os.close(ready_r)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                code = _serve_as_worker(self.config, self.sockets, index, self.keys, ready_w)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    logger.exception("worker %d: %s", index, exc)
            finally:
                with contextlib.suppress(BaseException):
                    log.flush()
                os._exit(code)
        self.workers[pid] = _Worker(index, pid, time.monotonic(), self.generation)

    def _loop(self) -> int:
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if info is not None:
                self._on_signal(info.si_signo)
            self._reap()
            if self.stopping and not self.workers:
                logger.warning("qsift stopped")
                return 0

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop(signum)
        elif signum == signal.SIGHUP and not self.stopping:
            self._reload()
        elif signum == signal.SIGUSR1:
            self._broadcast(signal.SIGUSR1)
            logger.warning("SIGUSR1: workers write their status to %s", status_dir(self.config.state_dir))

    def _stop(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.warning(
            "%s: stopping %d worker(s), %.0f s to finish their messages",
            signal.Signals(signum).name,
            len(self.workers),
            self.config.drain_timeout,
        )
        self._shut_down()

    def _shut_down(self) -> None:
        """Stop every worker (`drain_timeout` to finish, then killed) and the metrics endpoint; close
        the listeners."""
        self._broadcast(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + 5
        while self.workers and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.5)
            self._reap()
        for pid in list(self.workers):
            logger.error("worker pid %d did not stop in time: killed; its clients will retry", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.workers:
            self._reap(block=True)
        if self.metrics_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.metrics_pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.metrics_pid, 0)
            self.metrics_pid = 0
        for sock in self.sockets.values():
            _close_listener(sock)

    def _reload(self) -> None:
        if self.config_path is None:
            logger.warning("SIGHUP: running on embedded defaults, nothing to reload")
            return
        try:
            new = config_module.load(self.config_path)
            _check_reloadable(self.config, new)
            keys = load_keys(new)
        except ConfigError as exc:
            logger.error("SIGHUP: %s; keeping the running configuration", exc)
            return
        log.setup(new.log_level, new.syslog, threaded=False)
        old_names = set(self.sockets)
        wanted = _sockets_wanted(new)
        for name, how in wanted.items():
            if name not in self.sockets:
                try:
                    self.sockets[name] = bind_address(*how)
                except OSError as exc:
                    logger.error("SIGHUP: cannot bind %s: %s; keeping the running configuration", name, exc)
                    return
        for name in old_names - set(wanted):
            self.retired.append((self.generation, self.sockets.pop(name)))
        old = [pid for pid, worker in self.workers.items() if worker.generation == self.generation]
        self.config, self.keys = new, keys
        logger.warning("SIGHUP: configuration %s read; replacing %d worker(s)", self.config_path, len(old))
        self._start_generation()
        for pid in old:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self, *, block: bool = False) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            if pid == self.metrics_pid:
                self._after_metrics_exit(status)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None:
                metrics.worker_gone(pid)
                self._after_exit(worker, status)
            if block:
                return

    def _after_metrics_exit(self, status: int) -> None:
        self.metrics_pid = 0
        if not self.stopping:
            code = os.waitstatus_to_exitcode(status)
            logger.error("metrics endpoint exited (%s); starting it again", code)
            time.sleep(1)
            self._spawn_metrics()

    def _after_exit(self, worker: _Worker, status: int) -> None:
        lived = time.monotonic() - worker.started
        code = os.waitstatus_to_exitcode(status)
        if self.stopping or worker.generation != self.generation:
            self._close_retired()
            return
        metrics.worker_restarted("max_requests" if code == 0 else "crash")
        if code == 0:
            logger.info(
                "worker %d (pid %d) made way for a fresh one (max_requests)", worker.index, worker.pid
            )
            self.early_deaths = 0
        else:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            logger.error(
                "worker %d (pid %d) died (%s) after %.1f s; starting another",
                worker.index,
                worker.pid,
                how,
                lived,
            )
            self.early_deaths = self.early_deaths + 1 if lived < _EARLY_DEATH else 0
            if self.early_deaths > 3:
                pause = min(_MAX_BACKOFF, 0.5 * 2 ** (self.early_deaths - 3))
                logger.error("workers keep dying at start: waiting %.1f s before the next", pause)
                time.sleep(pause)
        self._spawn(worker.index)

    def _close_retired(self) -> None:
        live = {worker.generation for worker in self.workers.values()}
        for generation, sock in list(self.retired):
            if generation not in live:
                _close_listener(sock)
                self.retired.remove((generation, sock))

    def _broadcast(self, signum: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _serve_as_worker(
    config: Config, sockets: dict[str, socket.socket], index: int, keys: SiteKeys | None, ready_w: int
) -> int:
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    log.setup(config.log_level, config.syslog)  # the worker's own writer thread

    async def main() -> bool:
        daemon = Daemon(config, sockets=sockets, index=index, workers=config.worker_count, keys=keys)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait(
            {task, asyncio.create_task(daemon.ready.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if daemon.ready.is_set() and ready_w >= 0:
            os.write(ready_w, b"R")
            os.close(ready_w)
        await task
        return daemon.recycled

    asyncio.run(main())
    return 0


async def _serve_metrics(address: str) -> None:
    server = await metrics.serve(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def _sockets_wanted(config: Config) -> dict[str, tuple[ListenAddress, int]]:
    """Every socket the workers share, by name: the mail listeners', then the AM.PDP release sockets."""
    wanted = {
        listener.name: (listener.address, listener.limits.max_sessions) for listener in config.listeners
    }
    for address in config.release.listen:
        wanted[release_socket_name(address)] = (address, 16)
    return wanted


def bind_address(address: ListenAddress, backlog: int) -> socket.socket:
    """A listening socket on `address`, to be shared by the workers."""
    if address.path is not None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(address.path).st_mode):
                os.unlink(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
        os.chmod(address.path, 0o660)
    else:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
    sock.listen(max(128, backlog))
    sock.setblocking(False)
    return sock


def _close_listener(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()
            if isinstance(path, str) and path:
                os.unlink(path)
    sock.close()


def _wait_ready(fd: int, count: int, timeout: float) -> int:
    """How many workers said they are ready before `timeout` (each writes one byte)."""
    ready, deadline = 0, time.monotonic() + timeout
    while ready < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        data = os.read(fd, count)
        if not data:  # every writer gone: the others died before binding
            break
        ready += len(data)
    return ready


def _check_reloadable(old: Config, new: Config) -> None:
    """Settings a reload cannot change in a running parent: they need a restart."""
    for name, before, after in (
        ("user", old.user, new.user),
        ("group", old.group, new.group),
        ("state_dir", old.state_dir, new.state_dir),
        ("[metrics] address", old.metrics.address, new.metrics.address),
    ):
        if before != after:
            raise ConfigError(f"{name} changed: restart qsift to apply it")


def _check_shared_store(settings: StoreSettings) -> None:
    """ConfigError unless the shared store answers and has this qsift's schema: found once at start,
    not by every message (which would be answered Z). The connection is closed before any fork."""
    from qsift.store.pg_migrate import StoreNotWritable, require_latest
    from qsift.store.postgres import connect

    try:
        with connect(settings) as db:
            require_latest(db)
    except (StoreUnreachable, StoreNotWritable) as exc:
        raise ConfigError(str(exc)) from None


def _write_pid_file(config: Config) -> None:
    path = os.path.join(config.state_dir, "qsift.pid")
    with open(path, "w", encoding="ascii") as stream:
        stream.write(f"{os.getpid()}\n")


def read_pid(config: Config) -> int | None:
    try:
        with open(os.path.join(config.state_dir, "qsift.pid"), encoding="ascii") as stream:
            return int(stream.read().strip())
    except (OSError, ValueError):
        return None


def main(config: Config, config_path: str | None) -> int:
    log.setup(config.log_level, config.syslog, threaded=False)
    try:
        return Supervisor(config, config_path).run()
    except ConfigError as exc:
        print(f"qsift: cannot start: {exc}", file=sys.stderr)
        return 2
    except NotServing as exc:
        print(f"qsift: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qsift: cannot start: {exc}", file=sys.stderr)
        return 1
