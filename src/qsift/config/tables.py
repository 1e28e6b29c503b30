"""qsift's configuration file described: every table and key, its type, default and meaning.

`qsift config check` validates a file against ROOT and `qsift config reference` renders
docs/configuration-reference.md from it. Tables backed by a dataclass take their keys, defaults and `#:`
comments from the class, so the two cannot drift; the rest are built from the parsers' own key sets, and
the values each key accepts are checked by the parsers' own functions (tests/unit/test_config_check.py
holds the schema and the parsers to the same verdict on any one value).
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

from qsift.checks.banned import PLACES
from qsift.checks.scanner_config import LEVEL_KEYS, SCANNER_KEYS, SPAM_TYPES, ScannerSpec, SpamSettings
from qsift.checks.scanners import parse_scanner_address
from qsift.checks.spam_levels import SpamLevels
from qsift.config import (
    DEFAULT_ACL,
    DEFAULT_LIMIT_EXCEPTIONS,
    PROTOCOLS,
    ClientContextSettings,
    Config,
    DsnSettings,
    Forward,
    Limits,
    Listener,
    MarkSettings,
    NotifySettings,
    QuarantineSettings,
    TopLevel,
    check_forward_method,
    parse_address,
)
from qsift.config.schema import Check, Key, Path, Table
from qsift.decode.walk import DecodeLimits
from qsift.errors import ConfigError
from qsift.policy.bank import BANK_KEYS, ORIGINATING
from qsift.policy.destiny import Destiny, DestinySettings
from qsift.policy.lookup import AddressTable
from qsift.policy.settings import ADMIN_KINDS, BYPASS, LOVERS, QUARANTINE_DEFAULTS, WARN_RECIPIENTS


def _raises(parse: Callable[[Any], object]) -> Check:
    """A check that runs the parser's own function on the value and reports what it refuses."""

    def check(value: Any) -> str | None:
        try:
            parse(value)
        except (ConfigError, ValueError, re.error) as exc:
            return str(exc).removeprefix(": ")
        return None

    return check


def _regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"bad regex: {exc}") from None


def _networks(values: list[str]) -> None:
    for value in values:
        ipaddress.ip_network(value, strict=False)


def _codes_or_regex(value: object) -> None:
    if isinstance(value, str):
        _regex(value)


def _at_most(value: int, most: int) -> str | None:
    return None if value <= most else f"must be {most} or less, not {value}"


def _at_least(value: int, least: int) -> str | None:
    return None if value >= least else f"must be {least} or more, not {value}"


def _unless_empty(check: Check) -> Check:
    """For keys where "" means "none"."""
    return lambda value: check(value) if value else None


def _metrics_address(value: str) -> str | None:
    problem = _ADDRESS(value)
    if problem is None and value.startswith("unix:"):
        return "must be host:port, not a unix socket"
    return problem


_ADDRESS = _raises(lambda v: parse_address(v, ""))
_REGEX = _raises(_regex)
_NETWORKS = _raises(_networks)
_LOOKUP = _raises(lambda v: AddressTable.parse(v, ""))
_FORWARD = _raises(lambda v: check_forward_method(v, ""))


# --- the tables ----------------------------------------------------------------------------------------


def _docs(kind: type) -> dict[str, str]:
    """The `#:` comments above a dataclass's fields (as Sphinx reads them), by field name; none where the
    source is not installed (only the reference needs them, never a check)."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    try:
        source = inspect.getsource(kind)
    except (OSError, TypeError):
        return docs
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", text)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs


def _from_dataclass(
    kind: type, *, only: Sequence[str] | None = None, docs: Mapping[str, str] | None = None, **keys: Key
) -> tuple[Key, ...]:
    """The keys of a dataclass-backed table: kind from the default's type; `keys` replace some."""
    written = {**_docs(kind), **(docs or {})}
    made = []
    for item in fields(kind):
        if only is not None and item.name not in only:
            continue
        if item.name in keys:
            made.append(keys[item.name])
            continue
        default = getattr(kind(), item.name) if item.default is MISSING else item.default
        made.append(Key(item.name, _kind_of(default), default, written.get(item.name, "")))
    return tuple(made)


