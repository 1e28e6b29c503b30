"""The daemon's secrets, each readable only by whom it must be.

The client key vouches for qsift-queue's X-Qsift-Client field (the SMTP client's address, RELAYCLIENT,
the AUTH user): qsift-queue runs as qmail-smtpd's user (qmaild) and signs with it, so qmaild and qsift
read it, nobody else. Whoever else could read it could claim `relay=1` and get the ORIGINATING bank.
The mark key makes and checks the X-Qsift-Scanned mark on passed mail: only the daemon ever needs it
(it recognises its own mark), so it is qsift's alone. Whoever else could read it could make any mail
skip the scan. One key for both, as before, had to be readable by every local user for qmail-local's
forwards, which handed both powers to all of them: a key shared, or readable by others than it must
be, is refused at start with what to do, never used quietly.

The DKIM signing keys (`[[dkim.keys]]`) and the ARC sealing key (`[arc] key_file`) are read here as well,
at start and on SIGHUP: a file missing, unreadable or not a private key (for ARC, not an RSA key) stops
the start (or keeps the running configuration) with its name.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qsift.config import Config
from qsift.errors import ConfigError

if TYPE_CHECKING:
    from qsift.auth.arc import ArcKey
    from qsift.auth.signing import SigningKey

KEY_BYTES = 32


@dataclass(frozen=True)
class SiteKeys:
    #: Checks X-Qsift-Client; None when `[client_context] key_file` is unset (no field is believed).
    client: bytes | None
    #: Makes and checks X-Qsift-Scanned.
    mark: bytes
    #: Sign originating mail (`[[dkim.keys]]`), read at start and on SIGHUP, before privileges are dropped.
    dkim: tuple[SigningKey, ...] = ()
    #: Seals mail passed on for others (`[arc]`); None without a key.
    arc: ArcKey | None = None


def load_keys(config: Config, owner: tuple[int, int] | None = None) -> SiteKeys:
    """The client and mark keys, the DKIM keys and the ARC key; the mark key is made (0600, `owner`'s when
    given) at the first start. A DKIM or ARC key file missing, unreadable or not a key stops the start
    (ConfigError)."""
    mark_path = config.mark.key_path(config.state_dir)
    client_path = config.client_context.key_file
    if not os.path.exists(mark_path):
        _make(mark_path, owner)
    if client_path and _same_file(client_path, mark_path):
        raise ConfigError(
            f"[client_context] key_file and the mark key are the same file, {mark_path}: the client key is "
            "read by qmail-smtpd's user, the mark key by qsift alone; drop [mark] key_file (qsift makes "
            "its own in state_dir) or name another file"
        )
    mark = _read(mark_path, "the mark key")
    _check_mark_mode(mark_path)
    dkim, arc = _signing_keys(config), _sealing_key(config)
    if not client_path:
        return SiteKeys(None, mark, dkim, arc)
    if not os.path.exists(client_path):
        raise ConfigError(
            f"the client key {client_path} ([client_context] key_file) does not exist; make it, readable by "
            f"qsift and qmail-smtpd's user only: head -c {KEY_BYTES} /dev/urandom > {client_path}; "
            f"chown qmaild:{_group_name(owner)} {client_path}; chmod 0440 {client_path}"
        )
    client = _read(client_path, "the client key")
    _check_client_mode(client_path)
    return SiteKeys(client, mark, dkim, arc)


def _signing_keys(config: Config) -> tuple[SigningKey, ...]:
    if not config.dkim.keys:
        return ()
    # Imported here, as the keys are read: a site that signs nothing never loads dkimpy or OpenSSL.
    from qsift.auth.signing import load_signing_keys

    return load_signing_keys(config.dkim)


def _sealing_key(config: Config) -> ArcKey | None:
    arc = config.arc
    if not (arc.domain or arc.selector or arc.key_file):
        return None
    from qsift.auth.sealing import load_arc_key

    return load_arc_key(arc)


def _make(path: str, owner: tuple[int, int] | None) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        if owner is not None and os.geteuid() == 0:
            os.fchown(stream.fileno(), *owner)
        stream.write(os.urandom(KEY_BYTES))
        stream.flush()
        os.fsync(stream.fileno())


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            key = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not key:
        # An HMAC under an empty key is one anybody can make.
        raise ConfigError(f"{what} {path} is empty")
    return key


def _check_mark_mode(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the mark key {path} is mode {mode:04o}: whoever besides qsift can read it can make mail skip "
            f"the scan. It is qsift's alone: chmod 0600 {path}. If qsift-queue reads it for the client "
            "context (QSIFT_MARK_KEY, the setup before the keys were split), name it as [client_context] "
            "key_file instead, drop [mark] key_file, and give it to qsift-queue as QSIFT_CLIENT_KEY "
            "(docs/qmail.md, Keys)"
        )


def _check_client_mode(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o027:
        raise ConfigError(
            f"the client key {path} is mode {mode:04o}: every local user who can read it can claim to be "
            f"a relay client. Only qsift and qmail-smtpd's user may read it: chown qmaild:qsift {path}; "
            f"chmod 0440 {path}"
        )


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def _group_name(owner: tuple[int, int] | None) -> str:
    gid = owner[1] if owner is not None else os.getegid()
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
