"""Prometheus metrics, summed over the daemon and its workers; every call is a no-op until `setup`.

prometheus_client's multiprocess mode: each process writes its own `<type>_<pid>.db` files in one
directory and a scrape sums them (docs: prometheus.github.io/client_python/multiprocess). The library
chooses that storage once, when it is first imported, from PROMETHEUS_MULTIPROC_DIR; so the parent calls
`setup` before it imports prometheus_client and before it forks a worker, and every worker inherits both
the variable and the metrics. Upstream suggests setting the variable in a start-up script, so that it is
there before anything imports the library; `setup` checks that instead (it refuses to run once
prometheus_client is imported). Without `setup` (tests, `qsift scan`, `[metrics] address` unset) nothing
is imported or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from qsift.errors import ConfigError
from qsift.observe.log import logger

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from qsift.model import Reply

_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds. A stage takes from a millisecond (decoding a small message) to minutes (a large message from
#: a slow client, a command-line scanner at its time limit).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: A scrape request's head is one short line and a few fields; anything longer is not Prometheus.
_REQUEST_LIMIT = 8192
_REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Metrics:
    directory: str
    messages: Counter
    recipients: Counter
    answers: Counter
    stage_seconds: Histogram
    scanner_seconds: Histogram
    scanner_errors: Counter
    sessions: Gauge
    busy: Counter
    quarantined: Counter
    dsn: Counter
    worker_restarts: Counter


_metrics: _Metrics | None = None


def setup(directory: str) -> None:
    """Turn metrics on in this process and in every process it forks from now on; call it once.

    Deletes the `*.db` files a previous run left in `directory`: counters would otherwise go on from
    them, and in-progress gauges of long-gone processes would count forever.
    """
    global _metrics
    if _metrics is not None:
        raise RuntimeError("metrics.setup: already set up")
    if "prometheus_client" in sys.modules:
        # Imported without the variable, it keeps every value in this process's memory, unseen by a scrape.
        raise RuntimeError("metrics.setup must run before prometheus_client is imported")
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.unlink(path)
    os.environ[_DIRECTORY_VARIABLE] = directory
    _metrics = _build(directory)


def _build(directory: str) -> _Metrics:
    # Imported here, not at the top: only once the variable is set (this module is imported everywhere).
    from prometheus_client import Counter, Gauge, Histogram

    # registry=None: in multiprocess mode the scrape reads the files, never a registry (upstream's rule).
    def counter(name: str, text: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, text, labels, registry=None)

    def histogram(name: str, text: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, text, labels, registry=None, buckets=_BUCKETS)

    return _Metrics(
        directory,
        messages=counter(
            "qsift_messages",
            "Messages by recipient group: category and what became of it",
            ("category", "destiny"),
        ),
        recipients=counter("qsift_recipients", "Recipients by what became of them", ("destiny",)),
        answers=counter("qsift_answers", "Answers to messages received in full", ("protocol", "answer")),
        stage_seconds=histogram("qsift_stage_seconds", "Time a message spends in each stage", ("stage",)),
        scanner_seconds=histogram(
            "qsift_scanner_seconds", "Time each scanner takes per message", ("scanner",)
        ),
        scanner_errors=counter("qsift_scanner_errors", "Scanner calls that gave no answer", ("scanner",)),
        sessions=Gauge(
            "qsift_sessions_in_progress",
            "Sessions holding a slot, per listener",
            ("listener",),
            registry=None,
            multiprocess_mode="livesum",
        ),
        busy=counter("qsift_busy", "Sessions refused for want of a free slot", ("listener",)),
        quarantined=counter("qsift_quarantined", "Messages kept in the quarantine", ("category",)),
        dsn=counter(
            "qsift_dsn",
            "DSNs (bounces, and recipients the downstream refused): sent, suppressed or failed (try later)",
            ("result",),
        ),
        worker_restarts=counter("qsift_worker_restarts", "Worker processes started again", ("reason",)),
    )


class _NeverStoppingMail:
    """Around every recording: a metrics file that cannot be written (the directory not writable by the
    user the workers run as, a full disk) is logged once per process, never raised into the mail path."""

    failed = False

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if not isinstance(exc, OSError):
            return False
        if not self.failed:
            self.failed = True
            logger.error("metrics: cannot record (%s); the counts of this process are incomplete", exc)
        return True


_never_stopping_mail = _NeverStoppingMail()


def enabled() -> bool:
    """Whether `setup` ran: callers skip work done only for the metrics."""
    return _metrics is not None


def worker_gone(pid: int) -> None:
    """A worker exited: drop its share of the in-progress gauge (its counts stay in the totals)."""
    if (m := _metrics) is not None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, m.directory)  # type: ignore[no-untyped-call]


def worker_restarted(reason: str) -> None:
    """The parent started a worker again (`reason`: why the last one ended, e.g. "crash", "max_requests")."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.worker_restarts.labels(reason).inc()