def _kind_of(default: object) -> str:
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, float):
        return "seconds"
    return "string"


def _counts(keys: tuple[Key, ...], names: tuple[str, ...]) -> tuple[Key, ...]:
    """Keys the parser takes as whole numbers >= 1 (sizes, sessions, concurrency)."""
    return tuple(
        Key(k.name, "count", k.default, k.doc, k.choices, k.required, k.check, k.unset)
        if k.name in names
        else k
        for k in keys
    )


def _listener_rules(raw: Mapping[str, Any]) -> Iterable[tuple[Path, str]]:
    if raw.get("protocol") == "qmqp" and "xforward_hosts" in raw:
        yield ("xforward_hosts",), "is for smtp and lmtp listeners (QMQP has no XFORWARD)"


def _scanner_rules(raw: Mapping[str, Any]) -> Iterable[tuple[Path, str]]:
    kind = raw.get("type")
    allowed = SCANNER_KEYS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        return
    known = set().union(*SCANNER_KEYS.values())  # the others are unknown keys, reported as such
    for name in raw:
        if name in known and name not in allowed:
            yield (name,), f"is not for a {kind} scanner (allowed: {', '.join(sorted(allowed))})"
    needed = "address" if kind == "clamd" else "command"
    if needed not in raw:
        yield (needed,), f"is required for a {kind} scanner"


def _across_listeners(raw: Mapping[str, Any]) -> Iterable[tuple[Path, str]]:
    """What the listeners' keys must say together: a bank the file defines (or the built-in one), and
    no address twice."""
    banks = raw.get("policy_bank", {})
    defined = {ORIGINATING, *(banks if isinstance(banks, Mapping) else ())}
    listeners = raw.get("listen", [])
    seen: dict[str, int] = {}
    for index, listener in enumerate(listeners if isinstance(listeners, list) else []):
        if not isinstance(listener, Mapping):
            continue
        name = listener.get("policy_bank", "")
        if isinstance(name, str) and name and name not in defined:
            yield ("listen", index, "policy_bank"), f"there is no [policy_bank.{name}]"
        address = listener.get("address")
        if isinstance(address, str) and _ADDRESS(address) is None:
            written = str(parse_address(address))
            if written in seen:
                yield ("listen", index, "address"), f"{written} is [[listen]] #{seen[written] + 1}'s too"
            seen.setdefault(written, index)


def _spam_rules(raw: Mapping[str, Any]) -> Iterable[tuple[Path, str]]:
    if not raw:
        return
    for needed in ("type", "address"):
        if needed not in raw:
            yield (needed,), "is required when [spam] is set"


def _banned_rules(raw: Mapping[str, Any]) -> Iterable[tuple[Path, str]]:
    conditions = ("filename", "declared_type", "detected_type")
    if not any(name in raw for name in conditions):
        yield ("filename",), f"a [[banned]] table needs at least one of {', '.join(conditions)}"


