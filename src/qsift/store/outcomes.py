"""The outcome record: what was delivered, so an identical retry is answered without a second forward.

qmail-qmqpc gives up after 60 s of silence and the remote client retries later; if qsift finished the
forward meanwhile, the retry would be delivered twice (reference: qmail-protocols.md §4.4). Every
recipient a message was delivered to is recorded here (surviving a killed process) before the answer is
sent. A request with the same body digest and sender within the window is forwarded only to the
recipients not yet recorded; if none is left, it is answered from the record. Keying by recipient also
covers the partial case: when the downstream took some recipients and tempfailed others, the answer must
be Z, and the retry then goes only to the ones still owed.

SQLite in WAL mode, so several worker processes can share one file. synchronous=NORMAL: a record is
in the write-ahead log the moment `record()` returns and survives the process being killed; only a
power cut or a kernel crash can lose the last records before the next checkpoint's fsync. A lost record
costs a duplicate on the retry, never a lost message, while each commit's fsync was most of the window
in which a killed worker makes a duplicate (docs/reliability.md). The quarantine, which disposes of
mail, keeps synchronous=FULL. A write waits for other workers' write lock and the disk, so the daemon uses
the store through `LocalOutcomes`, which runs each write in a thread (`asyncio.to_thread`). A lookup reads
on a connection of its own: a reader in WAL mode waits for no writer, and one indexed read of a few keys
costs less than the hop to a thread (about 50 µs of CPU each), so `LocalOutcomes` looks up on the event
loop, and only a lookup of more keys than one statement takes goes to a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qsift.errors import SpoolError
from qsift.model import address_bytes
from qsift.store.sqlite import immediate, open_shared

# SQLite allows 32766 host parameters; stay well below.
_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    key      TEXT PRIMARY KEY,
    mail_id  TEXT NOT NULL,
    answer   TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_created ON outcomes (created);
"""


@dataclass(frozen=True)
class OutcomeRecord:
    mail_id: str
    answer: str
    created: float


_FIRST_FIELD_LIMIT = 64 * 1024
_FIELD_END = re.compile(rb"\n(?![ \t])")


def body_fingerprint(chunks: Iterable[bytes]) -> str:
    """SHA-256 of the message without its topmost Received field.

    qmail-smtpd prepends a Received line with the time of each attempt, so a remote client's retry of
    the same message reaches us with a different first line; everything below it is the same.
    """
    digest = hashlib.sha256()
    head = b""
    iterator = iter(chunks)
    for chunk in iterator:
        head += chunk
        if len(head) >= _FIRST_FIELD_LIMIT:
            break
    digest.update(_without_first_received(head))
    for chunk in iterator:
        digest.update(chunk)
    return digest.hexdigest()


def _without_first_received(head: bytes) -> bytes:
    if head[:9].lower() != b"received:":
        return head
    end = _FIELD_END.search(head)
    if end is None or end.end() >= len(head):
        return head
    return head[end.end() :]


def delivery_key(body_digest: str, sender: str, recipient: str) -> str:
    """Identify one delivery by the body, the envelope sender and the recipient."""
    digest = hashlib.sha256(body_digest.encode("ascii"))
    digest.update(b"\0" + address_bytes(sender) + b"\0" + address_bytes(recipient))
    return digest.hexdigest()


class OutcomeStore:
    """A durable map from request key to the answer it got."""

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._db = open_shared(path, "NORMAL")
        try:
            self._db.executescript(_SCHEMA)
            self._reads = open_shared(path, "NORMAL")
        except BaseException:
            self._db.close()
            raise

    def lookup(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
        """The records among `keys` made at or after `not_before`; from any thread."""
        with self._lock:
            return _select(self._db, keys, not_before)

    def lookup_on_loop(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
        """`lookup` on the connection kept for the event loop: call it from the loop's thread only. A
        reader in WAL mode waits for no writer, and this one takes no turn behind the other connection's
        record, which may wait for another worker's write lock."""
        return _select(self._reads, keys, not_before)

    def record(self, keys: Sequence[str], mail_id: str, answer: str, now: float) -> None:
        """Store delivered recipients in one transaction; SpoolError if it cannot be committed."""
        try:
            with self._lock, immediate(self._db):
                self._db.executemany(
                    "INSERT OR REPLACE INTO outcomes (key, mail_id, answer, created) VALUES (?, ?, ?, ?)",
                    [(key, mail_id, answer, now) for key in keys],
                )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write outcome record: {exc}") from exc

    def purge(self, older_than: float) -> int:
        """Forget records past the window; returns how many went."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM outcomes WHERE created < ?", (older_than,))
        return cursor.rowcount

    def close(self) -> None:
        self._reads.close()
        with self._lock:
            self._db.close()


def _select(db: sqlite3.Connection, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
    found: dict[str, OutcomeRecord] = {}
    for start in range(0, len(keys), _BATCH):
        batch = keys[start : start + _BATCH]
        marks = ",".join("?" * len(batch))
        rows = db.execute(
            f"SELECT key, mail_id, answer, created FROM outcomes "  # noqa: S608 - only '?' marks
            f"WHERE key IN ({marks}) AND created >= ?",
            (*batch, not_before),
        ).fetchall()
        for key, mail_id, answer, created in rows:
            found[str(key)] = OutcomeRecord(str(mail_id), str(answer), float(created))
    return found


class LocalOutcomes:
    """The pipeline's outcome record on one node: an OutcomeStore, each write in a thread, a lookup of up
    to one statement's keys on the event loop."""

    def __init__(self, store: OutcomeStore) -> None:
        self.store = store

    async def lookup(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
        if len(keys) <= _BATCH:
            return self.store.lookup_on_loop(keys, not_before)  # the module says why
        return await asyncio.to_thread(self.store.lookup, keys, not_before)

    async def record(self, keys: Sequence[str], mail_id: str, answer: str, now: float) -> None:
        await asyncio.to_thread(self.store.record, keys, mail_id, answer, now)

    async def purge(self, older_than: float) -> int:
        return await asyncio.to_thread(self.store.purge, older_than)

    async def close(self) -> None:
        self.store.close()
