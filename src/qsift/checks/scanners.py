"""What every scanner client promises: one call per message, a result or an error, never an exception.

Virus scanners (clamd, command-line programs) and spam scanners (spamd, rspamd) are external daemons or
programs; each may be down, slow or confused. Their clients turn every such failure into a result with
`error` set, so the caller decides in one place what a failure means (DESIGN.md invariant 4: all virus
scanners failed → try later; spam scanner failed → pass unscored, logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Protocol

from qsift.errors import ConfigError


@dataclass(frozen=True)
class ScannerAddress:
    """Where a scanner daemon listens: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def describe(self) -> str:
        """amavisd-new's way, as the forward methods are written: `[host]:port` or `unix:/path`."""
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        """As it is written in the configuration: brackets only around an IPv6 address."""
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_scanner_address(text: str, default_port: int | None, what: str = "scanner") -> ScannerAddress:
    """`unix:/path`, `host:port`, `[v6]:port`; with a `default_port`, also a bare `host` or `[v6]`."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(f"{what} address {text!r}: the socket path must be absolute")
        return ScannerAddress(path=path)
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ConfigError(f"{what} address {text!r}: expected [host]:port")
        port_text = port_text[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or (":" in host and not text.startswith("[")):
        raise ConfigError(f"{what} address {text!r}: expected host:port, [v6]:port or unix:/path")
    if not port_text and default_port is not None:
        return ScannerAddress(host=host, port=default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what} address {text!r}: bad port {port_text!r}")
    return ScannerAddress(host=host, port=int(port_text))


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


@dataclass(frozen=True)
class SpamEnvelope:
    """What the spam scanner is told of the envelope and the client, beside the message: SpamAssassin's
    rules on the envelope sender (HEADER_FROM_DIFFERENT_DOMAINS, FREEMAIL_FORGED_FROMDOMAIN, SPF) and
    rspamd's find nothing in a message as qmail and an MTA hand it on, before any Return-Path is added.
    None or "" where it is not known; the null sender is "". Values come from the client, so each
    scanner sends only those that cannot end a header line (`header_safe`)."""

    sender: str | None = None
    recipients: tuple[str, ...] = ()
    ip: str | None = None
    helo: str | None = None


def header_safe(value: str | None) -> str | None:
    """`value` if it can stand in one header line (no control character, at most 998 octets), else None:
    an envelope field a client chose must not add a header field of its own to what a scanner reads."""
    if value is None or len(value) > 998 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value


class SpamScanner(Protocol):
    @property
    def name(self) -> str: ...

    async def check(
        self, message: IO[bytes], size: int, *, user: str | None = None, envelope: SpamEnvelope | None = None
    ) -> SpamResult:
        """Score the whole raw message, read from `message` (positioned at its start, `size` bytes)."""
        ...