_LEVEL_DOCS = {
    "tag_level": "Score from which X-Spam-* headers are added (local recipients).",
    "tag2_level": "Score from which mail is spammy: subject tag and X-Spam-Flag: YES.",
    "kill_level": "Score from which mail is spam and gets the spam destiny.",
    "dsn_cutoff_level": "Score from which no DSN is sent for blocked spam.",
    "quarantine_cutoff_level": "Score from which spam is not quarantined; none: always quarantined.",
}
_LEVEL_KEYS = tuple(Key(name, "level", getattr(SpamLevels(), name), _LEVEL_DOCS[name]) for name in LEVEL_KEYS)
_DESTINY_KEYS = tuple(
    Key(
        item.name,
        "string",
        getattr(DestinySettings(), item.name).value,
        f"What happens to mail in the {item.name} category.",
        tuple(d.value for d in Destiny),
    )
    for item in fields(DestinySettings)
)
_QUARANTINE_SWITCHES = tuple(
    Key(c.name.lower(), "boolean", on, f"Keep {c.name.lower()} mail that is not delivered.")
    for c, on in QUARANTINE_DEFAULTS.items()
)
_NOTIFY_DOCS = {
    **{
        key: f"Address told about blocked {c.name.lower()} mail; empty: nobody."
        for key, c in ADMIN_KINDS.items()
    },
    **{key: f"Warn local recipients of blocked {c.name.lower()} mail." for key, c in WARN_RECIPIENTS.items()},
    "method": "Where DSNs and notices go, as [forward] method; empty: the forward method.",
    "templates": "A directory with the site's own <kind>.txt notice templates.",
}
_POLICY_KEYS = (
    Key(
        "local_domains",
        "strings",
        None,
        "Lookup table of local recipients; unset: all are local.",
        check=_LOOKUP,
    ),
    Key(
        "recipient_delimiter",
        "string",
        "",
        'Address extension delimiter (amavisd-new\'s), e.g. "+".',
        check=lambda v: None if len(v) <= 1 else "must be one character or empty",
    ),
    Key("message_size_limit", "integer", 0, "Larger messages are OVERSIZED for a recipient; 0: no limit."),
    *(
        Key(
            name, "strings", [], f"Recipients who accept {c.name.lower()} mail (lookup table).", check=_LOOKUP
        )
        for name, c in LOVERS.items()
    ),
    *(
        Key(
            name,
            "strings",
            [],
            f"Recipients for whom the {c.name.lower()} check does not count.",
            check=_LOOKUP,
        )
        for name, c in BYPASS.items()
    ),
)
_RECIPIENT = Table(
    "recipient",
    "Per-recipient spam levels and size limit: the first table whose `match` matches counts.",
    (
        Key(
            "match",
            "strings",
            None,
            "Lookup table of the recipients this applies to.",
            required=True,
            check=_LOOKUP,
        ),
        *(Key(k.name, k.kind, None, k.doc) for k in _LEVEL_KEYS),
        Key("message_size_limit", "integer", None, "As [policy] message_size_limit, for these recipients."),
    ),
    array=True,
)


def _policy_tables(*, bank: bool) -> tuple[Table, ...]:
    def allowed(section: str, keys: tuple[Key, ...]) -> tuple[Key, ...]:
        if not bank:
            return keys
        names = BANK_KEYS[section]
        return tuple(
            Key(k.name, k.kind, None, k.doc, k.choices, check=k.check, unset="(the base policy's)")
            for k in keys
            if names is None or k.name in names
        )

    return (
        Table(
            "destiny",
            "A destiny per category: pass, discard, bounce or reject.",
            allowed("destiny", _DESTINY_KEYS),
        ),
        Table(
            "quarantine",
            "Which categories are quarantined when not delivered, and where.",
            allowed(
                "quarantine", (*(() if bank else _from_dataclass(QuarantineSettings)), *_QUARANTINE_SWITCHES)
            ),
        ),
        Table(
            "notify",
            "DSNs, admin notices and recipient warnings.",
            allowed(
                "notify",
                _from_dataclass(
                    NotifySettings,
                    docs=_NOTIFY_DOCS,
                    method=Key(
                        "method",
                        "string",
                        "",
                        _NOTIFY_DOCS["method"],
                        check=_unless_empty(_FORWARD),
                    ),
                ),
            ),
        ),
        Table("spam", "The spam levels a bank may change.", allowed("spam", _LEVEL_KEYS)) if bank else _SPAM,
        Table(
            "policy",
            "Per-recipient policy: local domains, lovers, bypass lists.",
            allowed("policy", _POLICY_KEYS),
            (_RECIPIENT,),
        ),
    )


