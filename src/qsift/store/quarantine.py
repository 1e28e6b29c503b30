"""The local quarantine: blocked messages kept as gzip files, with an SQLite index to list and release them.

As amavisd-new's `local:` quarantine, each message goes to its own file, `<category>-<mail_id>.gz`, in one
0700 directory. The file holds a small envelope block (who it was from and to, which amavisd-new keeps in
X-Envelope-* fields) and then the message exactly as it came, so `zcat` shows everything an administrator
needs. The index (`index.sqlite` in the same directory) makes listing fast and records releases.

A message counts as quarantined only once both are durable: the file is written under a temp name,
fsynced, renamed into place and the directory fsynced; then the index row is committed (WAL,
synchronous=FULL). Any failure is a SpoolError, which the pipeline answers with "try later", so a blocked
message is never lost: either it is kept, or the client keeps it.

Addresses may carry any bytes (surrogateescape strings, see qsift.model.address_bytes). The file gets
their exact bytes; the index keeps them as JSON with ASCII escapes, which round-trips lone surrogates
(SQLite TEXT must be valid UTF-8) and, unlike a comma-joined list, also addresses that contain a comma.

Calls block on fsync, so the daemon runs `store()` in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qsift.errors import SpoolError
from qsift.model import address_bytes
from qsift.store.sqlite import immediate, open_shared

INDEX_NAME = "index.sqlite"

_MAIL_ID = re.compile(r"[A-Za-z0-9_-]{6,32}")
_CATEGORY = re.compile(r"[A-Za-z0-9_-]{1,32}")
_COPY_CHUNK = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    mail_id     TEXT PRIMARY KEY,
    time        REAL NOT NULL,
    sender      TEXT NOT NULL,
    recipients  TEXT NOT NULL,
    category    TEXT NOT NULL,
    reasons     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    file        TEXT NOT NULL,
    released    TEXT NOT NULL DEFAULT '[]',
    fingerprint TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (time);
CREATE INDEX IF NOT EXISTS quarantine_category_time ON quarantine (category, time);
"""

_Rows = list[tuple[Any, ...]]

