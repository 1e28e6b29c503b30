"""The checks a message goes through, in one place: decode it, then judge its parts and its header.

The daemon and `qsift scan` both call `check_message`, so what a postmaster sees offline is what the
daemon decides. Scanners (clamd, spamd) join here as further checks; each one only adds Findings.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from qsift.auth.results import AuthResults
from qsift.checks.banned import DEFAULT_RULES, BannedRule, check_banned
from qsift.checks.headers import check_headers
from qsift.checks.scanner_set import ScanFindings, ScannerSet, run_scanners
from qsift.checks.scanners import SpamEnvelope, SpamResult
from qsift.checks.virus import VirusScannersFailed, scan_for_viruses
from qsift.decode.parts import KeptLeaves, Part
from qsift.decode.walk import DecodeLimits, decode_message
from qsift.errors import ScannerFailure
from qsift.model import Category, Finding, main_category
from qsift.observe import metrics

#: The header section is read up to this size (a header larger than this is itself a problem).
_HEADER_READ = 1024 * 1024
#: Threads a process decodes in. Decoding is Python under the GIL for the most part, so a third thread
#: adds no speed, only its stack and the frames a deep MIME walk leaves on it; two keep one large message
#: from holding up the rest. Decoding in asyncio's default pool (six threads on two CPUs) cost each worker
#: 1 MiB more PSS after 400 messages of the attachment mix (docs/benchmarks.md, memory).
DECODER_THREADS = 2


def decoder_threads() -> ThreadPoolExecutor:
    """A process's decoding threads, started at the first message (never in the parent of the workers,
    which must stay without threads to fork safely)."""
    return ThreadPoolExecutor(DECODER_THREADS, thread_name_prefix="qsift-decode")


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
    #: The decoded leaves, while the virus scanners that are given the parts need them (`inspect`).
    leaves: KeptLeaves | None = field(default=None, repr=False)

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


def check_message(
    message: bytes | IO[bytes], settings: CheckSettings, *, smtputf8: bool = False, keep_leaves: bool = False
) -> Verdict:
    """Decode `message` (bytes, or a binary file at its start) and run every content check on it;
    never raises for what the message holds. `keep_leaves`: see `decode_message`; the caller must
    `remove()` the verdict's leaves."""
    if isinstance(message, bytes):
        head = message[:_HEADER_READ]
    else:
        start = message.tell()
        head = message.read(_HEADER_READ)
        message.seek(start)
    decoded = decode_message(message, settings.decode, settings.tmp_dir, keep_leaves=keep_leaves)
    findings = [
        *decoded.findings,
        *check_banned(decoded.parts, settings.banned),
        *check_headers(head, smtputf8=smtputf8),
    ]
    return Verdict(decoded.parts, tuple(findings), rescan=decoded.rescan, leaves=decoded.leaves)


async def inspect(
    reader: IO[bytes],
    open_copy: Callable[[], IO[bytes]],
    size: int,
    settings: CheckSettings,
    scanners: ScannerSet | None,
    *,
    smtputf8: bool = False,
    envelope: SpamEnvelope | None = None,
    decoder: Executor | None = None,
) -> Verdict:
    """Every check on one message: the decoder's in a thread (of `decoder`, else asyncio's default
    pool), the scanners side by side with it (the spam scanner told of the `envelope`).

    `reader` is the decoder's (it reads from a thread); every scanner opens its own copy through
    `open_copy`. Virus scanners that are given the parts (`[virus] scan = "parts"`) wait for the
    decoder instead, and are given each decoded leaf. Raises ScannerFailure when the message must wait
    for its scanners.
    """
    started = time.monotonic()
    parts = scanners is not None and scanners.scan_parts and bool(scanners.primary or scanners.backup)
    decode = functools.partial(check_message, reader, settings, smtputf8=smtputf8, keep_leaves=parts)
    # In the caller's context, as asyncio.to_thread runs it.
    decoding = asyncio.get_running_loop().run_in_executor(
        decoder, functools.partial(contextvars.copy_context().run, decode)
    )
    decoding.add_done_callback(lambda _: metrics.stage_done("decode", started))
    verdict: Verdict | None = None
    try:
        try:
            scanned = (
                await run_scanners(scanners, open_copy, size, with_virus=not parts, envelope=envelope)
                if scanners and not scanners.empty
                else None
            )
        finally:
            try:
                # Shielded: the thread runs on when this is cancelled, and its leaves must then be removed.
                verdict = await asyncio.shield(decoding)
            except asyncio.CancelledError:
                decoding.add_done_callback(_drop_leaves)
                raise
            except Exception as exc:  # a decoder bug must not stop mail: the message is unchecked
                verdict = decoder_failure(f"{type(exc).__name__}: {exc}")
        if scanned is None:
            return verdict
        assert scanners is not None
        if parts:
            scanned = await _scan_units(scanners, _leaf_units(verdict.leaves, open_copy, size), scanned)
        if verdict.rescan:
            units = [(path, _reader_of(data), len(data)) for path, data in verdict.rescan]
            scanned = await _scan_units(scanners, units, scanned)
    finally:
        # Whatever ends the checks, the spam scanner's failure or a cancel among them, the leaves go.
        if verdict is not None and verdict.leaves is not None:
            verdict.leaves.remove()
    errors = [f"{r.scanner}: {r.error}" for r in scanned.virus_results if r.error]
    if scanned.spam is not None and scanned.spam.error:
        errors.append(f"{scanned.spam.scanner}: {scanned.spam.error} (message passed unscored)")
    return Verdict(verdict.parts, verdict.findings + scanned.findings, scanned.spam, tuple(errors))


def _drop_leaves(decoding: asyncio.Future[Verdict]) -> None:
    """The leaves of a decoding nobody waits for any more: the message's checks were cancelled."""
    if not decoding.cancelled() and decoding.exception() is None:
        leaves = decoding.result().leaves
        if leaves is not None:
            leaves.remove()


_Unit = tuple[str, Callable[[], IO[bytes]], int]


def _leaf_units(leaves: KeptLeaves | None, open_copy: Callable[[], IO[bytes]], size: int) -> list[_Unit]:
    """What the virus scanners are given in place of the message: each decoded leaf; the whole message
    when the decoder left anything unread (a scanner may read it where qsift could not) or found no leaf."""
    if leaves is None or not leaves.complete or not leaves.leaves:
        return [("", open_copy, size)]
    return [(leaf.path, leaf.open, leaf.size) for leaf in leaves.leaves]


async def _scan_units(scanners: ScannerSet, units: Iterable[_Unit], scanned: ScanFindings) -> ScanFindings:
    """The virus scanners on each unit (a leaf, a member they cannot reach otherwise, or the message),
    one after another; a virus in one is a virus in the message. Raises ScannerFailure when no scanner
    answers for a unit."""
    findings = list(scanned.findings)
    results = list(scanned.virus_results)
    for path, opener, length in units:
        try:
            outcome = await scan_for_viruses(scanners.primary, scanners.backup, opener, length)
        except VirusScannersFailed as exc:
            where = f" on {path}" if path else ""
            raise ScannerFailure(f"virus scanner failure{where}: {exc}") from None
        findings.extend(Finding(f.category, f.minor, f.detail, path or f.part) for f in outcome.findings)
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
