"""`qsift setup qmail`: a daemontools service for qsift, tcprules lines that send qmail-smtpd's mail to it.

qmail-smtpd runs `$QMAILQUEUE` for each message; the rules set it to qsift-queue per connection, never
by replacing `bin/qmail-queue` (which would route qmail-send's bounces and qmail-local's forwards through
the filter too: qmail-protocols.md §5). The rules also set `QMQPSERVERS`, so qsift-queue never reads
`control/qmqpservers`, a file a stock qmail-qmqpc on the same host may use with other servers.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from qsift.errors import ConfigError
from qsift.queue_client import servers as qmqp_servers
from qsift.setup import tcprules
from qsift.setup.arguments import CUSTOM_ERROR_CONVENTIONS
from qsift.setup.checks import absolute_path, account_name
from qsift.setup.plan import SCRIPT_MODE, Plan, PlannedDir, PlannedFile

RULES_FRAGMENT = "tcp.smtp.qsift"


@dataclass(frozen=True)
class QmailOptions:
    #: The qsift and qsift-queue executables (absolute paths).
    qsift: str
    qsift_queue: str
    qmail_home: str = "/var/qmail"
    #: Where the service directory `qsift/` is made; the postmaster links it into svscan's directory.
    service_dir: str = "/var/qsift/service"
    log_dir: str = "/var/log/qsift"
    user: str = "qsift"
    log_user: str = "qmaill"
    #: The QMQP address qsift listens on, first in qsift-queue's server list.
    listen: str = "127.0.0.1:10628"
    #: More QMQP servers for qsift-queue (`host[:port] [weight]`), for failover and load balancing.
    servers: tuple[str, ...] = ()
    config: str = "/etc/qsift/qsift.toml"
    #: The client key qsift-queue signs X-Qsift-Client with ($QSIFT_CLIENT_KEY); "" sends no field.
    client_key: str = ""
    #: `QSIFT_CUSTOM_ERROR` for the rules ("" leaves it unset: qmail-smtpd's fixed texts).
    custom_error: str = ""
    #: tcprules addresses allowed to relay (RELAYCLIENT=""), besides the default rule for everyone.
    relay: tuple[str, ...] = ("127.",)
    write_control: bool = False

    @property
    def service(self) -> str:
        return os.path.join(self.service_dir, "qsift")


def check(options: QmailOptions) -> None:
    """Refuse options that would produce a broken service or rules file."""
    for flag, path in (
        ("--qsift", options.qsift),
        ("--qsift-queue", options.qsift_queue),
        ("--qmail-home", options.qmail_home),
        ("--service-dir", options.service_dir),
        ("--log-dir", options.log_dir),
        ("--config", options.config),
    ):
        absolute_path(flag, path)
    account_name("--user", options.user)
    account_name("--log-user", options.log_user)
    if options.client_key:
        absolute_path("--client-key", options.client_key)
    if options.custom_error and options.custom_error not in CUSTOM_ERROR_CONVENTIONS:
        raise ConfigError(f"--custom-error must be one of {', '.join(CUSTOM_ERROR_CONVENTIONS)}")
    server_list(options)


def server_list(options: QmailOptions) -> list[qmqp_servers.Server]:
    """qsift's own address first, then the extra servers, as qsift-queue will parse them."""
    found: list[qmqp_servers.Server] = []
    for flag, text in [("--listen", options.listen)] + [("--servers", s) for s in options.servers]:
        parsed, complaints = qmqp_servers.parse_env(text)
        if complaints or not parsed:
            raise ConfigError(f"{flag} {text!r}: {'; '.join(complaints) or 'no server'}")
        if flag == "--listen" and (len(parsed) != 1 or parsed[0].weight != qmqp_servers.DEFAULT_WEIGHT):
            raise ConfigError(f"--listen takes one host:port, not {text!r}")
        found += parsed
    return found


def server_text(server: qmqp_servers.Server) -> str:
    weight = "" if server.weight == qmqp_servers.DEFAULT_WEIGHT else f" {server.weight}"
    return f"{server}{weight}"


def shell_words(*words: str) -> str:
    """Words for sh: plain where safe, else in double quotes with \\ $ ` " escaped (shellcheck reads a
    `$` inside single quotes as a mistake)."""
    return " ".join(
        word if shlex.quote(word) == word else '"' + re.sub(r'([\\$`"])', r"\\\1", word) + '"'
        for word in words
    )


def run_script(options: QmailOptions) -> str:
    command = shell_words(options.qsift, "serve", "--config", options.config)
    return (
        "#!/bin/sh\n"
        "# qsift under daemontools (written by `qsift setup qmail`).\n"
        "# supervise pipes only fd 1 into log/run: qsift logs on stderr.\n"
        "exec 2>&1\n"
        "# setuidgid starts qsift as its own user (qsift could also drop to `user` from its config after\n"
        "# binding). setuidgid keeps only the user's primary group: a scanner socket must be reachable\n"
        "# through that group.\n"
        f"exec setuidgid {shell_words(options.user)} {command}\n"
    )


