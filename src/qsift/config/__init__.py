"""The configuration: one TOML file parsed once into frozen, typed objects.

Every key has a default that serves the HOWTO's setup (QMQP on 127.0.0.1:10628, SMTP on 127.0.0.1:10024,
clean mail forwarded by SMTP to a re-injection listener on 127.0.0.1:10025), so an empty file runs.
Names follow amavisd-new's where they mean the same thing. Unknown keys are errors, not silently
ignored: a typo in a mail filter's configuration must not pass unnoticed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from qsift.checks.banned import DEFAULT_RULES, BannedRule, rules_from_config
from qsift.checks.content import CheckSettings
from qsift.checks.scanner_config import (
    LEVEL_KEYS,
    SpamSettings,
    VirusSettings,
    spam_from_config,
    virus_from_config,
)
from qsift.decode.walk import DecodeLimits
from qsift.errors import ConfigError
from qsift.policy.bank import Bank, Policies, bank_from_config
from qsift.policy.settings import ADMIN_KINDS, WARN_RECIPIENTS

MIB = 1024 * 1024
PROTOCOLS = ("qmqp", "smtp", "lmtp")
DEFAULT_QMQP_PORT = 10628

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Postfix exempts $mynetworks from its per-client limits; here only the address the host's own MTA
#: connects from (Linux gives a connection to any 127.x address the source 127.0.0.1).
DEFAULT_LIMIT_EXCEPTIONS = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True)
class ListenAddress:
    """A TCP `host:port` or a unix socket path."""

    host: str | None
    port: int | None
    path: str | None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile or broken client from hurting the daemon."""

    #: Largest message accepted, in bytes (amavisd-new: $smtpd_message_size_limit; qmail: databytes).
    message_size: int = 50 * MIB
    #: Most recipients per message; past it QMQP answers D and SMTP 452.
    recipients: int = 10_000
    #: Longest envelope address, in bytes (qmail-qmqpd refuses 1000 and more).
    address_length: int = 1000
    #: Bodies up to this size stay in memory; larger ones spool to the private temp dir.
    memory_spool: int = 1 * MIB
    #: Longest silence while reading a request before the connection is dropped, in seconds.
    client_timeout: float = 300.0
    #: Longest an SMTP/LMTP command line may take to arrive, from the previous reply to its CRLF, in
    #: seconds: a deadline, which a byte a second does not reset (RFC 5321 4.5.3.2.7: 5 minutes; Postfix's
    #: smtpd_timeout with smtpd_per_record_deadline).
    command_timeout: float = 300.0
    #: Longest a message may take to arrive, in seconds: a whole QMQP request from the connection on, or
    #: SMTP/LMTP message content from 354 to the final dot. Past it the connection is dropped, nothing
    #: answered, nothing forwarded.
    request_timeout: float = 600.0
    #: Longest a whole session may last, in seconds (QMQP says one hour at most).
    session_timeout: float = 3600.0
    #: Messages in progress at once per listener in each worker: a QMQP request from its first byte, an
    #: SMTP/LMTP message from DATA, to the answer. Idle connections hold none. Past it, a bounded wait,
    #: then "too busy".
    max_sessions: int = 64
    #: Connections open at once from one client address, per listener in each worker (Postfix's
    #: smtpd_client_connection_count_limit); past it the connection hears "too many connections" and is
    #: closed. 0: no cap. The listener's `client_limit_exceptions` are not counted.
    max_connections_per_client: int = 10
    #: How long a new session waits for a free slot before it is told to try later, in seconds.
    busy_wait: float = 10.0


@dataclass(frozen=True)
class Listener:
    protocol: str
    address: ListenAddress
    acl: tuple[Network, ...]
    limits: Limits
    #: The policy bank every message on this listener gets (amavisd-new's %interface_policy); "" none.
    policy_bank: str = ""
    #: SMTP/LMTP: the hosts that may send XFORWARD (the MTA, Postfix, naming the client it had the message
    #: from); the others are not offered it and are refused (Postfix's smtpd_authorized_xforward_hosts).
    xforward_hosts: tuple[Network, ...] = ()
    #: Client networks `max_connections_per_client` does not count: the host's own MTA, whose every
    #: qmail-smtpd (through qsift-queue) or Postfix smtp process connects from one loopback address.
    client_limit_exceptions: tuple[Network, ...] = tuple(
        ipaddress.ip_network(network) for network in DEFAULT_LIMIT_EXCEPTIONS
    )

    @property
    def name(self) -> str:
        return f"{self.protocol}:{self.address}"


