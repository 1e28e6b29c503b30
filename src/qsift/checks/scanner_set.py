"""The scanner clients a running daemon holds: built once from the configuration, closed at the end.

They live as long as the daemon so clamd sessions are reused across messages. `run_scanners` asks the
virus scanners and the spam scanner about one message side by side (they are independent), each reading
its own copy of the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, TypeVar

from qsift.checks.clamd import ClamdScanner
from qsift.checks.scanner_config import ScannerSpec, SpamSettings, VirusSettings
from qsift.checks.scanners import SpamEnvelope, SpamResult, SpamScanner, VirusResult, VirusScanner
from qsift.checks.spam import RspamdScanner, SpamdScanner
from qsift.checks.spam_levels import spam_findings
from qsift.checks.virus import CommandScanner, VirusScannersFailed, scan_for_viruses
from qsift.errors import ScannerFailure
from qsift.model import Finding
from qsift.observe import metrics


@dataclass
class ScannerSet:
    primary: list[VirusScanner] = field(default_factory=list)
    backup: list[VirusScanner] = field(default_factory=list)
    spam: SpamScanner | None = None
    spam_settings: SpamSettings = field(default_factory=SpamSettings)
    #: The virus scanners are given each decoded leaf rather than the message (`[virus] scan`).
    scan_parts: bool = False

    @classmethod
    def build(cls, virus: VirusSettings, spam: SpamSettings, tmp_dir: str | None = None) -> ScannerSet:
        spam_scanner = _spam_scanner(spam)
        return cls(
            primary=[_LimitedVirus(_virus_scanner(s, tmp_dir), s.concurrency) for s in virus.scanners],
            backup=[_LimitedVirus(_virus_scanner(s, tmp_dir), s.concurrency) for s in virus.backup_scanners],
            spam=_LimitedSpam(spam_scanner, spam.concurrency) if spam_scanner else None,
            spam_settings=spam,
            scan_parts=virus.scan == "parts",
        )

    @property
    def empty(self) -> bool:
        return not (self.primary or self.backup or self.spam)

    async def health(self) -> list[tuple[str, str]]:
        """(name, version) for each scanner daemon, version "" when it does not answer; command-line
        scanners have nothing to ask."""
        answers = []
        for scanner in [*self.primary, *self.backup, self.spam]:
            inner = scanner.inner if isinstance(scanner, _LimitedVirus | _LimitedSpam) else scanner
            ping = getattr(inner, "ping", None)
            if scanner is not None and ping is not None:
                answers.append((scanner.name, str(await ping())))
        return answers

    async def close(self) -> None:
        for scanner in [*self.primary, *self.backup]:
            inner = scanner.inner if isinstance(scanner, _LimitedVirus) else scanner
            if isinstance(inner, ClamdScanner):
                with contextlib.suppress(Exception):
                    await inner.close()


class _LimitedVirus:
    """A virus scanner with at most `limit` scans in progress; the rest wait their turn."""

    def __init__(self, inner: VirusScanner, limit: int) -> None:
        self.inner = inner
        self._slots = asyncio.Semaphore(max(1, limit))

    @property
    def name(self) -> str:
        return self.inner.name

    async def scan(self, message: IO[bytes], size: int) -> VirusResult:
        async with self._slots:
            return await _measured(self.name, self.inner.scan(message, size))


class _LimitedSpam:
    """A spam scanner with at most `limit` checks in progress."""

    def __init__(self, inner: SpamScanner, limit: int) -> None:
        self.inner = inner
        self._slots = asyncio.Semaphore(max(1, limit))

    @property
    def name(self) -> str:
        return self.inner.name

    async def check(
        self, message: IO[bytes], size: int, *, user: str | None = None, envelope: SpamEnvelope | None = None
    ) -> SpamResult:
        async with self._slots:
            return await _measured(self.name, self.inner.check(message, size, user=user, envelope=envelope))


_Result = TypeVar("_Result", VirusResult, SpamResult)


async def _measured(name: str, call: Awaitable[_Result]) -> _Result:
    """The scanner's result, with its time (not counting the wait for a slot) and any failure recorded in
    the metrics."""
    started = time.monotonic()
    try:
        result = await call
    except Exception:  # the caller turns it into a failed scanner
        metrics.scanner_done(name, started, failed=True)
        raise
    metrics.scanner_done(name, started, failed=bool(result.error))
    return result


@dataclass(frozen=True)
class ScanFindings:
    findings: tuple[Finding, ...]
    virus_results: tuple[VirusResult, ...]
    spam: SpamResult | None


async def run_scanners(
    scanners: ScannerSet,
    open_message: Callable[[], IO[bytes]],
    size: int,
    *,
    with_virus: bool = True,
    envelope: SpamEnvelope | None = None,
) -> ScanFindings:
    """Every scanner on one message (the spam scanner only, without `with_virus`); ScannerFailure when the
    message must wait (no virus scanner answered, or the spam scanner failed and `[spam] failure =
    "tempfail"`)."""

    async def spam() -> SpamResult | None:
        if scanners.spam is None:
            return None
        with open_message() as message:
            try:
                return await scanners.spam.check(
                    message, size, user=scanners.spam_settings.user or None, envelope=envelope
                )
            except Exception as exc:  # a client bug is a failed scanner
                return SpamResult(scanners.spam.name, error=f"internal error: {type(exc).__name__}: {exc}")

    primary, backup = (scanners.primary, scanners.backup) if with_virus else ([], [])
    virus_task = asyncio.ensure_future(scan_for_viruses(primary, backup, open_message, size))
    spam_result = await spam()
    try:
        virus = await virus_task
    except VirusScannersFailed as exc:
        raise ScannerFailure(f"virus scanner failure: {exc}") from None
    findings = list(virus.findings)
    if spam_result is not None:
        if spam_result.error and scanners.spam_settings.failure == "tempfail":
            raise ScannerFailure(f"spam scanner failure: {spam_result.error}")
        findings.extend(spam_findings(spam_result, scanners.spam_settings.levels))
    return ScanFindings(tuple(findings), virus.results, spam_result)


def _virus_scanner(spec: ScannerSpec, tmp_dir: str | None) -> VirusScanner:
    if spec.type == "clamd":
        return ClamdScanner(
            spec.name, spec.address, timeout=spec.timeout, max_stream=spec.max_stream, sessions=spec.sessions
        )
    assert spec.virus_name is not None
    return CommandScanner(
        spec.name,
        spec.command,
        spec.args,
        spec.clean,
        spec.infected,
        spec.virus_name,
        timeout=spec.timeout,
        tmp_dir=tmp_dir,
    )


def _spam_scanner(settings: SpamSettings) -> SpamScanner | None:
    if settings.type == "spamd":
        return SpamdScanner(
            "spamd",
            settings.address,
            timeout=settings.timeout,
            max_size=settings.max_size,
            slim=settings.slim,
            attachment_head=settings.attachment_head,
            cut_text_attachments=settings.cut_text_attachments,
        )
    if settings.type == "rspamd":
        return RspamdScanner("rspamd", settings.address, timeout=settings.timeout, max_size=settings.max_size)
    return None