def log_run_script(options: QmailOptions) -> str:
    command = shell_words("multilog", "t", "s1000000", "n20", options.log_dir)
    return (
        "#!/bin/sh\n"
        "# qsift's log (written by `qsift setup qmail`): TAI64N stamps (read them with tai64nlocal),\n"
        "# files of 1 MB, the last 20 kept.\n"
        f"exec setuidgid {shell_words(options.log_user)} {command}\n"
    )


def rule_variables(options: QmailOptions) -> list[tuple[str, str]]:
    """What every qmail-smtpd connection gets, besides RELAYCLIENT for the relaying clients."""
    variables = [
        ("QMAILQUEUE", options.qsift_queue),
        ("QMQPSERVERS", ", ".join(server_text(server) for server in server_list(options))),
    ]
    if options.client_key:
        variables.append(("QSIFT_CLIENT_KEY", options.client_key))
    if options.custom_error:
        variables.append(("QSIFT_CUSTOM_ERROR", options.custom_error))
    return variables


def rules_fragment(options: QmailOptions) -> str:
    variables = rule_variables(options)
    lines = [
        "# qmail-smtpd's tcprules lines for qsift (written by `qsift setup qmail`). Copy them into the",
        "# rules file qmail-smtpd's tcpserver -x reads (e.g. /etc/tcp.smtp): the first matching line wins,",
        "# so they replace that file's own lines for the same addresses. Then rebuild the cdb:",
        "#   tcprules /etc/tcp.smtp.cdb /etc/tcp.smtp.tmp < /etc/tcp.smtp",
        "# QMQPSERVERS here: qsift-queue then never reads control/qmqpservers (stock qmail-qmqpc's file).",
    ]
    lines += [tcprules.rule(address, [("RELAYCLIENT", ""), *variables]) for address in options.relay]
    lines.append(tcprules.rule("", variables))
    return "\n".join(lines) + "\n"


def qmqpservers_file(options: QmailOptions) -> str:
    lines = [
        "# QMQP servers for qsift-queue: host:port and an optional weight (0: backup), one per line.",
        "# Stock qmail-qmqpc reads only the IP address of each line and always uses port 628.",
    ]
    return "\n".join(lines + [server_text(server) for server in server_list(options)]) + "\n"


def plan(options: QmailOptions) -> Plan:
    check(options)
    service = options.service
    files = [
        PlannedFile(os.path.join(service, "run"), run_script(options), SCRIPT_MODE),
        PlannedFile(os.path.join(service, "log", "run"), log_run_script(options), SCRIPT_MODE),
        PlannedFile(os.path.join(service, RULES_FRAGMENT), rules_fragment(options)),
    ]
    directories = [
        PlannedDir(options.service_dir),
        PlannedDir(service),
        PlannedDir(os.path.join(service, "log")),
        PlannedDir(options.log_dir, owner=options.log_user),
    ]
    if options.write_control:
        directories.append(PlannedDir(os.path.join(options.qmail_home, "control")))
        files.append(PlannedFile(control_file(options), qmqpservers_file(options)))
    return Plan(tuple(directories), tuple(files))


def control_file(options: QmailOptions) -> str:
    return os.path.join(options.qmail_home, "control", "qmqpservers")


def servers_explained(options: QmailOptions) -> str:
    """Why the rules carry the server list, and the same list as control/qmqpservers lines."""
    where = "written there" if options.write_control else "printed only; --write-control writes them"
    return (
        "qsift-queue's QMQP servers are set as QMQPSERVERS by the rules. qsift-queue reads "
        f"{control_file(options)} only when QMQPSERVERS is unset, so a stock qmail-qmqpc that uses "
        "that file is not disturbed: it reads only the IPv4 address of each line and always connects "
        f"to port 628. The same list as control/qmqpservers lines ({where}):\n"
        + "".join(f"    {server_text(server)}\n" for server in server_list(options))
    )


def next_steps(options: QmailOptions) -> list[str]:
    service = options.service
    steps = [
        f"Copy the lines of {os.path.join(service, RULES_FRAGMENT)} into qmail-smtpd's rules file (the "
        "one its tcpserver -x reads; tcpserver opens the cdb at each connection, so no restart) and "
        "rebuild the cdb:\n  tcprules /etc/tcp.smtp.cdb /etc/tcp.smtp.tmp < /etc/tcp.smtp",
        f"Start qsift: ln -s {service} /service/ (or /etc/service/, where svscan looks); svscan starts it "
        f"within 5 seconds. Check with svstat /service/qsift /service/qsift/log and "
        f"tai64nlocal < {os.path.join(options.log_dir, 'current')}.",
        "Send a test message through qmail-smtpd: the log shows one `Passed CLEAN` line per message.",
    ]
    if options.client_key:
        key = shell_words(options.client_key)
        steps.insert(
            0,
            f"Make the client key that qsift ({options.user}) and qsift-queue (qmail-smtpd's user, qmaild) "
            "read, and nobody else: whoever reads it can claim to be a relay client. Name it in qsift.toml "
            f'as [client_context] key_file = "{options.client_key}":'
            f"\n  head -c 32 /dev/urandom > {key}; chown qmaild:{options.user} {key}; chmod 0440 {key}",
        )
    return steps
