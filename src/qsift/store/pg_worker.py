"""A worker's connections to the shared PostgreSQL store, shared by the outcome record and the message log.

One pool per worker process, opened on first use (after the fork), the schema checked once. The pool
does not test a connection before handing it out (an empty query, a round trip per statement): a
connection the server dropped fails its statement instead, and the statement goes again on the next one.
Every driver or pool failure comes out as StoreUnreachable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import psycopg
import psycopg_pool

from qsift.errors import StoreUnreachable
from qsift.store.pg_migrate import require_version
from qsift.store.postgres import worker_pool
from qsift.store.settings import StoreSettings

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

_T = TypeVar("_T")


class WorkerDatabase:
    """This worker's pool of connections to the shared store; each unit of work one call of `run`."""

    def __init__(self, settings: StoreSettings) -> None:
        self._pool = worker_pool(settings, check=False)
        #: Connections that may have gone stale at once: the pool's, and one it opens meanwhile.
        self._stale_at_most = settings.max_connections + 1
        self._pool_started = False
        self._closed = False
        #: The pool was opened and the schema found current.
        self._opened = False

    async def run(self, work: Callable[[Connection], Awaitable[_T]], what: str) -> _T:
        """`work` on a connection from the pool, opened on first use; StoreUnreachable on any failure,
        `what` naming what PostgreSQL refused.

        After a PostgreSQL restart each pooled connection fails once; the pool discards it and `work`
        goes again on the next, so every unit of work must be idempotent (a lookup, an insert that does
        nothing or the same again for a row already there, a transaction that was rolled back).
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
            raise StoreUnreachable(f"PostgreSQL: {first_line(exc)}") from exc
        except psycopg.Error as exc:
            # A refused statement (a missing privilege, a read-only standby).
            raise StoreUnreachable(f"PostgreSQL refused {what}: {first_line(exc)}") from exc

    async def purge_alone(self, lock: int, statement: str, older_than: float, what: str) -> int:
        """Run a purge `statement` (one parameter, the cut-off; it returns a count or affects rows) while
        holding the advisory lock `lock` for its transaction; 0 without running it when another node
        holds the lock: the nodes purge one at a time on the same schedule, and the others skip a round."""

        async def delete(db: Connection) -> int:
            async with db.transaction():
                cursor = await db.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock,))
                row = await cursor.fetchone()
                if row is None or not row[0]:
                    return 0
                cursor = await db.execute(statement, (older_than,))
                if cursor.description is None:
                    return cursor.rowcount
                row = await cursor.fetchone()
                return int(row[0]) if row is not None else 0

        return await self.run(delete, what)

    async def close(self) -> None:
        """Close the pool; the outcome record and the message log both call it, the first one counts."""
        if self._pool_started and not self._closed:
            self._closed = True
            await self._pool.close()

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


def first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
