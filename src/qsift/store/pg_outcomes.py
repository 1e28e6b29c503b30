"""The outcome record in PostgreSQL (`qsift_outcomes`), shared by every node of a site.

The same record as store/outcomes.py keeps in SQLite, so a retry that lands on another node is answered
from it (docs/cluster.md). One statement per call, so one round trip: the lookup of all a message's
keys, or the insert of all the recipients one downstream transaction delivered. Autocommit with
PostgreSQL's default synchronous_commit, so a record is on the primary's disk when `record()` returns,
before the client hears K.

Every failure (the server down or restarting, no free connection within connect_timeout, a lost
connection) is StoreUnreachable. The pool drops a broken connection and makes a new one, and a statement
that met a connection the server dropped goes again on the next, so mail passes again as soon as the
server answers, without a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg_pool

from qsift.errors import StoreUnreachable
from qsift.store.outcomes import OutcomeRecord
from qsift.store.pg_migrate import require_version
from qsift.store.postgres import worker_pool
from qsift.store.settings import StoreSettings

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

_T = TypeVar("_T")

# Any constant every node agrees on, apart from pg_migrate's; "qsop" in ASCII.
_PURGE_LOCK = 0x71736F70


class SharedOutcomes:
    """A durable map from delivery key to the answer it got, in PostgreSQL; each call one statement."""

    def __init__(self, settings: StoreSettings) -> None:
        # No check on each checkout (an empty query, a round trip per statement): a connection the server
        # dropped fails its statement instead, and the statement goes again on the next one (_run).
        self._pool = worker_pool(settings, check=False)
        #: Connections that may have gone stale at once: the pool's, and one it opens meanwhile.
        self._stale_at_most = settings.max_connections + 1
        self._pool_started = False
        #: The pool was opened and the schema found current.
        self._opened = False

    async def lookup(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
        """The records among `keys` made at or after `not_before`."""

        async def select(db: Connection) -> list[tuple[Any, ...]]:
            cursor = await db.execute(
                "SELECT key, mail_id, answer, created FROM qsift_outcomes "
                "WHERE key = ANY(%s) AND created >= %s",
                (list(keys), not_before),
            )
            return await cursor.fetchall()

        rows = await self._run(select)
        return {
            str(key): OutcomeRecord(str(mail_id), str(answer), float(at)) for key, mail_id, answer, at in rows
        }

    async def record(self, keys: Sequence[str], mail_id: str, answer: str, now: float) -> None:
        """Store delivered recipients in one statement; StoreUnreachable if it cannot be committed."""

        async def insert(db: Connection) -> None:
            # A key already there was delivered before: its first record stands (its window, its mail_id).
            await db.execute(
                "INSERT INTO qsift_outcomes (key, mail_id, answer, created) "
                "SELECT unnest(%s::text[]), %s, %s, %s ON CONFLICT (key) DO NOTHING",
                (list(keys), mail_id, answer, now),
            )

        await self._run(insert)

    async def purge(self, older_than: float) -> int:
        """Forget records past the window; returns how many went (0 while another node purges)."""

        async def delete(db: Connection) -> int:
            async with db.transaction():
                cursor = await db.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PURGE_LOCK,))
                row = await cursor.fetchone()
                if row is None or not row[0]:
                    return 0
                cursor = await db.execute("DELETE FROM qsift_outcomes WHERE created < %s", (older_than,))
                return cursor.rowcount

        return await self._run(delete)

    async def close(self) -> None:
        if self._pool_started:
            await self._pool.close()

    async def _run(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        """`work` on a connection from this worker's pool, opened on first use (after the fork); every
        driver or pool failure comes out as StoreUnreachable.

        After a PostgreSQL restart each pooled connection fails once; the pool discards it and `work`
        goes again on the next, which is safe because each unit is idempotent (a lookup, an insert that
        does nothing for a key already there, a purge whose transaction was rolled back).
        """
        try:
            if not self._opened:
                await self._open()
            for _ in range(self._stale_at_most):
                async with self._pool.connection() as db:
                    try:
                        return await work(db)
                    except psycopg.OperationalError:
                        if not db.broken:
                            raise
            async with self._pool.connection() as db:
                return await work(db)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnreachable(f"PostgreSQL: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            # A refused statement (a missing privilege, a read-only standby): the record cannot be kept.
            raise StoreUnreachable(f"PostgreSQL refused the outcome record: {_first_line(exc)}") from exc

    async def _open(self) -> None:
        """Open the pool and check the schema, once; a failure leaves both to be tried again."""
        if not self._pool_started:
            self._pool_started = True
            await self._pool.open()  # connects in the background; connection() waits connect_timeout
        async with self._pool.connection() as db:
            cursor = await db.execute("SELECT to_regclass('qsift_schema_version') IS NOT NULL")
            row = await cursor.fetchone()
            version = 0
            if row is not None and row[0]:
                cursor = await db.execute("SELECT coalesce(max(version), 0) FROM qsift_schema_version")
                row = await cursor.fetchone()
                version = int(row[0]) if row is not None else 0
        require_version(version)
        self._opened = True


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
