"""Who the daemon runs as, and the directories only it may read.

The parent binds the listeners (a port under 1024 needs root), then drops to `user` (and `group`) for
good before any message is read. Running as root without `user` is refused unless `allow_root = true`
says it is meant: a content filter takes apart hostile archives, and a bug there must not be root's.
The state directory (outcome record, mark key, status) and the quarantine hold mail and secrets: they
are made 0700 and owned by the run user, and an existing one that others can read is refused with the
command that fixes it, rather than silently changed.

Python imports some modules only when first used, so a process keeps reading its installation long after
it started. A run user who cannot read it (qsift in a venv under /root) would start, say ready, and fail
at the first message: concurrent.futures imports its thread pool on the first `asyncio.to_thread`, which
a worker makes after the forward, to record it. So the parent imports what the workers load late before
it drops, and first checks that the run user can start this Python and import qsift at all.
"""

from __future__ import annotations

import grp
import importlib
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass

from qsift.config import Config
from qsift.errors import ConfigError

#: The one mode of every directory that holds mail or secrets (state_dir, the quarantine): what `qsift
#: serve` makes and accepts, and what `qsift setup` tells the postmaster to make.
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str


def run_as(config: Config) -> RunAs | None:
    """The user to become, or None to stay who we are; ConfigError for root without a word about it."""
    if not config.user:
        if os.geteuid() == 0 and not config.allow_root:
            raise ConfigError(
                "running as root: set `user` (qsift binds, then drops to it) or `allow_root = true`"
            )
        return None
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"user {config.user!r} does not exist") from None
    gid = entry.pw_gid
    if config.group:
        try:
            gid = grp.getgrnam(config.group).gr_gid
        except KeyError:
            raise ConfigError(f"group {config.group!r} does not exist") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise ConfigError(f"only root can become user {config.user!r}; started as uid {os.geteuid()}")
    return RunAs(entry.pw_uid, gid, config.user)


#: Modules the workers load on first use, not at start: imported by the parent before it drops.
IMPORTED_BEFORE_DROP = ("concurrent.futures.thread",)
#: What the run user's own Python must import for the check: the serving code and what IMPORTED_BEFORE_DROP
#: and the metrics load late.
_CAN_RUN_IMPORTS = ("qsift.serve.supervisor", "prometheus_client.multiprocess", *IMPORTED_BEFORE_DROP)
_CAN_RUN_TIMEOUT = 60.0


def import_before_drop() -> None:
    """Load now, as root, what the workers would otherwise import after the drop."""
    for name in IMPORTED_BEFORE_DROP:
        importlib.import_module(name)


def check_can_run(user: RunAs) -> None:
    """ConfigError unless `user` can start this Python and import qsift (a fresh process as that user:
    anything less would pass on modules the parent already holds in memory)."""
    if os.geteuid() != 0 or user.uid == os.geteuid():
        return
    fix = f"install qsift where {user.name} can read it"
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"import {', '.join(_CAN_RUN_IMPORTS)}"],
            user=user.uid,
            group=user.gid,
            extra_groups=[user.gid],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=_CAN_RUN_TIMEOUT,
            check=False,
        )
    except OSError as exc:
        reason = f"{exc.filename or sys.executable}: {exc.strerror}"
        raise ConfigError(f"user {user.name!r} cannot run qsift ({reason}): {fix}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"user {user.name!r} cannot import qsift in {_CAN_RUN_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"{sys.executable} exit {result.returncode}"
        raise ConfigError(f"user {user.name!r} cannot run qsift ({reason}): {fix}")


def prepare_private_dirs(config: Config, user: RunAs | None) -> None:
    """Make (or check) every directory that holds mail or secrets: 0700, the run user's."""
    for directory in (config.state_dir, config.quarantine_dir):
        _private_dir(directory, user)
    if config.tmp_dir and not os.path.isdir(config.tmp_dir):
        raise ConfigError(f"tmp_dir {config.tmp_dir} does not exist")


def _private_dir(directory: str, user: RunAs | None) -> None:
    uid = user.uid if user else os.geteuid()
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=PRIVATE_DIR_MODE)
        if user is not None and os.geteuid() == 0:
            os.chown(directory, user.uid, user.gid)
    info = os.stat(directory)
    if info.st_uid != uid:
        owner = user.name if user else str(uid)
        raise ConfigError(
            f"{directory} belongs to uid {info.st_uid}, not to {owner}: chown {owner} {directory}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o777 & ~PRIVATE_DIR_MODE:
        raise ConfigError(
            f"{directory} is mode {mode:04o}; it holds mail and keys: chmod {PRIVATE_DIR_MODE:o} {directory}"
        )


def drop(user: RunAs) -> None:
    """Become `user` for good (no way back: the saved uid goes too)."""
    if os.geteuid() != 0:
        return
    os.setgroups([user.gid])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
