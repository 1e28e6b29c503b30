"""Hypothesis profiles. `make test` (and so CI) uses "repeatable": derandomized, so every run tries the
same examples and a landing is never refused by a chance find on a fresh machine. Plain `pytest` keeps
exploring with fresh examples each run; what it finds is saved in .hypothesis/ and belongs in an
`@example` next to the property."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.postgres_server import PostgresServer, running_postgres

settings.register_profile("repeatable", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster (tests/postgres_server.py), started once for the module that asks;
    `postgres.create_database(name)` gives each test a database of its own."""
    with running_postgres() as server:
        yield server
