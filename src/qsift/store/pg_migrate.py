"""Bring the shared store's schema to the version this qsift knows, one migration per transaction.

Each migration and the row that records it commit together, so a failure leaves the database at the
version before it, never half way. An advisory lock taken in every transaction lets several nodes run
`qsift store init` at once: the second waits, then finds the work done. Run twice, it changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from qsift.errors import QsiftError, StoreUnreachable
from qsift.store.pg_schema import MIGRATIONS, Migration

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

# Any constant both nodes agree on; "qsif" in ASCII.
_LOCK = 0x71736966


class SchemaTooNew(QsiftError):
    """The database was migrated by a newer qsift: this one must not write to it."""


class StoreNotWritable(QsiftError):
    """The database cannot take this qsift's records (an older or newer schema, or read-only): the daemon
    does not start on it."""


class MigrationFailed(QsiftError):
    """PostgreSQL refused a migration (a missing privilege, a clashing table); it was rolled back."""


@dataclass(frozen=True)
class Migrated:
    before: int
    after: int
    applied: tuple[Migration, ...]

    def __str__(self) -> str:
        if not self.applied:
            return f"schema up to date (version {self.after})"
        steps = "; ".join(f"{step.version}: {step.summary}" for step in self.applied)
        start = "an empty database" if self.before == 0 else f"version {self.before}"
        return f"schema upgraded from {start} to version {self.after} ({steps})"


def migrate(db: psycopg.Connection[TupleRow], migrations: Sequence[Migration] = MIGRATIONS) -> Migrated:
    """Apply the migrations the database lacks, in order; `db` must be in autocommit mode."""
    before: int | None = None
    applied: list[Migration] = []
    try:
        while True:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                current = schema_version(db)
                before = current if before is None else before
                step = _next(migrations, current)
                if step is None:
                    return Migrated(before, current, tuple(applied))
                _apply(db, step, current)
            applied.append(step)
    except psycopg.OperationalError as exc:
        # The connection, not a migration: the store went away, as when connecting.
        reason = str(exc).strip().splitlines()[0]
        raise StoreUnreachable(f"lost the connection to PostgreSQL while migrating: {reason}") from exc


def _apply(db: psycopg.Connection[TupleRow], step: Migration, current: int) -> None:
    try:
        for statement in step.statements:
            db.execute(statement)
        db.execute(
            "INSERT INTO qsift_schema_version (version, summary) VALUES (%s, %s)",
            (step.version, step.summary),
        )
    except psycopg.OperationalError:
        raise  # the connection, not this migration (migrate() says so)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        raise MigrationFailed(
            f"migration to version {step.version} failed, the database stays at version {current}: {reason}"
        ) from exc


def schema_version(db: psycopg.Connection[TupleRow]) -> int:
    """The version the database is at; 0 when qsift never ran init on it."""
    row = db.execute("SELECT to_regclass('qsift_schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = db.execute("SELECT coalesce(max(version), 0) FROM qsift_schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def _next(migrations: Sequence[Migration], current: int) -> Migration | None:
    latest = migrations[-1].version
    if current > latest:
        raise SchemaTooNew(
            f"the database's schema is at version {current}, newer than this qsift's {latest}: upgrade qsift"
        )
    return next((step for step in migrations if step.version > current), None)


def require_latest(db: psycopg.Connection[TupleRow]) -> None:
    """StoreNotWritable unless the database takes writes and is at this qsift's schema, with what to do."""
    row = db.execute("SHOW transaction_read_only").fetchone()
    if row is not None and row[0] == "on":
        raise StoreNotWritable("the database is read-only (a standby?): point [store] url at the primary")
    require_version(schema_version(db))


def require_version(version: int) -> None:
    latest = MIGRATIONS[-1].version
    if version > latest:
        raise StoreNotWritable(
            f"the database's schema is at version {version}, newer than this qsift's {latest}: upgrade qsift"
        )
    if version < latest:
        raise StoreNotWritable(
            f"the database's schema is at version {version}, not {latest}: run `qsift store init`"
        )