_SPAM = Table(
    "spam",
    "The spam scanner (spamd or rspamd) and the spam levels; absent: no spam check.",
    (
        Key("type", "string", "", "The scanner's protocol.", SPAM_TYPES),
        Key(
            "address",
            "string",
            "",
            "Where it listens: host:port, host (the usual port) or unix:/path.",
            check=_raises(lambda v: parse_scanner_address(v, 783, "spam scanner")),
        ),
        *_counts(
            _from_dataclass(
                SpamSettings,
                only=("max_size", "timeout", "failure", "user", "concurrency"),
                failure=Key(
                    "failure", "string", "pass", _docs(SpamSettings).get("failure", ""), ("pass", "tempfail")
                ),
            ),
            ("max_size", "concurrency"),
        ),
        *_LEVEL_KEYS,
    ),
    rules=_spam_rules,
)
_SCANNER_DOCS = {
    "type": "clamd (its socket protocol) or command (a command-line scanner).",
    "name": "The scanner's name in logs and headers.",
    "timeout": "Longest a scan may take, in seconds.",
    "args": 'The command\'s arguments; "{}" is the directory holding the message.',
    "clean": "Exit codes (or a regex on the output) that mean clean.",
    "infected": "Exit codes (or a regex on the output) that mean infected.",
    "virus_name": "Regex whose first group is the virus name in the output.",
    "command": "The program to run (a command scanner).",
}


def _scanner_table(name: str, doc: str) -> Table:
    every = sorted(set().union(*SCANNER_KEYS.values()))
    overrides = {
        "type": Key("type", "string", None, _SCANNER_DOCS["type"], ("clamd", "command"), required=True),
        "address": Key(
            "address",
            "string",
            None,
            "clamd: unix:/path or host:port.",
            check=_raises(lambda v: parse_scanner_address(v, None, "clamd")),
        ),
        "args": Key("args", "strings", [], _SCANNER_DOCS["args"]),
        "clean": Key("clean", "codes or regex", [0], _SCANNER_DOCS["clean"], check=_raises(_codes_or_regex)),
        "infected": Key(
            "infected", "codes or regex", [1], _SCANNER_DOCS["infected"], check=_raises(_codes_or_regex)
        ),
        "virus_name": Key(
            "virus_name",
            "string",
            r"^.*?: (?!Infected Archive)(.*) FOUND$",
            _SCANNER_DOCS["virus_name"],
            check=_REGEX,
        ),
        "name": Key(
            "name", "string", None, "The scanner's name in logs; default ClamAV-clamd or the command."
        ),
        "command": Key(
            "command",
            "string",
            None,
            _SCANNER_DOCS["command"],
            check=lambda v: None if v else "must not be empty",
        ),
        "concurrency": Key(
            "concurrency",
            "integer",
            None,
            _docs(ScannerSpec).get("concurrency", ""),
            unset="8 (clamd), 2 (command)",
        ),
    }
    keys = _counts(
        _from_dataclass(ScannerSpec, only=every, docs=_SCANNER_DOCS, **overrides),
        ("max_stream", "sessions", "concurrency"),
    )
    return Table(name, doc, keys, array=True, rules=_scanner_rules)


def _listener_keys() -> tuple[Key, ...]:
    limits = tuple(Key(k.name, k.kind, None, k.doc, unset="([limits])") for k in _from_dataclass(Limits))
    return (
        Key("protocol", "string", None, "qmqp, smtp or lmtp.", PROTOCOLS, required=True),
        Key("address", "string", None, "host:port, [v6]:port or unix:/path.", required=True, check=_ADDRESS),
        Key(
            "acl",
            "strings",
            list(DEFAULT_ACL),
            "Client addresses or networks allowed to connect.",
            check=_NETWORKS,
        ),
        Key("policy_bank", "string", "", "The [policy_bank.NAME] every message on this listener gets."),
        Key(
            "xforward_hosts",
            "strings",
            None,
            "SMTP/LMTP: the MTA hosts (addresses or networks) allowed to send XFORWARD; others are refused.",
            check=_NETWORKS,
            unset="[] (smtp, lmtp)",
        ),
        Key(
            "client_limit_exceptions",
            "strings",
            list(DEFAULT_LIMIT_EXCEPTIONS),
            _docs(Listener).get("client_limit_exceptions", ""),
            check=_NETWORKS,
        ),
        *limits,
    )


