"""`qsift setup systemd`: a hardened `qsift.service` unit.

The sandbox is as tight as qsift allows: no capabilities (its default ports are above 1024), a
read-only file system but for its state directory, private /tmp, and the @system-service system calls.
MemoryDenyWriteExecute was checked, not assumed: `qsift scan` on zip, tar.gz, 7z and rar attachments
(libarchive, libmagic, 7-Zip, a ctypes callback) runs unchanged under the kernel's own W^X switch
(prctl PR_SET_MDWE), which refuses what the unit's seccomp rule refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qsift.errors import ConfigError
from qsift.serve.privileges import PRIVATE_DIR_MODE
from qsift.setup.checks import absolute_path, account_name
from qsift.setup.plan import Plan, PlannedDir, PlannedFile

UNIT_NAME = "qsift.service"
_STATE_ROOT = "/var/lib/"


@dataclass(frozen=True)
class SystemdOptions:
    #: The qsift executable (absolute path).
    qsift: str
    unit_dir: str = "/etc/systemd/system"
    user: str = "qsift"
    config: str = "/etc/qsift/qsift.toml"
    state_dir: str = "/var/lib/qsift"
    #: More directories qsift writes (a tmp_dir, a quarantine dir or maildir outside the state dir).
    writable: tuple[str, ...] = ()


def unit_path(flag: str, path: str) -> str:
    """`path` as a unit file setting takes it: `%` doubled (specifiers); no blanks, quotes or `$`."""
    absolute_path(flag, path)
    if any(char.isspace() or char in "\"'\\$" for char in path):
        raise ConfigError(f"{flag}: a path in a unit file cannot hold blanks, quotes, \\ or $: {path!r}")
    return path.replace("%", "%%")


def unit(options: SystemdOptions) -> str:
    account_name("--user", options.user)
    qsift = unit_path("--qsift", options.qsift)
    config = unit_path("--config", options.config)
    state_dir = unit_path("--state-dir", options.state_dir)
    writable = " ".join([state_dir, *(unit_path("--writable", path) for path in options.writable)])
    return f"""\
# qsift.service (written by `qsift setup systemd`)
[Unit]
Description=qsift mail content filter
After=network.target

[Service]
Type=exec
User={options.user}
Group={options.user}
ExecStart={qsift} serve --config {config}
# SIGHUP: qsift reads its configuration again; a bad one is refused and logged, the old one kept.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
# SIGTERM stops accepting and lets sessions in progress finish for up to 60 s.
TimeoutStopSec=90s
SyslogIdentifier=qsift
UMask=0077
{_state_directory(options.state_dir)}\
# The file system is read-only but for these; add a tmp_dir, quarantine dir or maildir kept elsewhere.
ReadWritePaths={writable}

# Sandbox. With User= these imply NoNewPrivileges, so setuid programs run as qsift: the qmail-queue:
# forward method (setuid qmailq) cannot work here; under qmail use `qsift setup qmail` or SMTP.
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# Checked with libarchive, libmagic and 7-Zip. Command-line scanners run under it too: remove this
# line for one that compiles code at run time (a JIT).
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
# No capabilities: qsift's ports are above 1024. To listen below (QMQP on 628), put
# CAP_NET_BIND_SERVICE here and in AmbientCapabilities=.
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
"""


def _state_directory(state_dir: str) -> str:
    """StateDirectory= makes the state dir (owned by User=) at each start, when it is under /var/lib, in
    the one mode qsift serve accepts."""
    relative = state_dir[len(_STATE_ROOT) :].strip("/") if state_dir.startswith(_STATE_ROOT) else ""
    if not relative:
        return f"# {state_dir} must exist, belong to the service's user and be mode {PRIVATE_DIR_MODE:04o}.\n"
    return f"StateDirectory={relative}\nStateDirectoryMode={PRIVATE_DIR_MODE:04o}\n"


def plan(options: SystemdOptions) -> Plan:
    absolute_path("--unit-dir", options.unit_dir)
    content = unit(options)
    return Plan((PlannedDir(options.unit_dir),), (PlannedFile(unit_file(options), content),))


def unit_file(options: SystemdOptions) -> str:
    return os.path.join(options.unit_dir, UNIT_NAME)


def next_steps(options: SystemdOptions) -> list[str]:
    return [
        "systemctl daemon-reload && systemctl enable --now qsift",
        "Check it: systemctl status qsift; journalctl -u qsift (one `Passed CLEAN` line per message); "
        "systemd-analyze security qsift rates the sandbox.",
    ]
