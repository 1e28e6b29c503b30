"""tests/postgres_server.py leaves nothing behind: the cluster runs as an unprivileged user (initdb refuses
root), answers on its socket and its port, and is stopped and removed when the block ends."""

from __future__ import annotations

import os
import socket

import psycopg

from tests.postgres_server import running_postgres


def test_the_cluster_answers_then_is_stopped_and_removed() -> None:
    with running_postgres() as server:
        for url in (server.url(), server.socket_url()):
            with psycopg.connect(url) as db:
                assert db.execute("SELECT current_user").fetchone() == ("postgres",)
        owner = os.stat(server.directory / "data").st_uid
        assert owner != 0 or os.geteuid() != 0
    assert not server.directory.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
