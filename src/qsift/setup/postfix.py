"""`qsift setup postfix`: an after-queue content filter, the classic amavisd-new arrangement.

Postfix queues each message, hands it to qsift's SMTP (or LMTP) listener through a `content_filter`
transport, and qsift forwards clean mail to a second smtpd that queues it without filtering it again
(Postfix FILTER_README, "advanced content filter"). Postfix keeps the message queued until qsift's
final reply, so a qsift that is down or busy delays mail and never loses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qsift.config import Limits, ListenAddress, parse_address
from qsift.errors import ConfigError
from qsift.setup.arguments import PROTOCOLS
from qsift.setup.plan import Plan, PlannedDir, PlannedFile

TRANSPORT = "qsift"
MASTER_CF = "master.cf.qsift"
MAIN_CF = "main.cf.qsift"
QSIFT_TOML = "qsift.toml.postfix"
DEFAULT_MAX_SESSIONS = Limits().max_sessions


@dataclass(frozen=True)
class PostfixOptions:
    #: qsift's listener, where Postfix's content_filter delivers.
    listen: str = "127.0.0.1:10024"
    #: Postfix's re-injection smtpd, where qsift forwards clean mail.
    reinject: str = "127.0.0.1:10025"
    #: Messages handed to qsift at once (the transport's maxproc).
    maxproc: int = 10
    protocol: str = "smtp"


def tcp_address(flag: str, text: str) -> ListenAddress:
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if address.path is not None:
        raise ConfigError(f"{flag} must be host:port, not a unix socket: {text!r}")
    return address


def nexthop(address: ListenAddress) -> str:
    """A Postfix next hop without MX lookups: `[host]:port`, IPv6 included."""
    return f"[{address.host}]:{address.port}"


def check(options: PostfixOptions) -> None:
    tcp_address("--listen", options.listen)
    tcp_address("--reinject", options.reinject)
    if options.protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be smtp or lmtp, not {options.protocol!r}")
    if options.maxproc < 1:
        raise ConfigError(f"--maxproc must be 1 or more, not {options.maxproc}")


def master_cf(options: PostfixOptions) -> str:
    listen = tcp_address("--listen", options.listen)
    reinject = tcp_address("--reinject", options.reinject)
    client = (
        options.protocol
    )  # Postfix's smtp and lmtp clients share their parameters' names but for the prefix
    loopback = _loopback(reinject).replace("::1", "[::1]")
    return f"""\
# master.cf additions for qsift (written by `qsift setup postfix`): an after-queue content filter.
# The "{TRANSPORT}" transport hands each message to qsift's {client.upper()} listener on {listen}; qsift
# forwards clean mail to the smtpd on {reinject}, which queues it without filtering it again.
#
# maxproc {options.maxproc}: messages handed to qsift at once. It must not exceed qsift's max_sessions for
# that listener ([limits] max_sessions, {_sessions_said(options)}): past it a message waits
# busy_wait seconds for a slot, then hears 451 4.3.2 and Postfix tries again later.
{TRANSPORT}     unix  -       -       n       -       {options.maxproc}      {client}
  -o syslog_name=postfix/{TRANSPORT}
  -o {client}_data_done_timeout=1200
  -o {client}_send_xforward_command=yes
  -o {client}_tls_security_level=none
  -o {client}_generic_maps=
  -o disable_mime_output_conversion=yes

# The re-injection listener. Its maxproc is at least the transport's: every qsift session forwards on
# a connection of its own. mynetworks: the addresses qsift connects from.
{_service_address(reinject)} inet n       -       n       -       {options.maxproc}      smtpd
  -o syslog_name=postfix/reinject
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o mynetworks={loopback}
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=
  -o smtpd_end_of_data_restrictions=
  -o smtpd_authorized_xforward_hosts={loopback}
  -o smtpd_tls_security_level=none
  -o smtpd_error_sleep_time=0
  -o smtpd_soft_error_limit=1001
  -o smtpd_hard_error_limit=1000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
