"""The `[virus]` and `[spam]` sections: which scanners, how to reach them, what their answers mean.

Declared once here (qsift/declare.py) and built by the configuration's converter; the scanner clients
themselves (with their connections) are made from these by `checks/scanner_set.py` when the daemon
starts. Embedded defaults configure no scanner: a machine without clamd must still run `make demo`.
A site turns them on with, for example:

    [[virus.scanners]]
    type = "clamd"
    address = "unix:/run/clamav/clamd.ctl"

    [spam]
    type = "spamd"
    address = "127.0.0.1:783"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from qsift.checks.scanners import parse_scanner_address
from qsift.checks.spam_levels import SpamLevels
from qsift.declare import CODES_OR_REGEX, COUNT, INTEGER, STRING, pattern, section, setting, tables

MIB = 1024 * 1024
SPAM_TYPES = ("spamd", "rspamd")
Path = tuple[str | int, ...]
#: The keys each type of virus scanner takes.
SCANNER_KEYS = {
    "clamd": {"type", "name", "address", "timeout", "max_stream", "sessions", "concurrency"},
    "command": {
        "type",
        "name",
        "command",
        "args",
        "clean",
        "infected",
        "virus_name",
        "timeout",
        "concurrency",
    },
}

_EVERY_KEY = set().union(*SCANNER_KEYS.values())


def _codes_or_regex(value: str | list[int]) -> tuple[int, ...] | re.Pattern[str]:
    return pattern(re.MULTILINE)(value) if isinstance(value, str) else tuple(value)


def _address(default_port: int | None, what: str) -> Callable[[str], str]:
    """Refused at load time if it cannot be one, rather than at the first message."""

    def parse(value: str) -> str:
        parse_scanner_address(value, default_port, what)
        return value

    return parse


@dataclass(frozen=True)
class ScannerSpec:
    """One `[[virus.scanners]]` or `[[virus.backup_scanners]]` table."""

    type: str = setting(
        doc="clamd (its socket protocol) or command (a command-line scanner).", choices=("clamd", "command")
    )
    name: str = setting("", "The scanner's name in logs and headers; default ClamAV-clamd or the command.")
    address: str = setting("", "clamd: unix:/path or host:port.", parse=_address(None, "clamd"))
    command: str = setting(
        "", "The program to run (a command scanner).", check=lambda v: None if v else "must not be empty"
    )
    args: tuple[str, ...] = setting(
        [], 'The command\'s arguments; "{}" is the directory holding the message.'
    )
    clean: tuple[int, ...] | re.Pattern[str] = setting(
        [0],
        "Exit codes (or a regex on the output) that mean clean.",
        kind=CODES_OR_REGEX,
        parse=_codes_or_regex,
    )
    infected: tuple[int, ...] | re.Pattern[str] = setting(
        [1],
        "Exit codes (or a regex on the output) that mean infected.",
        kind=CODES_OR_REGEX,
        parse=_codes_or_regex,
    )
    virus_name: re.Pattern[str] | None = setting(
        r"^.*?: (?!Infected Archive)(.*) FOUND$",
        "Regex whose first group is the virus name in the output.",
        kind=STRING,
        parse=pattern(re.MULTILINE),
    )
    timeout: float = setting(120.0, "Longest a scan may take, in seconds.")
    max_stream: int = setting(
        25 * MIB,
        "clamd: StreamMaxLength as clamd.conf sets it; a larger message is not sent (and is unchecked).",
        kind=COUNT,
    )
    sessions: int = setting(4, "clamd: connections kept open (IDSESSION) for reuse.", kind=COUNT)
    concurrency: int = setting(
        None,
        "Scans in progress at once; more wait their turn (clamd's MaxThreads is 10 by default).",
        kind=COUNT,
        unset="8 (clamd), 2 (command)",
    )

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", "ClamAV-clamd" if self.type == "clamd" else self.command)
        if self.concurrency is None:
            # A command-line scanner loads its database each run: a few at once is all a machine takes.
            object.__setattr__(self, "concurrency", 8 if self.type == "clamd" else 2)

    @staticmethod
    def config_rules(values: Mapping[str, object], written: Collection[str]) -> Iterator[tuple[Path, str]]:
        kind = values.get("type")
        if not isinstance(kind, str):
            return
        allowed = SCANNER_KEYS[kind]
        for name in written:
            if name in _EVERY_KEY and name not in allowed:  # the others are unknown keys, said as such
                yield (name,), f"is not for a {kind} scanner (allowed: {', '.join(sorted(allowed))})"
        needed = "address" if kind == "clamd" else "command"
        if needed not in written:
            yield (needed,), f"is required for a {kind} scanner"


@dataclass(frozen=True)
class VirusSettings:
    scan: str = setting(
        "message",
        'What the virus scanners are given: "message", the message as it came (clamd decodes the MIME'
        ' itself), or "parts", each part qsift decoded (as amavisd-new gives clamd its parts directory;'
        " clamd then spends about 40 % less CPU, and a command scanner runs once per part). With"
        ' "parts", a message qsift could not read to the end is given whole as well.',
        choices=("message", "parts"),
    )
    scanners: tuple[ScannerSpec, ...] = tables(ScannerSpec, "A primary virus scanner.")
    backup_scanners: tuple[ScannerSpec, ...] = tables(ScannerSpec, "A backup virus scanner.")


@dataclass(frozen=True)
class SpamSettings:
    type: str = setting("", "The scanner's protocol; none: no spam check.", choices=SPAM_TYPES)
    address: str = setting(
        "",
        "Where it listens: host:port, host (the usual port) or unix:/path.",
        parse=_address(783, "spam scanner"),
    )
    max_size: int = setting(
        400 * 1024,
        "spamd with slim: the most of the slimmed copy sent, the rest cut off, as amavisd-new cuts at its"
        " $sa_mail_body_size_limit; rspamd, or spamd without slim: larger messages are not sent.",
        kind=COUNT,
    )
    slim: bool = setting(
        True,
        "spamd: send a slimmed copy (every header, text parts whole, attachments cut to their first"
        " attachment_head bytes) rather than the message whole; a message is then never skipped.",
    )
    attachment_head: int = setting(
        4096,
        "spamd with slim: bytes of each attachment's encoded body kept, in whole lines.",
        kind=INTEGER,
    )
    cut_text_attachments: bool = setting(
        True,
        "spamd with slim: cut text attachments (Content-Disposition: attachment) other than text/plain"
        " and text/html, a CSV say, to attachment_head too, though SpamAssassin would read them as text.",
    )
    timeout: float = setting(30.0, "Seconds to wait for the scanner's answer.")
    failure: str = setting(
        "pass",
        'What a spamd failure means: "pass" (unscored, logged; amavisd-new\'s behaviour) or "tempfail".',
        choices=("pass", "tempfail"),
    )
    user: str = setting("", 'spamd\'s `User:` (per-user preferences); "" for none.')
    concurrency: int = setting(
        4, "Checks in progress at once (spamd's --max-children is 5 by default).", kind=COUNT
    )
    levels: SpamLevels = section(SpamLevels, "The spam levels.", flat=True)

    @staticmethod
    def config_rules(values: Mapping[str, object], written: Collection[str]) -> Iterator[tuple[Path, str]]:
        for needed in ("type", "address") if written else ():
            if needed not in written:
                yield (needed,), "is required when [spam] is set"


def describe(specs: Sequence[ScannerSpec]) -> str:
    return ", ".join(f"{s.name} ({s.type} {s.address or s.command})" for s in specs) or "none"