ROOT = Table(
    "",
    "Top-level keys.",
    _from_dataclass(
        TopLevel,
        docs=_docs(Config),
        log_level=Key(
            "log_level", "integer", 1, _docs(Config).get("log_level", ""), check=lambda v: _at_most(v, 5)
        ),
        max_servers=Key(
            "max_servers",
            "integer",
            64,
            _docs(Config).get("max_servers", ""),
            check=lambda v: _at_least(v, 1),
        ),
    ),
    (
        Table(
            "limits",
            "Bounds on what clients may send; each [[listen]] may override them.",
            _from_dataclass(Limits),
        ),
        Table(
            "listen",
            "One table per listener. Default: QMQP on 127.0.0.1:10628 and SMTP on 127.0.0.1:10024.",
            _listener_keys(),
            array=True,
            rules=_listener_rules,
        ),
        Table(
            "forward",
            "Where clean mail goes, in amavisd-new's $forward_method syntax.",
            _from_dataclass(
                Forward,
                method=Key(
                    "method",
                    "string",
                    Forward.method,
                    "smtp:[host]:port, lmtp:[host]:port, lmtp:unix:/path, qmail-queue:/path, maildir:/path.",
                    check=_FORWARD,
                ),
            ),
        ),
        Table(
            "decode",
            "The decoder's bounds: past them a message is unchecked, never clean.",
            _from_dataclass(DecodeLimits),
        ),
        Table(
            "banned",
            "The site's banned-file rules, before the built-in ones (unless banned_defaults = false).",
            (
                Key("description", "string", None, 'For logs and DSNs, e.g. "double extension".'),
                Key("filename", "string", None, "Regex searched in the file name (any case).", check=_REGEX),
                Key("declared_type", "string", None, "Regex matching the declared MIME type.", check=_REGEX),
                Key(
                    "detected_type",
                    "string",
                    None,
                    'Regex matching the detected type ("exe-ms").',
                    check=_REGEX,
                ),
                Key(
                    "place",
                    "string",
                    "any",
                    "any, top (a part of the message) or archive (inside one).",
                    PLACES,
                ),
                Key("allow", "boolean", False, "An exemption: matching parts are allowed."),
            ),
            array=True,
            rules=_banned_rules,
        ),
        Table(
            "virus",
            "Virus scanners: primaries side by side; backups only when every primary failed.",
            (),
            (
                _scanner_table("scanners", "A primary virus scanner."),
                _scanner_table("backup_scanners", "A backup virus scanner."),
            ),
        ),
        *_policy_tables(bank=False),
        Table(
            "dsn",
            "Delivery status notifications.",
            (
                Key(
                    "viruses_that_fake_sender",
                    "string",
                    DsnSettings.viruses_that_fake_sender,
                    "Regex of virus names whose senders are faked: no DSN. Default: every virus.",
                    check=_REGEX,
                ),
            ),
        ),
        Table(
            "policy_bank",
            f"Named overrides of the policy, chosen by listener, client network, RELAYCLIENT or SMTP AUTH. "
            f"{ORIGINATING} is built in (RELAYCLIENT or AUTH selects it).",
            (
                Key(
                    "client_networks",
                    "strings",
                    [],
                    "Clients in these networks get this bank.",
                    check=_NETWORKS,
                ),
                Key(
                    "relay_client",
                    "boolean",
                    False,
                    f"Mail with RELAYCLIENT set gets it (true for {ORIGINATING}).",
                ),
                Key("authenticated", "boolean", False, f"SMTP AUTH mail gets it (true for {ORIGINATING})."),
                Key("originating", "boolean", False, f"The mail is our users' own (true for {ORIGINATING})."),
            ),
            _policy_tables(bank=True),
            named=True,
        ),
        Table(
            "mark",
            "The X-Qsift-Scanned mark that keeps forwarded mail from a second scan.",
            _from_dataclass(MarkSettings),
        ),
        Table(
            "client_context",
            "The key that vouches for the SMTP client qsift-queue saw (X-Qsift-Client).",
            _from_dataclass(ClientContextSettings),
        ),
        Table(
            "metrics",
            "The Prometheus endpoint.",
            (
                Key(
                    "address",
                    "string",
                    "",
                    "host:port to serve metrics on; empty: none.",
                    check=_unless_empty(_metrics_address),
                ),
            ),
        ),
    ),
    rules=_across_listeners,
)