def stage_done(stage: str, started: float) -> None:
    """A message spent from `started` (time.monotonic()) until now in `stage`."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.stage_seconds.labels(stage).observe(time.monotonic() - started)


def scanner_done(scanner: str, started: float, *, failed: bool) -> None:
    """One scanner call took from `started` (time.monotonic()) until now; `failed`: it gave no answer."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.scanner_seconds.labels(scanner).observe(time.monotonic() - started)
            if failed:
                m.scanner_errors.labels(scanner).inc()


def message_fate(category: str, destiny: str, recipients: int) -> None:
    """One group of a message's recipients shared `category` and `destiny`."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.messages.labels(category, destiny).inc()
            m.recipients.labels(destiny).inc(recipients)


def answered(protocol: str, *replies: Reply) -> None:
    """The sending side was answered (one reply, or LMTP's one per recipient)."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            for reply in replies:
                m.answers.labels(protocol, reply.answer.value).inc()


def sessions_in_progress(listener: str, count: int) -> None:
    """This process now has `count` sessions holding a slot of `listener`."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.sessions.labels(listener).set(count)


def busy(listener: str) -> None:
    """A session was refused: every slot stayed taken for the listener's busy_wait."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.busy.labels(listener).inc()


def quarantined(category: str) -> None:
    """A message was kept in the quarantine."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.quarantined.labels(category).inc()


def dsn(result: str) -> None:
    """A DSN (a bounce, or recipients the downstream refused while others took the message): "sent",
    "suppressed" (backscatter rules) or "failed" (the message waits)."""
    if (m := _metrics) is not None:
        with _never_stopping_mail:
            m.dsn.labels(result).inc()


# --- the scrape endpoint --------------------------------------------------------------------------------


async def serve(address: str) -> asyncio.Server:
    """Answer `GET /metrics` on `address` ("host:port", "[v6]:port"; loopback is the place for it) with
    every process's metrics summed; close the returned server to stop."""
    m = _metrics
    if m is None:
        raise RuntimeError("metrics.serve: metrics.setup was not called")
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, m.directory)  # type: ignore[no-untyped-call]
    host, port = _host_port(address)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer_scrape(reader, writer, lambda: generate_latest(registry), CONTENT_TYPE_LATEST)

    return await asyncio.start_server(answer, host, port, limit=_REQUEST_LIMIT, reuse_address=True)


def _host_port(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address {address!r}: expected host:port or [v6]:port")
    return host, int(port)


async def _answer_scrape(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    exposition: Callable[[], bytes],
    content_type: str,
) -> None:
    """One request, one response, then close: a scrape needs no keep-alive."""
    try:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            status, kind, body = "400 Bad Request", "text/plain", b"bad request\n"
        else:
            status, kind, body = _response(head.split(b"\r\n", 1)[0], exposition, content_type)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
            + body
        )
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _response(
    request_line: bytes, exposition: Callable[[], bytes], content_type: str
) -> tuple[str, str, bytes]:
    """Status, content type and body for one request line."""
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[1].partition(b"?")[0] != b"/metrics":
        return "404 Not Found", "text/plain", b"not found\n"
    try:
        # Summing the files takes milliseconds on the parent's loop: no thread, so its forks stay safe.
        return "200 OK", content_type, exposition()
    except Exception:
        logger.exception("metrics: cannot read the metrics files")
        return "500 Internal Server Error", "text/plain", b"cannot read the metrics files\n"
