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

from qsift.store.outcomes import OutcomeRecord
from qsift.store.pg_worker import WorkerDatabase

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

_T = TypeVar("_T")

# Any constant every node agrees on, apart from pg_migrate's; "qsop" in ASCII.
_PURGE_LOCK = 0x71736F70


class SharedOutcomes:
    """A durable map from delivery key to the answer it got, in PostgreSQL; each call one statement."""

    def __init__(self, database: WorkerDatabase) -> None:
        #: This worker's pool, shared with the message log (store/pg_worker.py).
        self._database = database

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

        return await self._database.purge_alone(
            _PURGE_LOCK, "DELETE FROM qsift_outcomes WHERE created < %s", older_than, "the record's purge"
        )

    async def close(self) -> None:
        await self._database.close()

    async def _run(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        return await self._database.run(work, "the outcome record")