@dataclass(frozen=True)
class Forward:
    """Where clean mail goes, in amavisd-new's `$forward_method` syntax."""

    method: str = "smtp:[127.0.0.1]:10025"
    #: More recipients than this are split over several SMTP transactions.
    max_recipients_per_transaction: int = 1000
    #: Seconds to wait for the downstream MTA to accept the connection and greet.
    connect_timeout: float = 10.0
    #: Seconds to wait for the answer to each SMTP command (RFC 5321 suggests 5 minutes for MAIL).
    command_timeout: float = 60.0
    #: Seconds to wait while sending each block of the message.
    data_timeout: float = 180.0
    #: Seconds to wait for the answer after the final dot (RFC 5321 4.5.3.2.6: 10 minutes).
    final_timeout: float = 600.0


@dataclass(frozen=True)
class QuarantineSettings:
    """`[quarantine]`: where. Which categories are kept is policy (policy/settings.py), so a bank can
    change it."""

    #: Directory of the gzip files and their index; "" means `<state_dir>/quarantine`.
    dir: str = ""
    #: Quarantined messages older than this many days are deleted (hourly); 0 keeps them for ever, as
    #: amavisd-new does (then `qsift quarantine purge` from cron).
    max_age_days: int = 0


@dataclass(frozen=True)
class MarkSettings:
    """`[mark]`: the X-Qsift-Scanned mark on passed mail (wire/mark.py), so forwards are not rescanned."""

    #: Add the mark to passed mail (and pass mail with a valid one without scanning it again).
    enabled: bool = True
    #: The key, qsift's alone (mode 0600); "" means `<state_dir>/mark.key`, made at start-up if missing.
    key_file: str = ""

    def key_path(self, state_dir: str) -> str:
        return self.key_file or os.path.join(state_dir, "mark.key")


@dataclass(frozen=True)
class ClientContextSettings:
    """`[client_context]`: the key that vouches for qsift-queue's X-Qsift-Client field (relay, AUTH user)."""

    #: The key file qsift-queue reads as $QSIFT_CLIENT_KEY, readable by qsift and qmail-smtpd's user
    #: (qmaild) only; "" means none: every X-Qsift-Client field is removed and ignored.
    key_file: str = ""