"""


def _loopback(address: ListenAddress) -> str:
    """The loopback network of the address's family: where Postfix on this host connects from."""
    return "::1/128" if address.host and ":" in address.host else "127.0.0.0/8"


def _sessions_said(options: PostfixOptions) -> str:
    if options.maxproc > DEFAULT_MAX_SESSIONS:
        return f"{DEFAULT_MAX_SESSIONS} by default; {QSIFT_TOML} sets {options.maxproc}"
    return f"{DEFAULT_MAX_SESSIONS} by default"


def _service_address(address: ListenAddress) -> str:
    host = f"[{address.host}]" if address.host and ":" in address.host else address.host
    return f"{host}:{address.port}"


def main_cf(options: PostfixOptions) -> str:
    listen = tcp_address("--listen", options.listen)
    return f"""\
# main.cf additions for qsift (written by `qsift setup postfix`); or: postconf -e 'name = value'
# Every message Postfix receives goes through qsift once, after it is queued.
content_filter = {TRANSPORT}:{nexthop(listen)}
# Address mappings (canonical, virtual, masquerading) wait for the re-injection listener, so qsift sees
# the addresses as they came and they are applied once. Merge with a receive_override_options you have.
receive_override_options = no_address_mappings
"""


def qsift_toml(options: PostfixOptions) -> str:
    listen = tcp_address("--listen", options.listen)
    reinject = tcp_address("--reinject", options.reinject)
    if options.maxproc > DEFAULT_MAX_SESSIONS:
        sessions = (
            f"max_sessions = {options.maxproc}  # at least master.cf's maxproc for the qsift transport\n"
        )
    else:
        sessions = (
            f"# max_sessions ({DEFAULT_MAX_SESSIONS} by default) must stay at least master.cf's maxproc "
            f"({options.maxproc}).\n"
        )
    postfix_host = _loopback(listen)
    return f"""\
# qsift.toml for Postfix (written by `qsift setup postfix`). [[listen]] tables replace the default
# listeners (QMQP on 127.0.0.1:10628, SMTP on 127.0.0.1:10024): list every one qsift is to keep.
[[listen]]
protocol = "{options.protocol}"
address = "{listen}"
# The Postfix host, whose {options.protocol} client names the original client with XFORWARD: that client
# picks the policy bank, so no other host may (add Postfix's address to acl too if it runs elsewhere).
xforward_hosts = ["{postfix_host}"]
{sessions}
[forward]
method = "smtp:{nexthop(reinject)}"
"""


def plan(options: PostfixOptions, directory: str) -> Plan:
    check(options)
    return Plan(
        (PlannedDir(directory),),
        (
            PlannedFile(os.path.join(directory, MASTER_CF), master_cf(options)),
            PlannedFile(os.path.join(directory, MAIN_CF), main_cf(options)),
            PlannedFile(os.path.join(directory, QSIFT_TOML), qsift_toml(options)),
        ),
    )


def next_steps(options: PostfixOptions, directory: str | None) -> list[str]:
    """What to do with the snippets, written into `directory` or (None) printed above."""
    listen = tcp_address("--listen", options.listen)

    def snippet(name: str) -> str:
        return os.path.join(directory, name) if directory else f"the {name} lines above"

    return [
        f"Append {snippet(MASTER_CF)} to /etc/postfix/master.cf.",
        f"Set the main.cf lines ({snippet(MAIN_CF)}), merged with any receive_override_options you have:"
        f"\n  postconf -e 'content_filter = {TRANSPORT}:{nexthop(listen)}'"
        " 'receive_override_options = no_address_mappings'",
        f"Merge {snippet(QSIFT_TOML)} into qsift.toml; restart qsift.",
        "postfix check && postfix reload. Postfix's log then shows postfix/qsift/smtp lines with "
        f"relay={listen.host}[{listen.host}]:{listen.port} status=sent, and qsift's log one "
        "`Passed CLEAN` line per message.",
    ]