_COLUMNS = "mail_id, time, sender, recipients, category, reasons, size, file, released"


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined message, as the index knows it."""

    mail_id: str
    #: Unix time it was quarantined.
    time: float
    sender: str
    recipients: tuple[str, ...]
    #: Category.value: "virus", "banned", "spam", ...
    category: str
    #: Human details, e.g. "INFECTED: Eicar-Test-Signature".
    reasons: str
    #: Bytes of the message (without the envelope block).
    size: int
    #: Absolute path of the gzip file.
    file: str
    #: Recipients it was released to, in the order of release.
    released: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeptFacts:
    """What the pipeline knows of a kept message beyond its envelope, for amavisd-new's `msgs` and
    `msgrcpt` rows (store/pg_quarantine.py); the local quarantine has no place for them."""

    #: Per recipient, in order: amavisd-new's delivery status letter (P/R/B/D, reference §1.4).
    delivery_status: tuple[str, ...] = ()
    #: Per recipient, in order: whether it is one of this site's.
    local: tuple[bool, ...] = ()
    spam_level: float | None = None
    client_address: str = ""
    #: amavisd-new's msgs.secret_id: whoever can read it may release the message (mail_ids.py).
    secret_id: str = ""
    #: Per recipient, in order: its msgrcpt.rseqnum, its place among the envelope's recipients, so the
    #: message log's rows of the same message meet these (store/pg_log.py); 1, 2, ... when not given.
    numbers: tuple[int, ...] = ()


#: How long a release waits for another release of the same message to end before it gives up.
RELEASE_WAIT = 120.0
_RELEASE_POLL = 0.1


class ReleaseLock(Protocol):
    """Held while a release of one message is carried out, so that two releases of it (two clicks, two
    front ends, two nodes) cannot both read "not released yet" and both send it. Calls block."""

    def acquire(self) -> None:
        """Wait for the lock (at most RELEASE_WAIT seconds); SpoolError if it cannot be had."""
        ...

    def release(self) -> None: ...


class QuarantineStore(Protocol):
    """What the pipeline and the commands need of a quarantine: local (Quarantine) or shared in
    PostgreSQL (store/pg_quarantine.py's SharedQuarantine). Calls block; the daemon runs them in threads."""

    def store(
        self,
        mail_id: str,
        category: str,
        reasons: str,
        sender: str,
        recipients: Sequence[str],
        chunks: Iterable[bytes],
        now: float,
        fingerprint: str = "",
        facts: KeptFacts | None = None,
    ) -> QuarantineEntry: ...

    def mark_released(self, mail_id: str, recipients: Sequence[str]) -> None: ...

    def list(self, *, limit: int = 100, category: str | None = None) -> list[QuarantineEntry]: ...

    def kept_before(self, fingerprint: str, sender: str, not_before: float) -> QuarantineEntry | None: ...

    def purge(self, older_than: float) -> int: ...

    def get(self, mail_id: str) -> QuarantineEntry | None: ...

    def read(self, mail_id: str) -> tuple[str, tuple[str, ...], bytes]: ...

    def secret_id(self, mail_id: str) -> str: ...

    def release_lock(self, mail_id: str) -> ReleaseLock: ...

    def close(self) -> None: ...


def check_mail_id(mail_id: str) -> str:
    """The mail_id if it is safe as part of a file name; ValueError otherwise."""
    if not _MAIL_ID.fullmatch(mail_id):
        raise ValueError(f"invalid mail_id {mail_id!r}")
    return mail_id


def envelope_block(mail_id: str, category: str, sender: str, recipients: Sequence[str]) -> bytes:
    """The header lines written before the message in a quarantine file, ending with a blank line."""
    lines = [b"X-Qsift-Envelope-From: " + address_bytes(sender)]
    lines.extend(b"X-Qsift-Envelope-To: " + address_bytes(recipient) for recipient in recipients)
    lines.append(b"X-Qsift-Mail-Id: " + mail_id.encode("ascii"))
    lines.append(b"X-Qsift-Category: " + category.encode("ascii"))
    return b"\n".join(lines) + b"\n\n"


def check_kept(mail_id: str, category: str, sender: str, recipients: Sequence[str]) -> None:
    """What any quarantine checks before it keeps a message: the mail_id and category are names it
    writes, and a line break in an address would end the envelope block written before the message
    early (and could forge a field in it). The protocol layers refuse such addresses already
    (BadAddress); this is the last line of defence."""
    check_mail_id(mail_id)
    if not _CATEGORY.fullmatch(category):
        raise ValueError(f"invalid category {category!r}")
    for address in (sender, *recipients):
        if any(c in address for c in "\r\n\0"):
            raise ValueError(f"address with a line break or NUL: {address!r}")


class FileReleaseLock:
    """One lock file in the quarantine directory for every release from it: releases are rare, and every
    worker of the node (each serves AM.PDP) shares the directory. The lock goes with the file descriptor,
    so a worker that dies holding it lets it go."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise SpoolError("another release from this quarantine is still in progress") from None
                time.sleep(_RELEASE_POLL)
                continue
            except OSError as exc:
                os.close(fd)
                raise SpoolError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            self._fd = fd
            return

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # the lock goes with it


def _encode_addresses(addresses: Sequence[str]) -> str:
    return json.dumps(list(addresses), ensure_ascii=True)


def _decode_addresses(text: str) -> tuple[str, ...]:
    return tuple(str(address) for address in json.loads(text))


class Quarantine:
    """The quarantine directory and its index; safe to share between threads and processes."""

    def __init__(self, directory: str) -> None:
        """Create the directory (0700) and the index if they are missing.

        A directory that cannot be made does not fail here, so the daemon still starts and answers
        "try later" for the messages it cannot keep: every later call retries and raises SpoolError.
        """
        self.directory = os.path.abspath(directory)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        with contextlib.suppress(SpoolError):
            self._connection()

    # --- opening ------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open index; opened (and the directory made) on first use. Call with the lock held or
        from __init__."""
        if self._closed:
            raise SpoolError("quarantine is closed")
        if self._db is not None:
            return self._db
        try:
            if not os.path.isdir(self.directory):
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                os.chmod(self.directory, 0o700)
            path = os.path.join(self.directory, INDEX_NAME)
            # Create the index 0600 ourselves; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            db = open_shared(path, "FULL")
            try:
                db.executescript(_SCHEMA)
                _add_fingerprints(db)
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open quarantine {self.directory}: {exc}") from exc
        self._db = db
        return db

    # --- writing ------------------------------------------------------------------------------------

    def store(
        self,
        mail_id: str,
        category: str,
        reasons: str,
        sender: str,
        recipients: Sequence[str],
        chunks: Iterable[bytes],
        now: float,
        fingerprint: str = "",
        facts: KeptFacts | None = None,
    ) -> QuarantineEntry:
        """Keep a message durably; SpoolError if it cannot be kept (the caller answers "try later").

        Storing the same mail_id again replaces the earlier copy (an idempotent retry). `fingerprint`
        (the outcome record's body fingerprint) lets a retry of the same message find this copy. `facts`
        has no place in the local index and is not kept.
        """
        recipients = tuple(recipients)
        check_kept(mail_id, category, sender, recipients)
        name = f"{category}-{mail_id}.gz"
        path = os.path.join(self.directory, name)
        # SQLite TEXT must be valid UTF-8: lone surrogates (a file name from the message) become \udcxx.
        reasons = reasons.encode("utf-8", "backslashreplace").decode("utf-8")
        previous = self._query("SELECT file FROM quarantine WHERE mail_id = ?", (mail_id,))
        size = self._write_file(
            path, name, envelope_block(mail_id, category, sender, recipients), chunks, now
        )
        row = (
            mail_id,
            now,
            json.dumps(sender),
            _encode_addresses(recipients),
            category,
            reasons,
            size,
            name,
            fingerprint,
        )
        try:
            with self._lock, immediate(self._connection()) as db:
                db.execute(
                    f"INSERT OR REPLACE INTO quarantine ({_COLUMNS}, fingerprint) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '[]', ?)",
                    row,
                )
        except (sqlite3.Error, SpoolError) as exc:
            if not any(old == name for (old,) in previous):
                _unlink_quietly(path)  # not indexed: nobody would ever find it
            raise SpoolError(f"cannot index quarantined message {mail_id}: {exc}") from exc
        for (old,) in previous:
            if old != name:
                # The same mail_id kept before under another category: that copy is superseded.
                _unlink_quietly(os.path.join(self.directory, str(old)))
        return QuarantineEntry(mail_id, now, sender, recipients, category, reasons, size, path)

    def _write_file(self, path: str, name: str, block: bytes, chunks: Iterable[bytes], now: float) -> int:
        """Write the gzip file under a temp name, fsync, rename into place, fsync the directory; the
        message size. Nothing is left behind on failure."""
        temp = os.path.join(self.directory, f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}")
        size = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as raw:
                with gzip.GzipFile(
                    filename=name.removesuffix(".gz"), mode="wb", fileobj=raw, compresslevel=6, mtime=int(now)
                ) as packed:
                    packed.write(block)
                    for chunk in chunks:
                        packed.write(chunk)
                        size += len(chunk)
                raw.flush()
                os.fsync(raw.fileno())
            os.rename(temp, path)
        except BaseException as exc:
            _unlink_quietly(temp)
            if isinstance(exc, OSError):
                raise SpoolError(f"cannot write quarantine file {path}: {exc.strerror or exc}") from exc
            raise
        try:
            _fsync_directory(self.directory)
        except OSError as exc:
            _unlink_quietly(path)
            raise SpoolError(f"cannot sync quarantine directory {self.directory}: {exc}") from exc
        return size

    def mark_released(self, mail_id: str, recipients: Sequence[str]) -> None:
        """Record, durably, that the message went to `recipients`; KeyError if it is not quarantined."""
        check_mail_id(mail_id)
        try:
            with self._lock, immediate(self._connection()) as db:
                found = _add_released(db, mail_id, recipients)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot record the release of {mail_id}: {exc}") from exc
        if not found:
            raise KeyError(mail_id)

    # --- reading ------------------------------------------------------------------------------------

    def list(self, *, limit: int = 100, category: str | None = None) -> list[QuarantineEntry]:
        """The newest `limit` entries, newest first, of one category or all."""
        if limit < 0:
            raise ValueError(f"negative limit {limit}")
        where, params = ("WHERE category = ?", (category,)) if category is not None else ("", ())
        rows = self._query(
            f"SELECT {_COLUMNS} FROM quarantine {where} "  # noqa: S608 - constant text, '?' marks only
            "ORDER BY time DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
        return [self._entry(row) for row in rows]

    def kept_before(self, fingerprint: str, sender: str, not_before: float) -> QuarantineEntry | None:
        """The newest copy of the same message from the same sender kept at or after `not_before`: a
        client retrying after "try later" (a DSN that could not be sent) must not leave a copy per try."""
        if not fingerprint:
            return None
        rows = self._query(
            f"SELECT {_COLUMNS} FROM quarantine "  # noqa: S608 - constant text, '?' marks only
            "WHERE fingerprint = ? AND sender = ? AND time >= ? ORDER BY time DESC, rowid DESC LIMIT 1",
            (fingerprint, json.dumps(sender), not_before),
        )
        return self._entry(rows[0]) if rows else None

    def purge(self, older_than: float) -> int:
        """Forget and delete what was quarantined before `older_than`; how many went. The index rows go
        first, in one transaction: a crash in between leaves files nobody lists (swept the next time),
        never an entry whose file is gone."""
        try:
            with self._lock:
                with immediate(self._connection()) as db:
                    rows = db.execute("SELECT file FROM quarantine WHERE time < ?", (older_than,)).fetchall()
                    db.execute("DELETE FROM quarantine WHERE time < ?", (older_than,))
                listed = {str(name) for (name,) in db.execute("SELECT file FROM quarantine")}
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot purge quarantine {self.directory}: {exc}") from exc
        for (name,) in rows:
            _unlink_quietly(os.path.join(self.directory, str(name)))
        self._sweep(listed, older_than)
        return len(rows)

    def _sweep(self, listed: set[str], older_than: float) -> None:
        """Delete message files the index does not list (left by a crash mid-purge, or mid-store)."""
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".gz") and entry.name not in listed:
                    with contextlib.suppress(OSError):
                        if entry.stat().st_mtime < older_than:
                            os.unlink(entry.path)

    def release_lock(self, mail_id: str) -> ReleaseLock:
        return FileReleaseLock(os.path.join(self.directory, ".release.lock"))

    def get(self, mail_id: str) -> QuarantineEntry | None:
        """The entry of one message, or None if it is not quarantined."""
        check_mail_id(mail_id)
        rows = self._query(f"SELECT {_COLUMNS} FROM quarantine WHERE mail_id = ?", (mail_id,))  # noqa: S608
        return self._entry(rows[0]) if rows else None

    def read(self, mail_id: str) -> tuple[str, tuple[str, ...], bytes]:
        """(sender, recipients, the message as it came); KeyError if it is not quarantined.

        The file's envelope block must match the index, or the file is reported as damaged (SpoolError).
        """
        entry = self.get(mail_id)
        if entry is None:
            raise KeyError(mail_id)
        block = envelope_block(entry.mail_id, entry.category, entry.sender, entry.recipients)
        try:
            with gzip.open(entry.file, "rb") as packed:
                data = packed.read()
        except (OSError, EOFError) as exc:
            raise SpoolError(f"cannot read quarantine file {entry.file}: {exc}") from exc
        if not data.startswith(block) or len(data) - len(block) != entry.size:
            raise SpoolError(f"quarantine file {entry.file} does not match its index entry")
        return entry.sender, entry.recipients, data[len(block) :]

    def secret_id(self, mail_id: str) -> str:
        """ "": the local quarantine keeps no secret (no front end reads it); an AM.PDP release is checked
        against the mail_id alone (mail_ids.secret_matches)."""
        check_mail_id(mail_id)
        return ""

    def _query(self, sql: str, params: tuple[object, ...]) -> _Rows:
        try:
            with self._lock:
                rows: _Rows = self._connection().execute(sql, params).fetchall()
                return rows
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read quarantine index: {exc}") from exc

    def _entry(self, row: tuple[Any, ...]) -> QuarantineEntry:
        mail_id, time, sender, recipients, category, reasons, size, name, released = row
        return QuarantineEntry(
            mail_id=str(mail_id),
            time=float(time),
            sender=str(json.loads(sender)),
            recipients=_decode_addresses(str(recipients)),
            category=str(category),
            reasons=str(reasons),
            size=int(size),
            file=os.path.join(self.directory, str(name)),
            released=_decode_addresses(str(released)),
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None


def _add_fingerprints(db: sqlite3.Connection) -> None:
    """An index made before fingerprints were kept gets the column (empty for its old entries)."""
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(quarantine)")}
    if "fingerprint" not in columns:
        db.execute("ALTER TABLE quarantine ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX IF NOT EXISTS quarantine_fingerprint ON quarantine (fingerprint)")


def _add_released(db: sqlite3.Connection, mail_id: str, recipients: Sequence[str]) -> bool:
    row = db.execute("SELECT released FROM quarantine WHERE mail_id = ?", (mail_id,)).fetchone()
    if row is None:
        return False
    released = list(_decode_addresses(row[0]))
    released.extend(r for r in dict.fromkeys(recipients) if r not in released)
    db.execute("UPDATE quarantine SET released = ? WHERE mail_id = ?", (_encode_addresses(released), mail_id))
    return True


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
