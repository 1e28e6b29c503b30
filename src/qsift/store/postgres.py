"""Connections to the shared PostgreSQL store, through psycopg 3.

Why psycopg 3 and not asyncpg (reference: amavisd-sql.md §6):
- it is typed (py.typed in psycopg and psycopg_pool), so mypy --strict needs no third-party stubs;
- one API serves the blocking commands (`qsift store init`, later `quarantine list` and `release`) and
  the asyncio workers (`AsyncConnection`, `AsyncConnectionPool`), so they can share their statements;
- the pool's `check` hands out a working connection right after a PostgreSQL restart;
- connection strings, several hosts with `target_session_attrs`, `.pgpass` and the PG* variables behave as
  libpq and psql do, which is what postmasters know.
asyncpg is faster, but qsift issues a handful of statements per message. psycopg's one trap: it accepts a
`str` for a bytea column and parses it with bytea escapes, so addresses, mail_id and secret_id are bound
as bytes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from qsift.errors import StoreUnreachable
from qsift.store.settings import StoreSettings

if TYPE_CHECKING:
    from psycopg.rows import TupleRow


def connect(settings: StoreSettings) -> psycopg.Connection[TupleRow]:
    """A blocking connection in autocommit mode, for the commands; StoreUnreachable if none is made."""
    try:
        return psycopg.connect(
            settings.url, autocommit=True, connect_timeout=_whole_seconds(settings.connect_timeout)
        )
    except psycopg.OperationalError as exc:
        raise _unreachable(exc, settings.url) from None


def worker_pool(
    settings: StoreSettings, *, check: bool = True
) -> AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]:
    """A worker's pool, not yet open: open it (`await pool.open()`) in the worker, after the fork, since
    a connection must never be shared across a fork. With `check` each connection is tried (an empty
    query, one round trip) before it is handed out; without, the caller retries on a broken one."""
    return AsyncConnectionPool(
        settings.url,
        min_size=1,
        max_size=settings.max_connections,
        open=False,
        check=AsyncConnectionPool.check_connection if check else None,
        kwargs={"autocommit": True, "connect_timeout": _whole_seconds(settings.connect_timeout)}
        | _writable(settings.url),
        # A message waits no longer for a free connection than for a new one.
        timeout=settings.connect_timeout,
    )


def blocking_pool(settings: StoreSettings) -> ConnectionPool[psycopg.Connection[TupleRow]]:
    """A pool of blocking connections for calls made in threads (the shared quarantine), not yet open:
    open it on first use, after the fork. Each connection is tried before it is handed out, so a call
    after a PostgreSQL restart gets a working one."""
    return ConnectionPool(
        settings.url,
        min_size=1,
        max_size=settings.max_connections,
        open=False,
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, "connect_timeout": _whole_seconds(settings.connect_timeout)}
        | _writable(settings.url),
        timeout=settings.connect_timeout,
    )


def _writable(url: str) -> dict[str, str]:
    """libpq's own test that a server takes writes, unless the URL says otherwise: a worker that lands on
    a standby (after a failover, or among several hosts) then fails to connect, and the message is
    answered Z, instead of forwarding mail whose record the standby would refuse."""
    if "target_session_attrs" in conninfo_to_dict(url):
        return {}
    return {"target_session_attrs": "read-write"}


def _whole_seconds(seconds: float) -> int:
    # libpq's connect_timeout is whole seconds, and values below 2 are taken as 2.
    return max(2, math.ceil(seconds))


def _unreachable(exc: psycopg.OperationalError, url: str) -> StoreUnreachable:
    """One line: which database, and libpq's own reason without its hints ("Is the server running ...")."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = lines[0].strip()
    for said_by_psycopg in ("connection failed: ", "connection is bad: "):
        reason = reason.removeprefix(said_by_psycopg)
    database = conninfo_to_dict(url).get("dbname")
    return StoreUnreachable(f"cannot use PostgreSQL ([store] url, database {database}): {reason}")
