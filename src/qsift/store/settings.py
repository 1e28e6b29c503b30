"""`[store]`: where the durable state lives, SQLite files under state_dir or one shared PostgreSQL.

Several filter nodes behind qsift-queue (or behind several Postfix content_filter hosts) must share the
outcome record, the quarantine and the message log, or a retry that lands on another node is delivered
twice (docs/cluster.md). The URL is checked here, when the configuration is loaded; whether the server
answers is `qsift store init`'s business.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from qsift.declare import COUNT, INTEGER, setting

SCHEMES = ("postgresql", "postgres")


def database_url(url: str) -> str:
    """A libpq connection URI for one database, or "" for none; ValueError says what is wrong with it."""
    if not url:
        return url
    if urlsplit(url).scheme not in SCHEMES:
        raise ValueError(
            f"{url!r} is not postgresql://USER@HOST:PORT/DB (or postgresql:///DB?host=/socket/dir)"
        )
    # Imported here: a configuration without a shared store never loads the driver.
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        # libpq's own parser, so whatever psql accepts (several hosts, ?host=/dir, %2F...) passes.
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"{url!r}: {str(exc).strip()}") from None
    if "password" in parts:
        # `qsift config check` prints the configuration and logs quote it: the secret belongs elsewhere.
        raise ValueError(
            "no password in the URL: put it in ~/.pgpass (or PGPASSFILE) of the user qsift runs as"
        )
    if not parts.get("dbname"):
        raise ValueError(f"{url!r} names no database: end it with /DB")
    for port in str(parts.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"{url!r}: port {port!r} is not a number from 1 to 65535")
    return url


@dataclass(frozen=True)
class StoreSettings:
    """`[store]`: the shared state of several filter nodes (the outcome record, the quarantine, the
    message log)."""

    url: str = setting(
        "",
        'The shared PostgreSQL database, "postgresql://USER@HOST:PORT/DB" (a unix socket: '
        '"postgresql:///DB?host=/run/postgresql"); the password goes in ~/.pgpass. Empty: SQLite files '
        "under state_dir, nothing shared (one node needs nothing else). `qsift store init` creates its "
        "tables, amavisd-new's among them. The outcome record and the quarantine (in amavisd-new's msgs, "
        "msgrcpt, maddr and quarantine tables) are then shared by every node, and every message is "
        "logged in msgs and msgrcpt (docs/cluster.md).",
        parse=database_url,
    )
    max_connections: int = setting(
        4, "Connections to PostgreSQL each worker process keeps at most (its pool's size).", kind=COUNT
    )
    connect_timeout: float = setting(
        10.0, "How long a new connection to PostgreSQL may take before the attempt fails, in seconds."
    )
    log_days: int = setting(
        21,
        "Every message's msgs and msgrcpt rows (amavisd-new's message log, which pen pals and the front "
        "ends' mail views read) are deleted when older than this many days, hourly, by one node; rows of "
        "messages still quarantined stay until the quarantine lets them go. 0 keeps them for ever (then "
        "purge them from cron, README.sql-pg). 21 is README.sql-pg's three weeks.",
        kind=INTEGER,
    )
    sql_lookups: bool = setting(
        False,
        "Read per-recipient settings (amavisd-new's users and policy tables) and sender allow/block lists "
        "(mailaddr and wblist) from the database at `url`, before the TOML's (docs/cluster.md). A lookup "
        "that fails answers try later (Z / 451).",
    )
    sql_lookup_ttl: float = setting(
        60.0,
        "How long each worker keeps what a lookup found (per recipient, and per recipient and sender), in "
        "seconds: a change in the tables reaches every node within this time.",
    )

    @staticmethod
    def config_rules(values: Mapping[str, Any], written: Collection[str]) -> Iterator[tuple[tuple[str], str]]:
        """SQL lookups need the database they read."""
        if values.get("sql_lookups") and not values.get("url"):
            yield ("sql_lookups",), "needs [store] url: the lookup tables are in that database"
