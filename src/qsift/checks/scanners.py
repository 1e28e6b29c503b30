"""What every scanner client promises: one call per message, a result or an error, never an exception.

Virus scanners (clamd, command-line programs) and spam scanners (spamd, rspamd) are external daemons or
programs; each may be down, slow or confused. Their clients turn every such failure into a result with
`error` set, so the caller decides in one place what a failure means (DESIGN.md invariant 4: all virus
scanners failed → try later; spam scanner failed → pass unscored, logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Protocol


@dataclass(frozen=True)
class VirusResult:
    scanner: str
    #: Virus names found; empty for clean (when `error` is empty).
    names: tuple[str, ...] = ()
    #: Why the scanner could not give an answer; "" when it did.
    error: str = ""
    #: Why this scanner cannot check this message at all, by its own limits (clamd's StreamMaxLength):
    #: not a failure of the scanner, but the message is not checked by it either.
    unchecked: str = ""

    @property
    def infected(self) -> bool:
        return bool(self.names) and not self.error


class VirusScanner(Protocol):
    @property
    def name(self) -> str: ...

    async def scan(self, message: IO[bytes], size: int) -> VirusResult:
        """Scan the whole raw message, read from `message` (positioned at its start, `size` bytes)."""
        ...


@dataclass(frozen=True)
class SpamResult:
    scanner: str
    #: The score, or None when the message was not scored (skipped, or the scanner failed).
    score: float | None = None
    #: The scanner's own threshold (spamd's required score, rspamd's required_score), for the log.
    required: float | None = None
    #: Names of the rules that hit.
    rules: tuple[str, ...] = ()
    error: str = ""
    #: Why the message was not sent to the scanner at all (e.g. larger than the spam size limit).
    skipped: str = ""


class SpamScanner(Protocol):
    @property
    def name(self) -> str: ...

    async def check(self, message: IO[bytes], size: int, *, user: str | None = None) -> SpamResult:
        """Score the whole raw message, read from `message` (positioned at its start, `size` bytes)."""
        ...
