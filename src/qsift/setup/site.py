"""What `qsift setup` finds on this machine that the postmaster must fix: accounts, the configuration file.

These are warnings, printed after the files were written; nothing here changes the machine. The
configuration is read through `qsift.config`, the same parser `qsift serve` uses.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
from collections.abc import Iterable
from stat import S_IROTH, S_IXOTH
from typing import TYPE_CHECKING

from qsift.errors import ConfigError
from qsift.serve.privileges import PRIVATE_DIR_MODE

if TYPE_CHECKING:
    from qsift.config import Config


#: What PrivateTmp= gives the service, writable under ProtectSystem=strict.
PRIVATE_TMP = ("/tmp", "/var/tmp")  # noqa: S108 (names, not files created)


def missing_accounts(names: Iterable[str]) -> list[str]:
    notes = []
    for name in dict.fromkeys(names):
        try:
            pwd.getpwnam(name)
        except KeyError:
            notes.append(
                f"There is no user {name}: useradd --system --home-dir /nonexistent "
                f"--shell /usr/sbin/nologin {name}"
            )
    return notes


def others_cannot_run(program: str) -> list[str]:
    """Why a user other than the owner cannot run the Python program `program`: a directory on the way
    to it, to the interpreter its #! line names or to the qsift package that interpreter imports, which
    others cannot search, or a file they cannot read."""
    problems = _blocked(program, S_IROTH | S_IXOTH)
    try:
        with open(program, "rb") as stream:
            first = stream.readline(4096)
    except OSError as exc:
        return problems or [f"{program}: {exc.strerror}"]
    interpreter = first[2:].split()[0].decode(errors="replace") if first.startswith(b"#!") else ""
    if interpreter:
        problems += _blocked(interpreter, S_IXOTH)
        package = _package_of(interpreter)
        if package:
            problems += _blocked(package, S_IROTH | S_IXOTH)
    return list(dict.fromkeys(problems))


def _package_of(interpreter: str) -> str:
    """The qsift package directory `interpreter` imports (asked, as a venv's pyvenv.cfg decides it)."""
    ask = "import os, qsift; print(os.path.dirname(qsift.__file__))"
    try:
        found = subprocess.run(
            [interpreter, "-c", ask], capture_output=True, text=True, timeout=30, check=False, env={}
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def _blocked(path: str, wanted: int) -> list[str]:
    """What keeps others from `path`, following its symbolic links hop by hop (each hop's directories
    must be searchable too: a venv's python is a link to the real one)."""
    problems = []
    for _ in range(40):  # the kernel's own limit on links followed
        problems += [_mode(directory) for directory in _parents(path) if not _allows(directory, S_IXOTH)]
        if not os.path.islink(path):
            break
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    if not _allows(path, wanted):
        problems.append(_mode(path))
    return problems


def _mode(path: str) -> str:
    try:
        return f"{path} is mode {stat.S_IMODE(os.stat(path).st_mode):04o}"
    except OSError as exc:
        return f"{path}: {exc.strerror}"


def _parents(path: str) -> list[str]:
    parents = []
    directory = os.path.dirname(os.path.abspath(path))
    while directory not in parents:
        parents.append(directory)
        directory = os.path.dirname(directory)
    return parents[::-1]


def _allows(path: str, wanted: int) -> bool:
    try:
        return os.stat(path).st_mode & wanted == wanted
    except OSError:
        return False


def load_config(path: str) -> tuple[Config | None, list[str]]:
    """The configuration `qsift serve --config path` would run with, or why it would not start."""
    from qsift import config

    if not os.path.exists(path):
        return None, [
            f"{path} does not exist, and qsift serve will not start without it. An empty file runs "
            "the defaults: QMQP on 127.0.0.1:10628, SMTP on 127.0.0.1:10024, clean mail forwarded by "
            "SMTP to 127.0.0.1:10025 (docs/configuration.md)."
        ]
    try:
        return config.load(path), []
    except ConfigError as exc:
        return None, [f"qsift serve will not start with this configuration: {exc}"]


def state_dir_note(settings: Config, user: str) -> str:
    return (
        f"qsift runs as {user} and writes its state_dir, which only {user} may read (qsift serve refuses "
        f"it otherwise): install -d -o {user} -g {user} -m {PRIVATE_DIR_MODE:04o} {settings.state_dir}"
    )


def myhostname_note(settings: Config, *, qmail_home: str, config_path: str) -> str | None:
    """Where qsift's myhostname (its DSNs' MAILER-DAEMON@ name) is not qmail's own, control/me."""
    control_me = os.path.join(qmail_home, "control", "me")
    try:
        with open(control_me, encoding="utf-8", errors="replace") as stream:
            # qmail's control_readline: the first line, trailing blanks dropped.
            name = stream.readline().strip()
    except OSError as exc:
        return (
            f"Cannot read {control_me} ({exc.strerror}), the name qmail uses for this host: set myhostname "
            f"in {config_path} to it, or qsift's DSNs come from MAILER-DAEMON@{settings.myhostname}."
        )
    if not name:
        return f"{control_me} is empty: qsift's DSNs come from MAILER-DAEMON@{settings.myhostname}."
    if name.lower() == settings.myhostname.lower():
        return None
    # The configuration is the postmaster's file: setup writes its own files only, and says the line.
    return (
        f"qmail calls this host {name} ({control_me}), qsift {settings.myhostname}: qsift's DSNs would come "
        f"from MAILER-DAEMON@{settings.myhostname}. Add to {config_path} (qsift setup writes only its own "
        f"files):\n    myhostname = {json.dumps(name)}"
    )


def qmail_notes(settings: Config, *, listen: str, client_key: str, qmail_home: str) -> list[str]:
    """Where the configuration and the qmail side disagree."""
    notes = []
    qmqp = [str(item.address) for item in settings.listeners if item.protocol == "qmqp"]
    if listen not in qmqp:
        notes.append(
            f"The configuration has no QMQP listener on {listen} (it has: {', '.join(qmqp) or 'none'}). "
            f'Add:\n    [[listen]]\n    protocol = "qmqp"\n    address = "{listen}"'
        )
    method = settings.forward.method
    if method.startswith("smtp:"):
        notes.append(
            f"qsift forwards clean mail by SMTP ({method}): run a re-injection qmail-smtpd there "
            f'(docs/qmail.md), or queue it directly with [forward] method = "qmail-queue:'
            f'{os.path.join(qmail_home, "bin", "qmail-queue")}" and no second qmail-smtpd.'
        )
    key_file = settings.client_context.key_file
    if client_key and key_file != client_key:
        notes.append(
            f"qsift-queue signs the client context with {client_key}, but qsift checks it with "
            f'{key_file or "nothing"}: set [client_context] key_file = "{client_key}".'
        )
    return notes


def systemd_notes(settings: Config, *, state_dir: str, writable: Iterable[str]) -> list[str]:
    """Directories the configuration writes that the unit's ProtectSystem=strict keeps read-only."""
    notes = []
    if settings.state_dir != state_dir:
        notes.append(f"The configuration's state_dir is {settings.state_dir}, the unit's {state_dir}.")
    allowed = [state_dir, *writable, *PRIVATE_TMP]
    wanted = [settings.tmp_dir, settings.quarantine_dir]
    if settings.forward.method.startswith("maildir:"):
        wanted.append(settings.forward.method.partition(":")[2])
    for path in wanted:
        if path and not any(_inside(path, parent) for parent in allowed):
            notes.append(f"qsift writes {path}: add it to ReadWritePaths= (--writable {path}).")
    if settings.forward.method.startswith("qmail-queue:"):
        notes.append(
            "The qmail-queue: forward method runs setuid qmail-queue, which this unit's NoNewPrivileges "
            "forbids: run qsift under daemontools (qsift setup qmail) or forward by SMTP."
        )
    return notes


def _inside(path: str, parent: str) -> bool:
    return os.path.normpath(path) == os.path.normpath(parent) or os.path.normpath(path).startswith(
        os.path.normpath(parent).rstrip("/") + "/"
    )