@dataclass(frozen=True)
class Config:
    listeners: tuple[Listener, ...]
    forward: Forward = field(default_factory=Forward)
    limits: Limits = field(default_factory=Limits)
    #: The decoder's bounds (`[decode]`).
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    #: Banned-file rules: the `[[banned]]` tables, then (unless banned_defaults = false) the defaults.
    banned: tuple[BannedRule, ...] = DEFAULT_RULES
    #: Virus scanners (`[virus]`): none by default.
    virus: VirusSettings = field(default_factory=VirusSettings)
    #: The spam scanner and its levels (`[spam]`): none by default.
    spam: SpamSettings = field(default_factory=SpamSettings)
    #: The per-message policy: `[destiny]`, the `[quarantine]` switches, the `[notify]` admins and
    #: warnings, the `[spam]` levels, `[policy]`, and the `[policy_bank.NAME]` tables over them.
    policies: Policies = field(default_factory=lambda: Policies({}), compare=False)
    #: Where DSNs and notifications go (`[notify] method`); "" means the forward method.
    notify_method: str = ""
    #: `[notify] templates`: a directory with the site's own `<kind>.txt` templates.
    notify_templates: str = ""
    #: Virus names (regex) whose sender is faked: no DSN (`[dsn] viruses_that_fake_sender`). By default
    #: every virus, as modern amavisd-new assumes; a site that wants to tell senders lists names instead.
    viruses_that_fake_sender: str = ".*"
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    mark: MarkSettings = field(default_factory=MarkSettings)
    client_context: ClientContextSettings = field(default_factory=ClientContextSettings)

    @property
    def quarantine_dir(self) -> str:
        return self.quarantine.dir or os.path.join(self.state_dir, "quarantine")

    @property
    def notify(self) -> Forward:
        return Forward(method=self.notify_method) if self.notify_method else self.forward

    #: 0 (summary lines only) to 5 (protocol traces), as amavisd-new's $log_level.
    log_level: int = 1
    #: Log to syslog with this facility ("mail") instead of stderr; empty for stderr.
    syslog: str = ""
    #: The name qsift greets and says EHLO with; "" for the host's fully qualified name.
    myhostname: str = field(default_factory=socket.getfqdn)
    #: Parent of the private 0700 spool directory; empty for the system temp dir.
    tmp_dir: str = ""
    #: Where durable state lives: the outcome record, the mark key, status files, the quarantine.
    state_dir: str = "/var/lib/qsift"
    #: How long an identical retry of a delivered message is answered from the record, in seconds.
    dedupe_window: float = 3600.0
    #: Worker processes sharing the listeners; 0 means one per CPU.
    workers: int = 0
    #: Messages in progress at once over all workers (amavisd-new's $max_servers); past it, a bounded
    #: wait (`busy_wait`), then "too busy, try later".
    max_servers: int = 64
    #: A worker is replaced after this many messages (amavisd-new's $max_requests); 0 never.
    max_requests: int = 10_000
    #: Drop to this user (and group: its own unless `group` says) after binding the listeners.
    user: str = ""
    #: The group to drop to; "" for the user's own.
    group: str = ""
    #: Running as root without `user` is refused unless this says it is wanted.
    allow_root: bool = False
    #: How long SIGTERM (or a reload) gives messages in progress to finish, in seconds.
    drain_timeout: float = 60.0
    #: `[metrics] address`: where the Prometheus endpoint listens ("host:port"); "" for none.
    metrics_address: str = ""

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def check_settings(self) -> CheckSettings:
        return CheckSettings(decode=self.decode, banned=self.banned, tmp_dir=self.tmp_dir or None)


DEFAULT_LISTENERS: tuple[Mapping[str, Any], ...] = (
    {"protocol": "qmqp", "address": f"127.0.0.1:{DEFAULT_QMQP_PORT}"},
    {"protocol": "smtp", "address": "127.0.0.1:10024"},
)
DEFAULT_ACL = ("127.0.0.0/8", "::1/128")


