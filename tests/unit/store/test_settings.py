"""`[store] url` is checked when the configuration is loaded: a URL libpq would refuse is a configuration
error naming the key, and the forms libpq accepts (a unix socket, several hosts) pass."""

from __future__ import annotations

import pytest

from qsift import config
from qsift.errors import ConfigError

GOOD = [
    "",
    "postgresql://qsift@db.example:5432/mail",
    "postgres://qsift@db.example/mail",
    "postgresql:///mail?host=/run/postgresql",
    "postgresql://qsift@%2Frun%2Fpostgresql/mail",
    "postgresql://qsift@/mail?host=/tmp/qsift-pg&port=5433",
    "postgresql://qsift@pg1:5432,pg2:5432/mail?target_session_attrs=read-write",
]

BAD = [
    ("mysql://qsift@db.example/mail", "is not postgresql://USER@HOST:PORT/DB"),
    ("host=/run/postgresql dbname=mail", "is not postgresql://USER@HOST:PORT/DB"),
    ("db.example:5432/mail", "is not postgresql://USER@HOST:PORT/DB"),
    ("postgresql://qsift@db.example:5432", "names no database"),
    ("postgresql://qsift@db.example:port/mail", "port 'port' is not a number"),
    ("postgresql://qsift@db.example:70000/mail", "port '70000' is not a number"),
    ("postgresql://qsift@db.example/mail?sslmod=require", 'invalid URI query parameter: "sslmod"'),
    ("postgresql://qsift:secret@db.example/mail", "no password in the URL"),
]


@pytest.mark.parametrize("url", GOOD)
def test_urls_libpq_takes_are_accepted(url: str) -> None:
    assert config.loads(f"[store]\nurl = {url!r}\n").store.url == url


@pytest.mark.parametrize(("url", "complaint"), BAD)
def test_a_bad_url_is_a_configuration_error_naming_the_key(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(f"[store]\nurl = {url!r}\n", source="q.toml")
    assert str(caught.value).startswith("q.toml:2: [store] url: ")
    assert complaint in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_default_is_sqlite_and_a_small_pool() -> None:
    store = config.loads("").store
    assert (store.url, store.max_connections, store.connect_timeout) == ("", 4, 10.0)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("max_connections = 0", "[store] max_connections: must be a whole number >= 1"),
        ("connect_timeout = 0", "[store] connect_timeout: must be a number of seconds > 0"),
        ("pool = 3", "[store] pool: unknown key"),
    ],
)
def test_pool_settings_are_checked(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as caught:
        config.loads(f"[store]\n{text}\n")
    assert complaint in str(caught.value)


def test_sql_lookups_are_off_by_default_and_need_the_url() -> None:
    store = config.from_mapping({}).store
    assert (store.sql_lookups, store.sql_lookup_ttl) == (False, 60.0)
    with pytest.raises(ConfigError, match=r"\[store\] sql_lookups: needs \[store\] url"):
        config.from_mapping({"store": {"sql_lookups": True}})
    with pytest.raises(ConfigError, match=r"sql_lookup_ttl: must be a number of seconds > 0"):
        config.from_mapping({"store": {"url": "postgresql:///mail", "sql_lookup_ttl": 0}})
    on = config.from_mapping({"store": {"url": "postgresql:///mail", "sql_lookups": True}}).store
    assert on.sql_lookups
