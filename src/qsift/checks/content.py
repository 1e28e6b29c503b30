"""The checks a message goes through, in one place: decode it, then judge its parts and its header.

The daemon and `qsift scan` both call `check_message`, so what a postmaster sees offline is what the
daemon decides. Scanners (clamd, spamd) join here as further checks; each one only adds Findings.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from qsift.auth.results import AuthResults
from qsift.checks.banned import DEFAULT_RULES, BannedRule, check_banned
from qsift.checks.headers import check_headers
from qsift.checks.scanner_set import ScanFindings, ScannerSet, run_scanners
from qsift.checks.scanners import SpamResult
from qsift.checks.virus import VirusScannersFailed, scan_for_viruses
from qsift.decode.parts import Part
from qsift.decode.walk import DecodeLimits, decode_message
from qsift.errors import ScannerFailure
from qsift.model import Category, Finding, main_category
from qsift.observe import metrics

#: The header section is read up to this size (a header larger than this is itself a problem).
_HEADER_READ = 1024 * 1024


@dataclass(frozen=True)
class CheckSettings:
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    banned: tuple[BannedRule, ...] = DEFAULT_RULES
    #: Parent of the decoder's private temp directories; None for the system's.
    tmp_dir: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Everything the checks found about one message."""

    parts: tuple[Part, ...]
    findings: tuple[Finding, ...]
    #: The spam scanner's answer, kept for the X-Spam headers; None without a spam check.
    spam: SpamResult | None = None
    #: "name: what went wrong" for each scanner that failed while others answered, for the log.
    scanner_errors: tuple[str, ...] = ()
    #: Members the virus scanners cannot reach in the raw message (decode/walk.py RESCAN_CONTAINERS).
    rescan: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    #: DKIM, SPF, DMARC and ARC, when they were checked (checks/authentication.py).
    auth: AuthResults = field(default_factory=AuthResults)

    @property
    def category(self) -> Category:
        return main_category(self.findings)

    @property
    def categories(self) -> tuple[Category, ...]:
        """Every category present, most severe first; (CLEAN,) when there is none."""
        present = sorted({f.category for f in self.findings}, key=lambda c: c.rank)
        return tuple(present) or (Category.CLEAN,)

    @property
    def lead(self) -> Finding | None:
        """The first finding of the main category: what names the message in logs, answers, DSNs."""
        return next((f for f in self.findings if f.category is self.category), None)

    def reason(self) -> str:
        """Why the message is blocked, as amavisd-new words it after "Reject, id=... - " (its
        %smtp_reason_by_ccat): `INFECTED: Eicar-Test-Signature`, `BANNED: .exe-ms,x.exe (...)`, `SPAM`."""
        category, first = self.category, self.lead
        if first is None:
            return Category.CLEAN.log_word
        if category in (Category.VIRUS, Category.BANNED, Category.DMARC):
            return f"{category.log_word}: {first.detail}"
        if category is Category.BAD_HEADER:
            return f"BAD HEADER: {first.detail}"
        return category.log_word

    def log_text(self) -> str:
        """The category as amavisd-new's summary line words it: `BANNED (.exe-ms,x.exe ...)`,
        `UNCHECKED-ENCRYPTED`, `BAD-HEADER-7`, `CLEAN`."""
        category, first = self.category, self.lead
        if first is None:
            return Category.CLEAN.log_word
        if category is Category.VIRUS:
            return f"INFECTED ({first.detail})"
        if category is Category.BANNED:
            return f"BANNED ({first.detail})"
        if category is Category.UNCHECKED and first.minor == 1:
            return "UNCHECKED-ENCRYPTED"
        if category is Category.BAD_HEADER:
            return f"BAD-HEADER-{first.minor}"
        return category.log_word


def check_message(message: bytes | IO[bytes], settings: CheckSettings, *, smtputf8: bool = False) -> Verdict:
    """Decode `message` (bytes, or a binary file at its start) and run every content check on it;
    never raises for what the message holds."""
    if isinstance(message, bytes):
        head = message[:_HEADER_READ]
    else:
        start = message.tell()
        head = message.read(_HEADER_READ)
        message.seek(start)
    decoded = decode_message(message, settings.decode, settings.tmp_dir)
    findings = [
        *decoded.findings,
        *check_banned(decoded.parts, settings.banned),
        *check_headers(head, smtputf8=smtputf8),
    ]
    return Verdict(decoded.parts, tuple(findings), rescan=decoded.rescan)


async def inspect(
    reader: IO[bytes],
    open_copy: Callable[[], IO[bytes]],
    size: int,
    settings: CheckSettings,
    scanners: ScannerSet | None,
    *,
    smtputf8: bool = False,
) -> Verdict:
    """Every check on one message: the decoder's in a thread, the scanners side by side with it.

    `reader` is the decoder's (it reads from a thread); every scanner opens its own copy through
    `open_copy`. Raises ScannerFailure when the message must wait for its scanners.
    """
    started = time.monotonic()
    decoding = asyncio.ensure_future(asyncio.to_thread(check_message, reader, settings, smtputf8=smtputf8))
    decoding.add_done_callback(lambda _: metrics.stage_done("decode", started))
    try:
        scanned = await run_scanners(scanners, open_copy, size) if scanners and not scanners.empty else None
    finally:
        try:
            verdict = await decoding
        except Exception as exc:  # a decoder bug must not stop mail: the message is unchecked
            verdict = decoder_failure(f"{type(exc).__name__}: {exc}")
    if scanned is None:
        return verdict
    if verdict.rescan and scanners is not None:
        scanned = await _rescan(scanners, verdict.rescan, scanned)
    errors = [f"{r.scanner}: {r.error}" for r in scanned.virus_results if r.error]
    if scanned.spam is not None and scanned.spam.error:
        errors.append(f"{scanned.spam.scanner}: {scanned.spam.error} (message passed unscored)")
    return Verdict(verdict.parts, verdict.findings + scanned.findings, scanned.spam, tuple(errors))


async def _rescan(
    scanners: ScannerSet, members: tuple[tuple[str, bytes], ...], scanned: ScanFindings
) -> ScanFindings:
    """The virus scanners on each member they cannot reach in the raw message; a virus in one is a virus
    in the message. Raises ScannerFailure when no scanner answers for a member."""
    findings = list(scanned.findings)
    results = list(scanned.virus_results)
    for path, data in members:
        try:
            outcome = await scan_for_viruses(scanners.primary, scanners.backup, _reader_of(data), len(data))
        except VirusScannersFailed as exc:
            raise ScannerFailure(f"virus scanner failure on {path}: {exc}") from None
        findings.extend(Finding(f.category, f.minor, f.detail, path) for f in outcome.findings)
        results.extend(outcome.results)
    return ScanFindings(_merge_virus(findings), tuple(results), scanned.spam)


def _reader_of(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


def _merge_virus(findings: list[Finding]) -> tuple[Finding, ...]:
    """One VIRUS finding with every name, wherever found."""
    viruses = [f for f in findings if f.category is Category.VIRUS]
    if len(viruses) <= 1:
        return tuple(findings)
    names = list(dict.fromkeys(n.strip() for f in viruses for n in f.detail.split(",")))
    others = [f for f in findings if f.category is not Category.VIRUS]
    return (Finding(Category.VIRUS, 0, ", ".join(names), viruses[0].part), *others)


def decoder_failure(reason: str) -> Verdict:
    """What a message is when the decoder itself broke: unchecked, never clean."""
    return Verdict((), (Finding(Category.UNCHECKED, 0, f"decoder failure: {reason}"),))
