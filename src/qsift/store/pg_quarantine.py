"""The quarantine in PostgreSQL, in amavisd-new's tables: every node lists, shows and releases every message.

A kept message is written as amavisd-new's `sql:` quarantine writes it (reference: amavisd-sql.md §1.3-1.5,
§2.2-2.3), so the web front ends made for amavisd-new list and show it: one `msgs` row (quar_type 'Q',
quar_loc the mail_id, content the category's letter), a `msgrcpt` row per kept recipient, a `maddr` row
per address, and the text as `quarantine` rows of 16384-byte bytea chunks numbered from 1. The text starts
with amavisd-new's X-Envelope-From, X-Envelope-To, X-Envelope-To-Blocked and X-Quarantine-ID fields; a
release takes them off again, and what goes out is the message byte for byte as it came. What amavisd-new
has no column for (the category's name, the reasons, the exact envelope, the fingerprint, the releases)
sits in `qsift_quarantine` and `qsift_release` (store/pg_schema.py).

The addresses are found or added first, in autocommit as amavisd-new does (a SELECT, and an INSERT ... ON
CONFLICT DO NOTHING only for the new ones); then the message's rows are written in one transaction, sent in
one pipeline: a message counts as kept only once that commits, before its answer (DESIGN.md: nothing is
lost). Every failure is StoreUnreachable, a SpoolError, which the pipeline answers with "try later".
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg_pool

from qsift.errors import SpoolError, StoreUnreachable
from qsift.model import address_bytes
from qsift.store.amavisd_forms import (
    CONTENT_CODES,
    VARCHAR,
    address_ids,
    column_text,
    envelope_fields,
    header_fields,
    maddr_email,
    split_chunks,
)
from qsift.store.pg_migrate import StoreNotWritable, require_version
from qsift.store.postgres import blocking_pool, connect
from qsift.store.quarantine import (
    RELEASE_WAIT,
    KeptFacts,
    QuarantineEntry,
    ReleaseLock,
    check_kept,
    check_mail_id,
)
from qsift.store.settings import StoreSettings

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    Connection = psycopg.Connection[TupleRow]

_T = TypeVar("_T")
#: The purge's advisory lock, apart from the other purges' and pg_migrate's; "qsqp" in ASCII.
_PURGE_LOCK = 0x71737170


_ENTRY = (
    "SELECT q.mail_id, q.created, q.sender, q.recipients, q.category, q.reasons, m.size, "
    "ARRAY(SELECT r.recipient FROM qsift_release r WHERE r.mail_id = q.mail_id "
    "ORDER BY r.released, r.recipient) "
    "FROM qsift_quarantine q JOIN msgs m ON m.partition_tag = 0 AND m.mail_id = q.mail_id "
)


class SharedQuarantine:
    """The quarantine in a shared PostgreSQL database; the same calls as the local Quarantine."""

    def __init__(self, settings: StoreSettings, host: str) -> None:
        """Connect on first use (after the daemon's fork). `host` goes into msgs.host: the name under which
        the front ends reach this node."""
        self._settings = settings
        self._pool = blocking_pool(settings)
        self._host = host[:VARCHAR]
        self._pool_started = False
        self._opened = False

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
        """Keep a message in one transaction; StoreUnreachable if it cannot be kept. Storing the same
        mail_id again replaces the earlier copy (an idempotent retry)."""
        recipients = tuple(recipients)
        check_kept(mail_id, category, sender, recipients)
        facts = facts or KeptFacts()
        message = b"".join(chunks)
        text = envelope_fields(mail_id, sender, recipients) + message
        key = mail_id.encode("ascii")
        code = CONTENT_CODES.get(category, "?")
        from_addr, subject, message_id = header_fields(message)
        reasons = column_text(reasons, len(reasons))

        def write(db: Connection) -> None:
            ids = address_ids(db, [sender, *recipients])
            with db.transaction(), db.pipeline():
                db.execute("DELETE FROM quarantine WHERE partition_tag = 0 AND mail_id = %s", (key,))
                db.execute("DELETE FROM msgrcpt WHERE partition_tag = 0 AND mail_id = %s", (key,))
                db.execute("DELETE FROM msgs WHERE partition_tag = 0 AND mail_id = %s", (key,))
                db.execute("DELETE FROM qsift_quarantine WHERE mail_id = %s", (key,))
                db.execute(
                    "INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, "
                    "policy, client_addr, size, content, quar_type, quar_loc, dsn_sent, spam_level, "
                    "message_id, from_addr, subject, host) "
                    "VALUES (0, %s, %s, %s, %s, %s, %s, '', %s, %s, %s, 'Q', %s, %s, %s, %s, %s, %s, %s)",
                    (
                        key,
                        facts.secret_id.encode("ascii"),
                        mail_id[:20],
                        int(now),
                        # Whole seconds, as amavisd-new's YYYYMMDDTHHMMSSZ: the same instant as time_num.
                        datetime.datetime.fromtimestamp(int(now), datetime.UTC),
                        ids[maddr_email(sender)],
                        facts.client_address[:VARCHAR],
                        len(message),
                        code,
                        mail_id,
                        "Y" if "B" in facts.delivery_status else "N",
                        facts.spam_level,
                        message_id,
                        from_addr,
                        subject,
                        self._host,
                    ),
                )
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, "
                        "rs, bl, wl, bspam_level) VALUES (0, %s, %s, %s, %s, %s, %s, ' ', 'N', 'N', %s)",
                        [
                            (
                                key,
                                _at(facts.numbers, index, index + 1),
                                ids[maddr_email(recipient)],
                                _flag(facts.local, index),
                                code,
                                _at(facts.delivery_status, index, "?"),
                                facts.spam_level,
                            )
                            for index, recipient in enumerate(recipients)
                        ],
                    )
                    # %b: the chunks go as binary, not as twice as long hex text.
                    cursor.executemany(
                        "INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text) "
                        "VALUES (0, %b, %b, %b)",
                        [(key, index, chunk) for index, chunk in enumerate(split_chunks(text), 1)],
                    )
                db.execute(
                    "INSERT INTO qsift_quarantine (mail_id, category, reasons, sender, recipients, created, "
                    "fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        key,
                        category,
                        reasons,
                        address_bytes(sender),
                        [address_bytes(r) for r in recipients],
                        now,
                        fingerprint,
                    ),
                )

        self._run(write, "keep the message")
        return QuarantineEntry(mail_id, now, sender, recipients, category, reasons, len(message), mail_id)

    def mark_released(self, mail_id: str, recipients: Sequence[str]) -> None:
        """Record that the message went to `recipients` (msgrcpt.rs 'R', as the front ends mark it);
        KeyError if it is not quarantined."""
        check_mail_id(mail_id)
        key = mail_id.encode("ascii")
        targets = [address_bytes(r) for r in dict.fromkeys(recipients)]

        def record(db: Connection) -> bool:
            with db.transaction():
                found = db.execute("SELECT recipients FROM qsift_quarantine WHERE mail_id = %s", (key,))
                row = found.fetchone()
                if row is None:
                    return False
                # amavisd-new's own release never touches msgrcpt; its front ends set rs = 'R' (§2.4). The
                # kept recipients' rows are found by address: their rseqnum is their place among all the
                # message's recipients, whose rows the message log adds (store/pg_log.py).
                released = [maddr_email(_address(kept)) for kept in row[0] if bytes(kept) in targets]
                db.execute(
                    "UPDATE msgrcpt SET rs = 'R' WHERE partition_tag = 0 AND mail_id = %s AND rid IN "
                    "(SELECT id FROM maddr WHERE partition_tag = 0 AND email = ANY(%s))",
                    (key, released),
                )
                db.execute(
                    "INSERT INTO qsift_release (mail_id, recipient, released) "
                    "SELECT %s, unnest(%s::bytea[]), extract(epoch FROM now()) ON CONFLICT DO NOTHING",
                    (key, targets),
                )
                return True

        if not self._run(record, f"record the release of {mail_id}"):
            raise KeyError(mail_id)

    def purge(self, older_than: float) -> int:
        """Delete what qsift quarantined before `older_than`, every table's rows at once; how many went
        (0 while another node purges: one node at a time, the others skip the round). Rows amavisd-new
        or another tool wrote are theirs to purge (reference §1.8)."""

        def delete(db: Connection) -> int:
            with db.transaction():
                locked = db.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PURGE_LOCK,)).fetchone()
                if locked is None or not locked[0]:
                    return 0
                return delete_old(db)

        def delete_old(db: Connection) -> int:
            cursor = db.execute(
                "WITH gone AS (DELETE FROM qsift_quarantine WHERE created < %s RETURNING mail_id), "
                "m AS (DELETE FROM msgs WHERE partition_tag = 0 AND mail_id IN (SELECT mail_id FROM gone)), "
                "r AS (DELETE FROM msgrcpt WHERE partition_tag = 0 "
                "AND mail_id IN (SELECT mail_id FROM gone)), "
                "q AS (DELETE FROM quarantine WHERE partition_tag = 0 "
                "AND mail_id IN (SELECT mail_id FROM gone)), "
                "x AS (DELETE FROM qsift_release WHERE mail_id IN (SELECT mail_id FROM gone)) "
                "SELECT count(*) FROM gone",
                (older_than,),
            )
            row = cursor.fetchone()
            return int(row[0]) if row is not None else 0

        return self._run(delete, "purge the quarantine")

    # --- reading ------------------------------------------------------------------------------------

    def list(self, *, limit: int = 100, category: str | None = None) -> list[QuarantineEntry]:
        """The newest `limit` entries, newest first, of one category or all."""
        if limit < 0:
            raise ValueError(f"negative limit {limit}")

        def select(db: Connection) -> list[tuple[Any, ...]]:
            if category is None:
                return db.execute(_ENTRY + "ORDER BY q.created DESC LIMIT %s", (limit,)).fetchall()
            return db.execute(
                _ENTRY + "WHERE q.category = %s ORDER BY q.created DESC LIMIT %s", (category, limit)
            ).fetchall()

        return [_entry(row) for row in self._run(select, "list the quarantine")]

    def kept_before(self, fingerprint: str, sender: str, not_before: float) -> QuarantineEntry | None:
        """The newest copy of the same message from the same sender kept at or after `not_before`."""
        if not fingerprint:
            return None

        def select(db: Connection) -> list[tuple[Any, ...]]:
            return db.execute(
                _ENTRY + "WHERE q.fingerprint = %s AND q.sender = %s AND q.created >= %s "
                "ORDER BY q.created DESC LIMIT 1",
                (fingerprint, address_bytes(sender), not_before),
            ).fetchall()

        rows = self._run(select, "look for an earlier copy")
        return _entry(rows[0]) if rows else None

    def get(self, mail_id: str) -> QuarantineEntry | None:
        """The entry of one message, or None if it is not quarantined."""
        key = check_mail_id(mail_id).encode("ascii")

        def select(db: Connection) -> list[tuple[Any, ...]]:
            return db.execute(_ENTRY + "WHERE q.mail_id = %s", (key,)).fetchall()

        rows = self._run(select, f"read {mail_id}")
        return _entry(rows[0]) if rows else None

    def secret_id(self, mail_id: str) -> str:
        """msgs.secret_id of a message qsift keeps ("" if it has none, or is not kept): what the front ends
        read and send back in an AM.PDP release."""
        key = check_mail_id(mail_id).encode("ascii")

        def select(db: Connection) -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT m.secret_id FROM msgs m JOIN qsift_quarantine q ON q.mail_id = m.mail_id "
                "WHERE m.partition_tag = 0 AND m.mail_id = %s",
                (key,),
            ).fetchall()

        rows = self._run(select, f"read {mail_id}")
        return bytes(rows[0][0] or b"").decode("ascii", "replace") if rows else ""

    def read(self, mail_id: str) -> tuple[str, tuple[str, ...], bytes]:
        """(sender, recipients, the message as it came); KeyError if it is not quarantined. The chunks
        must start with the envelope fields the index gives and add up to its size, or SpoolError."""
        key = check_mail_id(mail_id).encode("ascii")

        def select(db: Connection) -> tuple[list[tuple[Any, ...]], bytes]:
            entry = db.execute(_ENTRY + "WHERE q.mail_id = %s", (key,)).fetchall()
            chunks = db.execute(
                # amavisd-new's sel_quar (§2.2), the chunks in order.
                "SELECT mail_text FROM quarantine "
                "WHERE partition_tag = 0 AND mail_id = %s ORDER BY chunk_ind",
                (key,),
                binary=True,
            )
            return entry, b"".join(bytes(chunk) for (chunk,) in chunks)

        rows, text = self._run(select, f"read {mail_id}")
        if not rows:
            raise KeyError(mail_id)
        entry = _entry(rows[0])
        fields = envelope_fields(mail_id, entry.sender, entry.recipients)
        if not text.startswith(fields) or len(text) - len(fields) != entry.size:
            raise SpoolError(f"quarantined message {mail_id} does not match its msgs row")
        return entry.sender, entry.recipients, text[len(fields) :]

    def release_lock(self, mail_id: str) -> ReleaseLock:
        return _AdvisoryReleaseLock(self._settings, _release_key(mail_id))

    def close(self) -> None:
        if self._pool_started:
            self._pool.close()

    # --- the connection -----------------------------------------------------------------------------

    def _run(self, work: Callable[[Connection], _T], what: str) -> _T:
        """`work` on a pooled connection, opened (and the schema checked) on first use; every driver or
        pool failure comes out as StoreUnreachable. Each unit is idempotent, so one that met a connection
        the server dropped (a restart) goes again on a fresh one."""
        try:
            if not self._opened:
                self._open()
            for attempt in range(2):
                with self._pool.connection() as db:
                    try:
                        return work(db)
                    except psycopg.OperationalError:
                        if attempt or not db.broken:
                            raise
            raise AssertionError("unreachable")  # pragma: no cover
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnreachable(f"cannot {what} in PostgreSQL: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreUnreachable(f"PostgreSQL refused to {what}: {_first_line(exc)}") from exc
        except StoreNotWritable as exc:
            raise StoreUnreachable(f"cannot {what} in PostgreSQL: {exc}") from exc

    def _open(self) -> None:
        if not self._pool_started:
            self._pool_started = True
            self._pool.open(wait=False)
        with self._pool.connection() as db:
            row = db.execute("SELECT to_regclass('qsift_schema_version') IS NOT NULL").fetchone()
            version = 0
            if row is not None and row[0]:
                row = db.execute("SELECT coalesce(max(version), 0) FROM qsift_schema_version").fetchone()
                version = int(row[0]) if row is not None else 0
        require_version(version)
        self._opened = True


def _release_key(mail_id: str) -> int:
    """The advisory lock of a message's release: the same on every node, apart from qsift's other locks
    (a 64-bit hash; two mail_ids sharing one only make their releases wait for each other)."""
    digest = hashlib.sha256(b"qsift release " + mail_id.encode("ascii", "replace")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _AdvisoryReleaseLock:
    """A session advisory lock, held for the release's length on a connection of its own (the release
    needs the pool's connections meanwhile, and a pool of a few would run dry with as many releases at
    once): any node's release of the same message waits, and a node that dies holding it lets it go with
    its session. Releases are rare; a connection each costs a few milliseconds."""

    def __init__(self, settings: StoreSettings, key: int) -> None:
        self._settings = settings
        self._key = key
        self._db: Connection | None = None

    def acquire(self) -> None:
        try:
            db = connect(self._settings)
        except StoreUnreachable as exc:
            raise StoreUnreachable(f"cannot lock the release: {exc}") from exc
        try:
            locked = self._wait_for_lock(db)
        except psycopg.Error as exc:
            db.close()
            raise StoreUnreachable(f"cannot lock the release in PostgreSQL: {_first_line(exc)}") from exc
        if not locked:
            db.close()
            raise StoreUnreachable("another release of this message is still in progress")
        self._db = db

    def _wait_for_lock(self, db: Connection) -> bool:
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            row = db.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            if row is not None and row[0]:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def release(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()  # the session's end lets its locks go


def _flag(values: Sequence[bool], index: int) -> str:
    return " " if index >= len(values) else "Y" if values[index] else "N"


def _at(values: Sequence[_T], index: int, default: _T) -> _T:
    return values[index] if index < len(values) else default


def _entry(row: tuple[Any, ...]) -> QuarantineEntry:
    mail_id, created, sender, recipients, category, reasons, size, released = row
    return QuarantineEntry(
        mail_id=bytes(mail_id).decode("ascii"),
        time=float(created),
        sender=_address(sender),
        recipients=tuple(_address(r) for r in recipients),
        category=str(category),
        reasons=str(reasons),
        size=int(size),
        file=bytes(mail_id).decode("ascii"),
        released=tuple(_address(r) for r in released),
    )


def _address(value: bytes | memoryview) -> str:
    return bytes(value).decode("utf-8", "surrogateescape")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
