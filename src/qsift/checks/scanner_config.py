"""The `[virus]` and `[spam]` sections: which scanners, how to reach them, what their answers mean.

Parsed once into frozen values; the scanner clients themselves (with their connections) are built from
these by `checks/scanner_set.py` when the daemon starts. Every mistake is a ConfigError naming the table
and key, with the allowed values.

Embedded defaults configure no scanner: a machine without clamd must still run `make demo`. A site turns
them on with, for example:

    [[virus.scanners]]
    type = "clamd"
    address = "unix:/run/clamav/clamd.ctl"

    [spam]
    type = "spamd"
    address = "127.0.0.1:783"
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qsift.checks.scanners import parse_scanner_address
from qsift.checks.spam_levels import SpamLevels
from qsift.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ScannerSpec:
    """One `[[virus.scanners]]` or `[[virus.backup_scanners]]` table."""

    type: str
    name: str
    #: clamd: "unix:/path" or "host:port".
    address: str = ""
    #: command: the program, its arguments ("{}" is the directory holding the message), and the meaning
    #: of its answers: exit codes, or a regex on its output.
    command: str = ""
    args: tuple[str, ...] = ()
    clean: tuple[int, ...] | re.Pattern[str] = (0,)
    infected: tuple[int, ...] | re.Pattern[str] = (1,)
    virus_name: re.Pattern[str] | None = None
    timeout: float = 120.0
    #: clamd: StreamMaxLength as clamd.conf sets it; a larger message is not sent (and is unchecked).
    max_stream: int = 25 * MIB
    #: clamd: connections kept open (IDSESSION) for reuse.
    sessions: int = 4
    #: Scans in progress at once; more wait their turn (clamd's MaxThreads is 10 by default).
    concurrency: int = 8


@dataclass(frozen=True)
class VirusSettings:
    scanners: tuple[ScannerSpec, ...] = ()
    backup_scanners: tuple[ScannerSpec, ...] = ()


@dataclass(frozen=True)
class SpamSettings:
    #: "spamd", "rspamd", or "" for no spam check.
    type: str = ""
    address: str = ""
    levels: SpamLevels = field(default_factory=SpamLevels)
    #: Larger messages are not sent (amavisd-new's sample $sa_mail_body_size_limit).
    max_size: int = 400 * 1024
    #: Seconds to wait for the scanner's answer.
    timeout: float = 30.0
    #: What a spamd failure means: "pass" (unscored, logged; amavisd-new's behaviour) or "tempfail".
    failure: str = "pass"
    #: spamd's `User:` (per-user preferences); "" for none.
    user: str = ""
    #: Checks in progress at once (spamd's --max-children is 5 by default).
    concurrency: int = 4


_SCANNER_TYPES = ("clamd", "command")
SPAM_TYPES = ("spamd", "rspamd")
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
_LEVELS = ("tag_level", "tag2_level", "kill_level", "dsn_cutoff_level", "quarantine_cutoff_level")
_SPAM_KEYS = {"type", "address", "max_size", "timeout", "failure", "user", "concurrency", *_LEVELS}


def virus_from_config(table: object, where: str = "[virus]") -> VirusSettings:
    section = _table(table, where)
    unknown = set(section) - {"scanners", "backup_scanners"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: backup_scanners, scanners)")
    return VirusSettings(
        scanners=_scanners(section.get("scanners", []), "[[virus.scanners]]"),
        backup_scanners=_scanners(section.get("backup_scanners", []), "[[virus.backup_scanners]]"),
    )


def _scanners(tables: object, where: str) -> tuple[ScannerSpec, ...]:
    if not isinstance(tables, list):
        raise ConfigError(f"{where} must be one or more tables")
    return tuple(_scanner(table, f"{where} #{index}") for index, table in enumerate(tables, 1))


def _scanner(table: object, where: str) -> ScannerSpec:
    section = _table(table, where)
    kind = section.get("type")
    if kind not in _SCANNER_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(_SCANNER_TYPES)}, not {kind!r}")
    assert isinstance(kind, str)
    _known(section, SCANNER_KEYS[kind], where)
    name = _string(section, "name", where, default="ClamAV-clamd" if kind == "clamd" else "")
    timeout = _number(section, "timeout", where, 120.0)
    if kind == "clamd":
        return ScannerSpec(
            "clamd",
            name,
            address=_address(section, where, None, "clamd"),
            timeout=timeout,
            max_stream=_count(section, "max_stream", where, 25 * MIB),
            sessions=_count(section, "sessions", where, 4),
            concurrency=_count(section, "concurrency", where, 8),
        )
    return ScannerSpec(
        "command",
        name or _string(section, "command", where, required=True),
        command=_string(section, "command", where, required=True),
        args=_strings(section, "args", where),
        clean=_codes_or_regex(section, "clean", where, (0,)),
        infected=_codes_or_regex(section, "infected", where, (1,)),
        virus_name=_regex(section.get("virus_name", r"^.*?: (?!Infected Archive)(.*) FOUND$"), where),
        timeout=timeout,
        # A command-line scanner loads its database each run: a few at once is all a machine takes.
        concurrency=_count(section, "concurrency", where, 2),
    )


def spam_from_config(table: object, where: str = "[spam]") -> SpamSettings:
    section = _table(table, where)
    if not section:
        return SpamSettings()
    _known(section, _SPAM_KEYS, where)
    kind = section.get("type")
    if kind not in SPAM_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(SPAM_TYPES)}, not {kind!r}")
    assert isinstance(kind, str)
    failure = _string(section, "failure", where, default="pass")
    if failure not in ("pass", "tempfail"):
        raise ConfigError(f"{where}: failure must be pass or tempfail, not {failure!r}")
    return SpamSettings(
        kind,
        _address(section, where, 783 if kind == "spamd" else 11333, kind),
        levels_from_config(section, where),
        max_size=_count(section, "max_size", where, 400 * 1024),
        timeout=_number(section, "timeout", where, 30.0),
        failure=failure,
        user=_string(section, "user", where, default=""),
        concurrency=_count(section, "concurrency", where, 4),
    )


def levels_from_config(
    section: Mapping[str, object], where: str, defaults: SpamLevels | None = None
) -> SpamLevels:
    """The spam levels set in `section` (other keys are the caller's), the rest from `defaults`."""
    defaults = defaults or SpamLevels()
    cutoff = section.get("quarantine_cutoff_level")
    return SpamLevels(
        tag_level=_level(section, "tag_level", where, defaults.tag_level),
        tag2_level=_level(section, "tag2_level", where, defaults.tag2_level),
        kill_level=_level(section, "kill_level", where, defaults.kill_level),
        dsn_cutoff_level=_level(section, "dsn_cutoff_level", where, defaults.dsn_cutoff_level),
        quarantine_cutoff_level=defaults.quarantine_cutoff_level
        if cutoff is None
        else _level(section, "quarantine_cutoff_level", where, 0),
    )


LEVEL_KEYS = _LEVELS


# --- small typed readers ------------------------------------------------------------------------------


def _table(table: object, where: str) -> Mapping[str, object]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    return table


def _known(section: Mapping[str, object], allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _string(
    section: Mapping[str, object], key: str, where: str, *, default: str = "", required: bool = False
) -> str:
    value = section.get(key, None if required else default)
    if not isinstance(value, str) or (required and not value):
        raise ConfigError(f"{where}: {key} must be a {'non-empty ' if required else ''}string, not {value!r}")
    return value


def _address(section: Mapping[str, object], where: str, default_port: int | None, what: str) -> str:
    """The scanner's address, refused now if it cannot be one rather than at the first message."""
    address = _string(section, "address", where, required=True)
    try:
        parse_scanner_address(address, default_port, what)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return address


def _strings(section: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return tuple(str(v) for v in value)


def _number(section: Mapping[str, object], key: str, where: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a number > 0, not {value!r}")
    return float(value)


def _count(section: Mapping[str, object], key: str, where: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a whole number >= 1, not {value!r}")
    return value


def _level(section: Mapping[str, object], key: str, where: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number (a spam score), not {value!r}")
    return float(value)


def _codes_or_regex(
    section: Mapping[str, object], key: str, where: str, default: tuple[int, ...]
) -> tuple[int, ...] | re.Pattern[str]:
    value = section.get(key, list(default))
    if isinstance(value, str):
        return _regex(value, f"{where}: {key}")
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise ConfigError(f"{where}: {key} must be a list of exit codes or a regex string, not {value!r}")


def _regex(value: object, where: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a regex must be a string, not {value!r}")
    try:
        return re.compile(value, re.MULTILINE)
    except re.error as exc:
        raise ConfigError(f"{where}: bad regex {value!r}: {exc}") from None


def describe(specs: Sequence[ScannerSpec]) -> str:
    return ", ".join(f"{s.name} ({s.type} {s.address or s.command})" for s in specs) or "none"