def load(path: str) -> Config:
    """Read and validate a configuration file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (TOML is): {exc}") from None
    return loads(text, source=path)


def loads(text: str, source: str = "<string>") -> Config:
    """Validate a configuration file's text and build the Config. Every error the schema finds is in the
    one ConfigError, each with its line, as `qsift config check` reports them: a daemon refusing to start
    (or a SIGHUP refused) says all that is wrong at once."""
    # The schema describes this module's classes, so it is imported here rather than at the top.
    from qsift.config.check import schema_reports

    reports, raw = schema_reports(text, source)
    if reports:
        raise ConfigError("; ".join(str(report) for report in reports))
    return from_mapping(raw, source=source)


def from_mapping(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a Config from parsed TOML, with messages naming the file and key at fault."""
    raw = dict(raw)
    limits = _section(Limits, raw.pop("limits", {}), f"{source}: [limits]")
    forward = _section(Forward, raw.pop("forward", {}), f"{source}: [forward]")
    check_forward_method(forward.method, f"{source}: [forward] method")
    listen_tables = raw.pop("listen", list(DEFAULT_LISTENERS))
    if not isinstance(listen_tables, list) or not listen_tables:
        raise ConfigError(f"{source}: [[listen]] must be one or more tables")
    listeners = tuple(
        _listener(table, limits, f"{source}: [[listen]] #{index + 1}")
        for index, table in enumerate(listen_tables)
    )
    _unique_addresses(listeners, source)
    decode = _section(DecodeLimits, raw.pop("decode", {}), f"{source}: [decode]")
    banned_tables = raw.pop("banned", [])
    if not isinstance(banned_tables, list):
        raise ConfigError(f"{source}: [[banned]] must be one or more tables")
    try:
        own_rules = rules_from_config(banned_tables)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    destiny_raw = raw.pop("destiny", {})
    notify_raw = _table(raw.pop("notify", {}), f"{source}: [notify]")
    notify = _section(NotifySettings, notify_raw, f"{source}: [notify]")
    if notify.method:
        check_forward_method(notify.method, f"{source}: [notify] method")
    dsn = _section(DsnSettings, raw.pop("dsn", {}), f"{source}: [dsn]")
    quarantine_raw = dict(_table(raw.pop("quarantine", {}), f"{source}: [quarantine]"))
    where_and_how_long = {
        key: quarantine_raw.pop(key) for key in ("dir", "max_age_days") if key in quarantine_raw
    }
    quarantine = _section(QuarantineSettings, where_and_how_long, f"{source}: [quarantine]")
    spam_raw = _table(raw.get("spam", {}), f"{source}: [spam]")
    base_policy = {
        "destiny": destiny_raw,
        "quarantine": quarantine_raw,
        "notify": {k: v for k, v in notify_raw.items() if k in ADMIN_KINDS or k in WARN_RECIPIENTS},
        "spam": {k: v for k, v in spam_raw.items() if k in LEVEL_KEYS},
        "policy": raw.pop("policy", {}),
    }
    banks = _banks(raw.pop("policy_bank", {}), f"{source}: [policy_bank]")
    listener_banks = {listener.name: listener.policy_bank for listener in listeners if listener.policy_bank}
    policies = Policies(base_policy, banks, listener_banks, source)
    mark = _section(MarkSettings, raw.pop("mark", {}), f"{source}: [mark]")
    client_context = _section(
        ClientContextSettings, raw.pop("client_context", {}), f"{source}: [client_context]"
    )
    try:
        re.compile(dsn.viruses_that_fake_sender)
    except re.error as exc:
        raise ConfigError(f"{source}: [dsn] viruses_that_fake_sender: bad regex: {exc}") from None
    metrics = _section(MetricsSettings, raw.pop("metrics", {}), f"{source}: [metrics]")
    if metrics.address:
        parsed = parse_address(metrics.address, f"{source}: [metrics] address")
        if parsed.path is not None:
            raise ConfigError(f"{source}: [metrics] address must be host:port, not a unix socket")
    virus = virus_from_config(raw.pop("virus", {}), f"{source}: [virus]")
    spam = spam_from_config(raw.pop("spam", {}), f"{source}: [spam]")
    top = _section(TopLevel, raw, source)
    if not 0 <= top.log_level <= 5:
        raise ConfigError(f"{source}: log_level must be 0 to 5, not {top.log_level}")
    if top.max_servers < 1:
        raise ConfigError(f"{source}: max_servers must be 1 or more, not {top.max_servers}")
    values = {f.name: getattr(top, f.name) for f in fields(TopLevel)}
    if not values["myhostname"]:
        values["myhostname"] = socket.getfqdn()
    banned = own_rules + (DEFAULT_RULES if values.pop("banned_defaults") else ())
    return Config(
        listeners=listeners,
        forward=forward,
        limits=limits,
        decode=decode,
        banned=banned,
        virus=virus,
        spam=spam,
        policies=policies,
        notify_method=notify.method,
        notify_templates=notify.templates,
        viruses_that_fake_sender=dsn.viruses_that_fake_sender,
        quarantine=quarantine,
        mark=mark,
        client_context=client_context,
        metrics_address=metrics.address,
        **values,
    )


@dataclass(frozen=True)
class TopLevel:
    log_level: int = 1
    syslog: str = ""
    myhostname: str = ""
    tmp_dir: str = ""
    state_dir: str = "/var/lib/qsift"
    dedupe_window: float = 3600.0
    #: Keep the built-in banned-file rules after the site's own `[[banned]]` tables.
    banned_defaults: bool = True
    workers: int = 0
    max_servers: int = 64
    max_requests: int = 10_000
    user: str = ""
    group: str = ""
    allow_root: bool = False
    drain_timeout: float = 60.0


@dataclass(frozen=True)
class MetricsSettings:
    address: str = ""


@dataclass(frozen=True)
class NotifySettings:
    """`[notify]` as a whole, for the key check; the admins and warnings go to the policy."""

    method: str = ""
    templates: str = ""
    virus_admin: str = ""
    banned_admin: str = ""
    spam_admin: str = ""
    bad_header_admin: str = ""
    warn_virus_recip: bool = False
    warn_banned_recip: bool = False
    warn_bad_header_recip: bool = False


