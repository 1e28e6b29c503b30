"""The configuration: one TOML file, declared once, built into frozen, typed sections.

Every key is declared on the dataclass that holds it (qsift/declare.py): here for the daemon's own
sections, and where they are used for the decoder's bounds, the banned rules, the scanners and the policy.
The file is parsed once and built by one converter (convert.py) that reports every problem at once, each
with its line. Every key has a default that serves the HOWTO's setup (QMQP on 127.0.0.1:10628, SMTP on
127.0.0.1:10024, clean mail forwarded by SMTP to a re-injection listener on 127.0.0.1:10025), so an empty
file runs. Names follow amavisd-new's where they mean the same thing. Unknown keys are errors: a typo in a
mail filter's configuration must not pass unnoticed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from qsift.auth.settings import ArcSettings, AuthSettings, DkimSettings, DnsSettings
from qsift.checks.banned import DEFAULT_RULES, BannedRule
from qsift.checks.content import CheckSettings
from qsift.checks.scanner_config import SpamSettings, VirusSettings
from qsift.declare import COUNT, STRING, STRINGS, named, optional, pattern, section, setting, tables
from qsift.decode.walk import DecodeLimits
from qsift.errors import ConfigError
from qsift.policy.bank import ORIGINATING, Bank, Network, Policies, networks
from qsift.policy.destiny import DestinySettings
from qsift.policy.settings import NotifyPolicy, Policy, PolicySettings, QuarantineSwitches
from qsift.store.settings import StoreSettings

MIB = 1024 * 1024
PROTOCOLS = ("qmqp", "smtp", "lmtp")
DEFAULT_QMQP_PORT = 10628
Path = tuple[str | int, ...]


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


def parse_address(text: str) -> ListenAddress:
    """`host:port`, `[v6]:port` or `unix:/path`; ValueError says what is wrong."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {text!r}")
        return ListenAddress(None, None, path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be host:port or unix:/path, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return ListenAddress(host, int(port_text), None)


_FORWARD_SCHEMES = {"smtp": "", "lmtp": "", "qmail-queue": "/", "maildir": "/"}


def forward_method(method: str) -> str:
    """amavisd-new's `$forward_method` syntax, checked; ValueError lists the forms."""
    scheme, _, rest = method.partition(":")
    start = _FORWARD_SCHEMES.get(scheme)
    if start is None or not rest or not rest.startswith(start):
        raise ValueError(
            f"{method!r} is not smtp:[host]:port, lmtp:[host]:port, lmtp:unix:/path, "
            "qmail-queue:/path or maildir:/path"
        )
    return method


def _tcp_address(text: str) -> str:
    if parse_address(text).path is not None:
        raise ValueError("must be host:port, not a unix socket")
    return text


def _at_most(most: int) -> Any:
    return lambda value: None if value <= most else f"must be {most} or less, not {value}"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile or broken client from hurting the daemon."""

    message_size: int = setting(
        50 * MIB,
        "Largest message accepted, in bytes (amavisd-new: $smtpd_message_size_limit; qmail: databytes).",
    )
    recipients: int = setting(10_000, "Most recipients per message; past it QMQP answers D and SMTP 452.")
    address_length: int = setting(
        1000, "Longest envelope address, in bytes (qmail-qmqpd refuses 1000 and more)."
    )
    memory_spool: int = setting(
        1 * MIB, "Bodies up to this size stay in memory; larger ones spool to the private temp dir."
    )
    client_timeout: float = setting(
        300.0, "Longest silence while reading a request before the connection is dropped, in seconds."
    )
    command_timeout: float = setting(
        300.0,
        "Longest an SMTP/LMTP command line may take to arrive, from the previous reply to its CRLF, in "
        "seconds: a deadline, which a byte a second does not reset (RFC 5321 4.5.3.2.7: 5 minutes; "
        "Postfix's smtpd_timeout with smtpd_per_record_deadline).",
    )
    request_timeout: float = setting(
        600.0,
        "Longest a message may take to arrive, in seconds: a whole QMQP request from the connection on, or "
        "SMTP/LMTP message content from 354 to the final dot. Past it the connection is dropped, nothing "
        "answered, nothing forwarded.",
    )
    session_timeout: float = setting(
        3600.0, "Longest a whole session may last, in seconds (QMQP says one hour at most)."
    )
    max_sessions: int = setting(
        64,
        "Messages in progress at once per listener in each worker: a QMQP request from its first byte, an "
        "SMTP/LMTP message from DATA, to the answer. Idle connections hold none. Past it, a bounded wait, "
        'then "too busy".',
        kind=COUNT,
    )
    max_connections_per_client: int = setting(
        10,
        "Connections open at once from one client address, per listener in each worker (Postfix's "
        'smtpd_client_connection_count_limit); past it the connection hears "too many connections" and '
        "is closed. 0: no cap. The listener's `client_limit_exceptions` are not counted.",
    )
    busy_wait: float = setting(
        10.0, "How long a new session waits for a free slot before it is told to try later, in seconds."
    )


@dataclass(frozen=True)
class Listener:
    protocol: str = setting(doc="qmqp, smtp or lmtp.", choices=PROTOCOLS)
    address: ListenAddress = setting(
        doc="host:port, [v6]:port or unix:/path.", kind=STRING, parse=parse_address
    )
    acl: tuple[Network, ...] = setting(
        ["127.0.0.0/8", "::1/128"], "Client addresses or networks allowed to connect.", parse=networks
    )
    policy_bank: str = setting("", "The [policy_bank.NAME] every message on this listener gets.")
    xforward_hosts: tuple[Network, ...] = setting(
        [],
        "SMTP/LMTP: the MTA hosts (addresses or networks) allowed to send XFORWARD, as Postfix's "
        "smtpd_authorized_xforward_hosts; others are not offered it and are refused.",
        parse=networks,
    )
    client_limit_exceptions: tuple[Network, ...] = setting(
        ["127.0.0.1/32", "::1/128"],
        "Client networks `max_connections_per_client` does not count: the host's own MTA, whose every "
        "qmail-smtpd (through qsift-queue) or Postfix smtp process connects from one loopback address.",
        parse=networks,
    )
    limits: Limits = section(Limits, "", flat=True)

    @property
    def name(self) -> str:
        return f"{self.protocol}:{self.address}"

    @staticmethod
    def config_rules(values: Mapping[str, Any], written: Collection[str]) -> Iterator[tuple[Path, str]]:
        if values.get("protocol") == "qmqp" and "xforward_hosts" in written:
            yield ("xforward_hosts",), "is for smtp and lmtp listeners (QMQP has no XFORWARD)"


@dataclass(frozen=True)
class Forward:
    """Where clean mail goes, in amavisd-new's `$forward_method` syntax."""

    method: str = setting(
        "smtp:[127.0.0.1]:10025",
        "smtp:[host]:port, lmtp:[host]:port, lmtp:unix:/path, qmail-queue:/path, maildir:/path.",
        parse=forward_method,
    )
    max_recipients_per_transaction: int = setting(
        1000, "More recipients than this are split over several SMTP transactions."
    )
    connect_timeout: float = setting(
        10.0, "Seconds to wait for the downstream MTA to accept the connection and greet."
    )
    command_timeout: float = setting(
        60.0, "Seconds to wait for the answer to each SMTP command (RFC 5321 suggests 5 minutes for MAIL)."
    )
    data_timeout: float = setting(180.0, "Seconds to wait while sending each block of the message.")
    final_timeout: float = setting(
        600.0, "Seconds to wait for the answer after the final dot (RFC 5321 4.5.3.2.6: 10 minutes)."
    )
    idle_sessions: int = setting(
        4,
        "SMTP and LMTP sessions each worker keeps open between messages for the next one (checked with "
        "RSET first, closed after 5 s unused); 0 opens a connection per message and ends it with QUIT.",
    )


@dataclass(frozen=True)
class QuarantineSettings:
    dir: str = setting("", 'Directory of the gzip files and their index; "" means `<state_dir>/quarantine`.')
    max_age_days: int = setting(
        0,
        "Quarantined messages older than this many days are deleted (hourly); 0 keeps them for ever, as "
        "amavisd-new does (then `qsift quarantine purge` from cron).",
    )
    keep: QuarantineSwitches = section(QuarantineSwitches, "", flat=True)


@dataclass(frozen=True)
class NotifySettings:
    method: str = setting(
        "",
        "Where DSNs and notices go, as [forward] method; empty: the forward method.",
        parse=optional(forward_method),
    )
    templates: str = setting("", "A directory with the site's own <kind>.txt notice templates.")
    who: NotifyPolicy = section(NotifyPolicy, "", flat=True)


@dataclass(frozen=True)
class DsnSettings:
    viruses_that_fake_sender: str = setting(
        ".*",
        "Regex of virus names whose senders are faked: no DSN. Default: every virus, as modern "
        "amavisd-new assumes; a site that wants to tell senders lists names instead.",
        parse=lambda value: pattern()(value) and value,
    )


@dataclass(frozen=True)
class MarkSettings:
    enabled: bool = setting(
        True, "Add the mark to passed mail (and pass mail with a valid one without scanning it again)."
    )
    key_file: str = setting(
        "",
        'The key, qsift\'s alone (mode 0600); "" means `<state_dir>/mark.key`, made at start-up if missing.',
    )

    def key_path(self, state_dir: str) -> str:
        return self.key_file or os.path.join(state_dir, "mark.key")


@dataclass(frozen=True)
class ClientContextSettings:
    key_file: str = setting(
        "",
        "The key file qsift-queue reads as $QSIFT_CLIENT_KEY, readable by qsift and qmail-smtpd's user "
        '(qmaild) only; "" means none: every X-Qsift-Client field is removed and ignored.',
    )


@dataclass(frozen=True)
class MetricsSettings:
    address: str = setting("", "host:port to serve metrics on; empty: none.", parse=optional(_tcp_address))


def _release_addresses(entries: list[str]) -> tuple[ListenAddress, ...]:
    return tuple(parse_address(entry) for entry in entries)


@dataclass(frozen=True)
class ReleaseSettings:
    """`[release]`: amavisd-new's release protocol (AM.PDP), for amavisd-release and the web front ends."""

    listen: tuple[ListenAddress, ...] = setting(
        [],
        "Where qsift serves amavisd-new's release protocol (AM.PDP): unix:/path and host:port, as "
        '["unix:/var/lib/qsift/amavisd.sock", "127.0.0.1:9998"] (amavisd-new on Debian: '
        "/var/lib/amavis/amavisd.sock for amavisd-release, TCP 9998 for MailZu, modoboa, iRedAdmin). "
        "Empty: no release server (`qsift release` still works). Every worker serves it.",
        kind=STRINGS,
        parse=_release_addresses,
    )
    acl: tuple[Network, ...] = setting(
        ["127.0.0.0/8", "::1/128"],
        "TCP clients allowed to ask for a release (amavisd-new's @inet_acl); others are closed unanswered.",
        parse=networks,
    )
    unix_socket_needs_secret: bool = setting(
        False,
        "Whether a release over the unix socket needs the message's secret_id too. False as Debian's "
        "AM.PDP-SOCK bank ($auth_required_release = 0): the socket's mode (0660) decides who may use it. "
        "Over TCP a secret_id is always needed.",
    )
    timeout: float = setting(
        60.0,
        "Longest silence while reading a release request, in seconds; the release itself is bounded by the "
        "forward's own timeouts (one cut short could go out unrecorded).",
    )


@dataclass(frozen=True)
class Config:
    log_level: int = setting(
        1, "0 (summary lines only) to 5 (protocol traces), as amavisd-new's $log_level.", check=_at_most(5)
    )
    syslog: str = setting(
        "", 'Log to syslog with this facility ("mail") instead of stderr; empty for stderr.'
    )
    myhostname: str = setting(
        "", 'The name qsift greets and says EHLO with; "" for the host\'s fully qualified name.'
    )
    tmp_dir: str = setting("", "Parent of the private 0700 spool directory; empty for the system temp dir.")
    state_dir: str = setting(
        "/var/lib/qsift",
        "Where durable state lives: the outcome record, the mark key, status files, the quarantine.",
    )
    dedupe_window: float = setting(
        3600.0, "How long an identical retry of a delivered message is answered from the record, in seconds."
    )
    banned_defaults: bool = setting(
        True, "Keep the built-in banned-file rules after the site's own `[[banned]]` tables."
    )
    workers: int = setting(0, "Worker processes sharing the listeners; 0 means one per CPU.")
    max_servers: int = setting(
        64,
        "Messages in progress at once over all workers (amavisd-new's $max_servers); past it, a bounded "
        'wait (`busy_wait`), then "too busy, try later".',
        check=lambda value: None if value >= 1 else f"must be 1 or more, not {value}",
    )
    max_requests: int = setting(
        10_000, "A worker is replaced after this many messages (amavisd-new's $max_requests); 0 never."
    )
    user: str = setting(
        "", "Drop to this user (and group: its own unless `group` says) after binding the listeners."
    )
    group: str = setting("", 'The group to drop to; "" for the user\'s own.')
    allow_root: bool = setting(
        False, "Running as root without `user` is refused unless this says it is wanted."
    )
    drain_timeout: float = setting(
        60.0, "How long SIGTERM (or a reload) gives messages in progress to finish, in seconds."
    )
    limits: Limits = section(Limits, "Bounds on what clients may send; each [[listen]] may override them.")
    listen: tuple[Listener, ...] = tables(
        Listener,
        "One table per listener. Default: QMQP on 127.0.0.1:10628 and SMTP on 127.0.0.1:10024.",
        default=(
            {"protocol": "qmqp", "address": f"127.0.0.1:{DEFAULT_QMQP_PORT}"},
            {"protocol": "smtp", "address": "127.0.0.1:10024"},
        ),
    )
    forward: Forward = section(Forward, "Where clean mail goes, in amavisd-new's $forward_method syntax.")
    decode: DecodeLimits = section(
        DecodeLimits, "The decoder's bounds: past them a message is unchecked, never clean."
    )
    banned: tuple[BannedRule, ...] = tables(
        BannedRule, "The site's banned-file rules, before the built-in ones (unless banned_defaults = false)."
    )
    virus: VirusSettings = section(
        VirusSettings, "Virus scanners: primaries side by side; backups only when every primary failed."
    )
    destiny: DestinySettings = section(
        DestinySettings, "A destiny per category: pass, discard, bounce or reject."
    )
    quarantine: QuarantineSettings = section(
        QuarantineSettings, "Which categories are quarantined when not delivered, and where."
    )
    notify: NotifySettings = section(NotifySettings, "DSNs, admin notices and recipient warnings.")
    spam: SpamSettings = section(
        SpamSettings, "The spam scanner (spamd or rspamd) and the spam levels; absent: no spam check."
    )
    policy: PolicySettings = section(
        PolicySettings, "Per-recipient policy: local domains, lovers, bypass lists."
    )
    dsn: DsnSettings = section(DsnSettings, "Delivery status notifications.")
    policy_bank: Mapping[str, Bank] = named(
        Bank,
        "Named overrides of the policy, chosen by listener, client network, RELAYCLIENT or SMTP AUTH. "
        f"{ORIGINATING} is built in (RELAYCLIENT or AUTH selects it).",
    )
    mark: MarkSettings = section(
        MarkSettings, "The X-Qsift-Scanned mark that keeps forwarded mail from a second scan."
    )
    client_context: ClientContextSettings = section(
        ClientContextSettings, "The key that vouches for the SMTP client qsift-queue saw (X-Qsift-Client)."
    )
    metrics: MetricsSettings = section(MetricsSettings, "The Prometheus endpoint.")
    release: ReleaseSettings = section(
        ReleaseSettings, "amavisd-new's release protocol (AM.PDP) for amavisd-release and the front ends."
    )
    dns: DnsSettings = section(DnsSettings, "The DNS client of the mail authentication checks.")
    store: StoreSettings = section(
        StoreSettings,
        "Where durable state lives: SQLite under state_dir, or PostgreSQL shared by several nodes.",
    )
    dkim: DkimSettings = section(
        DkimSettings, "DKIM signing of originating mail: the keys (`qsift dkim genkey`) and the switch."
    )
    auth: AuthSettings = section(
        AuthSettings,
        "Checks of inbound mail: DKIM, SPF, DMARC and ARC, and the Authentication-Results field.",
    )
    arc: ArcSettings = section(ArcSettings, "ARC sealing of checked mail passed on for others: the key.")

    def __post_init__(self) -> None:
        if not self.myhostname:
            object.__setattr__(self, "myhostname", socket.getfqdn())

    @staticmethod
    def config_rules(values: Mapping[str, Any], written: Collection[str]) -> Iterator[tuple[Path, str]]:
        """A listener's bank must exist (or be the built-in one), and no address may serve twice."""
        banks = {ORIGINATING, *values.get("policy_bank", {})}
        seen: dict[str, int] = {}
        for index, listener in enumerate(values.get("listen", ())):
            if listener.policy_bank and listener.policy_bank not in banks:
                yield ("listen", index, "policy_bank"), f"there is no [policy_bank.{listener.policy_bank}]"
            written_as = str(listener.address)
            if written_as in seen:
                yield (
                    ("listen", index, "address"),
                    f"{written_as} is [[listen]] #{seen[written_as] + 1}'s too",
                )
            seen.setdefault(written_as, index)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self.listen

    @cached_property
    def policies(self) -> Policies:
        base = Policy(
            self.destiny,
            self.spam.levels,
            self.policy,
            self.quarantine.keep,
            self.notify.who,
            self.dkim.switches,
            self.auth.policy,
            self.arc.switches,
        )
        by_listener = {
            listener.name: listener.policy_bank for listener in self.listen if listener.policy_bank
        }
        return Policies(base, self.policy_bank, by_listener)

    @property
    def banned_rules(self) -> tuple[BannedRule, ...]:
        """The `[[banned]]` tables (each named by its place unless described), then the built-in rules."""
        own = tuple(
            rule if rule.description else replace(rule, description=f"[[banned]] #{index}")
            for index, rule in enumerate(self.banned, 1)
        )
        return own + (DEFAULT_RULES if self.banned_defaults else ())

    @property
    def authserv_id(self) -> str:
        """The name of the Authentication-Results field qsift adds: `[auth] authserv_id`, else myhostname."""
        return self.auth.authserv_id or self.myhostname

    @property
    def quarantine_dir(self) -> str:
        return self.quarantine.dir or os.path.join(self.state_dir, "quarantine")

    @property
    def notify_forward(self) -> Forward:
        """Where DSNs and notices go: `[notify] method`, else the forward method."""
        return Forward(method=self.notify.method) if self.notify.method else self.forward

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def check_settings(self) -> CheckSettings:
        return CheckSettings(decode=self.decode, banned=self.banned_rules, tmp_dir=self.tmp_dir or None)


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
    """Build the Config from a file's text. Every error is in the one ConfigError, each with its line, as
    `qsift config check` reports them: a daemon refusing to start (or a SIGHUP refused) says all that is
    wrong at once."""
    from qsift.config.check import check_text  # check.py reports on this module's classes

    reports, built = check_text(text, source)
    if built is None:
        raise ConfigError("; ".join(str(report) for report in reports))
    return built


def from_mapping(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a Config from parsed TOML (tests, tools); every problem is in the ConfigError, by key."""
    from qsift.config.convert import convert

    built, problems = convert(Config, raw)
    if built is None:
        raise ConfigError(f"{source}: " + "; ".join(str(problem) for problem in problems))
    return built
