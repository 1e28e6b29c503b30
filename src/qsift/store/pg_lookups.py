"""Per-recipient settings and sender lists from amavisd-new's lookup tables, for one message at a time.

amavisd-new's own statements (reference: amavisd-sql.md §2.2), widened from one recipient to all of a
message's: `sel_policy` takes every key of every recipient in one `= ANY(...)`, and `sel_wblist` every
user those keys match, with the sender's keys; the two go out together in one pipeline, so a message costs
one round trip however many recipients it has. Keys are bound as bytea parameters (users.email and
mailaddr.email are bytea), never spliced and never matched with LIKE, so no address can change a statement.
What the rows mean is store/amavisd_lookups.py's business.

Each worker keeps what it found for `sql_lookup_ttl` seconds (amavisd-new keeps it for one message): per
recipient for its settings, per recipient and sender for its lists, at most _MAX_ENTRIES of each. A
lookup the cache cannot answer and the database does not either is StoreUnreachable, and the message is
answered Z, as amavisd-new tempfails when a lookup dies (§2.7). The statements run on the worker's
pool (store/pg_worker.py), shared with the outcome record and the message log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from qsift.store.amavisd_lookups import (
    FoundSettings,
    PolicyRow,
    SenderListing,
    found_settings,
    sender_listing,
    sql_keys,
)
from qsift.store.pg_worker import WorkerDatabase
from qsift.store.settings import StoreSettings

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")

#: Entries each cache of a worker keeps at most: a few thousand recipients are a few MB.
_MAX_ENTRIES = 10_000

# amavisd-new's sel_policy; `users.id` last, so it wins over policy.id in the row read by name.
_SELECT_POLICY = (
    "SELECT users.*, policy.*, users.id FROM users LEFT JOIN policy ON users.policy_id = policy.id "
    "WHERE users.email = ANY(%s::bytea[]) ORDER BY users.priority DESC"
)
# amavisd-new's sel_wblist, for every user the recipients' keys match; the sender's most specific key
# breaks a tie in priority, where amavisd-new leaves the order to the database.
_SELECT_WBLIST = (
    "SELECT wblist.rid, wblist.wb FROM wblist JOIN mailaddr ON wblist.sid = mailaddr.id "
    "WHERE wblist.rid IN (SELECT id FROM users WHERE email = ANY(%s::bytea[])) "
    "AND mailaddr.email = ANY(%s::bytea[]) "
    "ORDER BY mailaddr.priority DESC, array_position(%s::bytea[], mailaddr.email)"
)


class TtlCache(Generic[_K, _V]):
    """Values kept `ttl` seconds, at most `size` of them: the oldest goes first."""

    def __init__(self, ttl: float, size: int = _MAX_ENTRIES) -> None:
        self.ttl, self.size = ttl, size
        self._entries: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def get(self, key: _K, now: float) -> _V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: _K, value: _V, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (now + self.ttl, value)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class SqlLookups:
    """What amavisd-new's lookup tables set for a message's recipients; one round trip per message the
    caches cannot answer."""

    def __init__(
        self,
        database: WorkerDatabase,
        settings: StoreSettings,
        clock: Callable[[], float] = time.monotonic,
        size: int = _MAX_ENTRIES,
    ) -> None:
        #: The worker's pool, shared with the outcome record and the message log.
        self._database = database
        self._clock = clock
        self._settings: TtlCache[tuple[str, str], FoundSettings] = TtlCache(settings.sql_lookup_ttl, size)
        self._listings: TtlCache[tuple[str, str, str], SenderListing] = TtlCache(
            settings.sql_lookup_ttl, size
        )
        #: Round trips made to the database so far (tests and `qsift` health read it).
        self.round_trips = 0

    async def found(
        self, sender: str, recipients: Sequence[str], delimiter: str = ""
    ) -> dict[str, FoundSettings]:
        """Per recipient address, what the tables set for it and its verdict on `sender`."""
        now = self._clock()
        settings = {a: s for a in recipients if (s := self._settings.get((a, delimiter), now)) is not None}
        listings = {
            a: listed
            for a in recipients
            if (listed := self._listings.get((a, sender, delimiter), now)) is not None
        }
        unsettled = [a for a in dict.fromkeys(recipients) if a not in settings]
        unlisted = [a for a in dict.fromkeys(recipients) if a not in listings]
        if unsettled or unlisted:
            rows, wb = await self._database.run(
                lambda db: self._select(db, sender, unsettled, unlisted, delimiter), "the lookup"
            )
            for address in unsettled:
                settings[address] = found_settings(_rows_of(address, rows, delimiter))
                self._settings.put((address, delimiter), settings[address], now)
            for address in unlisted:
                listings[address] = sender_listing(settings[address].user_ids, wb)
                self._listings.put((address, sender, delimiter), listings[address], now)
        return {a: replace(settings[a], listing=listings[a]) for a in recipients}

    async def close(self) -> None:
        await self._database.close()

    async def _select(
        self, db: Connection, sender: str, unsettled: list[str], unlisted: list[str], delimiter: str
    ) -> tuple[list[PolicyRow], dict[int, str]]:
        """sel_policy for the `unsettled` recipients and sel_wblist for the `unlisted`, in one round trip."""
        sender_keys = [_bytes(k) for k in sql_keys(sender)]
        users_keys = [
            [_bytes(k) for a in group for k in sql_keys(a, delimiter)] for group in (unsettled, unlisted)
        ]
        async with db.pipeline():
            policy = await db.execute(_SELECT_POLICY, (users_keys[0],)) if unsettled else None
            wblist = (
                await db.execute(_SELECT_WBLIST, (users_keys[1], sender_keys, sender_keys))
                if unlisted
                else None
            )
        self.round_trips += 1
        rows: list[PolicyRow] = []
        if policy is not None:
            names = [column.name for column in policy.description or ()]
            for values in await policy.fetchall():
                columns = dict(zip(names, values, strict=True))
                email = bytes(columns["email"]).decode("utf-8", "surrogateescape")
                rows.append(PolicyRow(int(columns["id"]), email, columns))
        wb: dict[int, str] = {}
        if wblist is not None:
            for rid, value in await wblist.fetchall():
                wb.setdefault(int(rid), str(value))
        return rows, wb


def _rows_of(address: str, rows: Sequence[PolicyRow], delimiter: str) -> list[PolicyRow]:
    """The rows matching `address`'s keys, highest priority first, then the most specific key."""
    keys = {key: rank for rank, key in enumerate(sql_keys(address, delimiter))}
    mine = [row for row in rows if row.key in keys]
    return sorted(mine, key=lambda row: (-_priority(row.columns), keys[row.key]))


def _priority(columns: Mapping[str, Any]) -> int:
    value = columns.get("priority")
    return int(value) if value is not None else 0


def _bytes(key: str) -> bytes:
    # users.email and mailaddr.email are bytea: psycopg would parse a str with bytea escapes.
    return key.encode("utf-8", "surrogateescape")