@dataclass(frozen=True)
class DsnSettings:
    viruses_that_fake_sender: str = ".*"


T = TypeVar("T")


def _section(kind: type[T], table: object, where: str) -> T:
    """Fill a dataclass from a TOML table: unknown keys and wrong types are errors."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    known = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {allowed})")
        default = getattr(kind, key, None)
        values[key] = _coerce(value, default, f"{where} {key}")
    return kind(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a whole number >= 0, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where} must be a number of seconds > 0, not {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return value


def _listener(table: object, limits: Limits, where: str) -> Listener:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    table = dict(table)
    protocol = table.pop("protocol", None)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where} protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    address = table.pop("address", None)
    if not isinstance(address, str):
        raise ConfigError(f'{where} address must be a string like "127.0.0.1:10628" or "unix:/path"')
    acl_raw = table.pop("acl", list(DEFAULT_ACL))
    if not isinstance(acl_raw, list):
        raise ConfigError(f"{where} acl must be a list of addresses or networks")
    bank = table.pop("policy_bank", "")
    if not isinstance(bank, str):
        raise ConfigError(f"{where} policy_bank must be the name of a [policy_bank.NAME] table")
    if protocol == "qmqp" and "xforward_hosts" in table:
        raise ConfigError(f"{where} xforward_hosts is for smtp and lmtp listeners (QMQP has no XFORWARD)")
    xforward_raw = table.pop("xforward_hosts", [])
    if not isinstance(xforward_raw, list):
        raise ConfigError(f"{where} xforward_hosts must be a list of addresses or networks")
    xforward_hosts = _acl(xforward_raw, where, "xforward_hosts")
    exceptions_raw = table.pop("client_limit_exceptions", list(DEFAULT_LIMIT_EXCEPTIONS))
    if not isinstance(exceptions_raw, list):
        raise ConfigError(f"{where} client_limit_exceptions must be a list of addresses or networks")
    listener_limits = _section(Limits, {**_as_dict(limits), **table}, where)
    return Listener(
        protocol,
        parse_address(address, where),
        _acl(acl_raw, where),
        listener_limits,
        bank,
        xforward_hosts,
        _acl(exceptions_raw, where, "client_limit_exceptions"),
    )


def _banks(tables: object, where: str) -> dict[str, Bank]:
    if not isinstance(tables, dict):
        raise ConfigError(f"{where} must be tables named [policy_bank.NAME]")
    return {name: bank_from_config(name, table, f"{where[:-1]}.{name}]") for name, table in tables.items()}


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _as_dict(limits: Limits) -> dict[str, Any]:
    return {f.name: getattr(limits, f.name) for f in fields(Limits)}


def parse_address(text: str, where: str = "address") -> ListenAddress:
    """Parse `host:port`, `[v6]:port` or `unix:/path`."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(f"{where}: unix socket path must be absolute: {text!r}")
        return ListenAddress(None, None, path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: address must be host:port or unix:/path, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return ListenAddress(host, int(port_text), None)


def _acl(entries: list[object], where: str, key: str = "acl") -> tuple[Network, ...]:
    networks: list[Network] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"{where} {key} entries must be strings, not {entry!r}")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{where} {key}: {exc}") from exc
    return tuple(networks)


def _unique_addresses(listeners: tuple[Listener, ...], source: str) -> None:
    seen: set[str] = set()
    for listener in listeners:
        key = str(listener.address)
        if key in seen:
            raise ConfigError(f"{source}: two listeners on {key}")
        seen.add(key)


_FORWARD_SCHEMES: dict[str, Callable[[str], bool]] = {
    "smtp": lambda rest: bool(rest),
    "lmtp": lambda rest: bool(rest),
    "qmail-queue": lambda rest: rest.startswith("/"),
    "maildir": lambda rest: rest.startswith("/"),
}


def check_forward_method(method: str, where: str) -> None:
    scheme, _, rest = method.partition(":")
    check = _FORWARD_SCHEMES.get(scheme)
    if check is None or not check(rest):
        raise ConfigError(
            f"{where}: {method!r} is not smtp:[host]:port, lmtp:[host]:port, lmtp:unix:/path, "
            "qmail-queue:/path or maildir:/path"
        )
