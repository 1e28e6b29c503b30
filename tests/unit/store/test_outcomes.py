from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from qsift.store.outcomes import LocalOutcomes, OutcomeStore, body_fingerprint, delivery_key


def test_records_are_found_within_the_window_and_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "outcomes.sqlite")
    store = OutcomeStore(path)
    keys = [delivery_key("d" * 64, "a@example.org", f"r{i}@example.net") for i in range(1200)]
    store.record(keys[:1000], "mailid", "250 2.0.0 Ok", now=1000.0)
    store.close()
    store = OutcomeStore(path)
    found = store.lookup(keys, not_before=900.0)
    assert set(found) == set(keys[:1000])
    assert found[keys[0]].mail_id == "mailid"
    assert store.lookup(keys, not_before=1001.0) == {}
    assert store.purge(older_than=1001.0) == 1000
    store.close()


def test_keys_depend_on_body_sender_and_recipient() -> None:
    base = delivery_key("a" * 64, "s@x", "r@y")
    assert base != delivery_key("b" * 64, "s@x", "r@y")
    assert base != delivery_key("a" * 64, "t@x", "r@y")
    assert base != delivery_key("a" * 64, "s@x", "q@y")


def test_fingerprint_ignores_only_the_topmost_received_field() -> None:
    body = b"Received: from a\n  by b; Tue, 24 Nov 2026 10:00:00 +0000\nReceived: from c\nSubject: x\n\nhi\n"
    retry = body.replace(b"10:00:00", b"10:05:00")
    assert body_fingerprint([body]) == body_fingerprint([retry])
    changed_inner = body.replace(b"from c", b"from d")
    assert body_fingerprint([body]) != body_fingerprint([changed_inner])
    assert body_fingerprint([b"Subject: x\n\n1"]) != body_fingerprint([b"Subject: x\n\n2"])


@given(body=st.binary(max_size=2000), cut=st.integers(0, 2000))
def test_fingerprint_does_not_depend_on_chunking(body: bytes, cut: int) -> None:
    message = b"Received: by host; now\n" + body
    assert body_fingerprint([message]) == body_fingerprint([message[:cut], message[cut:]])


def test_a_lookup_on_the_loop_sees_other_connections_records_and_waits_for_no_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "outcomes.sqlite")
    store = OutcomeStore(path)
    sibling = OutcomeStore(path)  # another worker's
    keys = [delivery_key("d" * 64, "a@example.org", f"r{i}@example.net") for i in range(3)]
    sibling.record(keys[:1], "first", "250 ok", now=1000.0)
    assert set(store.lookup_on_loop(keys, not_before=0.0)) == {keys[0]}
    # A third worker holds the write lock (a record waiting on its disk): the read does not wait for it.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO outcomes VALUES (?, 'held', '250 ok', 1000.0)", (keys[2],))
    started = time.monotonic()
    assert set(store.lookup_on_loop(keys, not_before=0.0)) == {keys[0]}
    assert time.monotonic() - started < 1.0
    holder.execute("COMMIT")
    holder.close()
    sibling.record(keys[1:2], "second", "250 ok", now=1000.0)
    assert set(store.lookup_on_loop(keys, not_before=0.0)) == set(keys)
    sibling.close()
    store.close()


def test_local_outcomes_look_up_few_keys_on_the_loop_and_many_in_a_thread(tmp_path: Path) -> None:
    store = OutcomeStore(str(tmp_path / "outcomes.sqlite"))
    keys = [delivery_key("d" * 64, "a@example.org", f"r{i}@example.net") for i in range(1200)]
    store.record(keys[::2], "mailid", "250 ok", now=1000.0)
    outcomes = LocalOutcomes(store)

    async def both() -> tuple[set[str], set[str]]:
        few = await outcomes.lookup(keys[:10], 900.0)
        many = await outcomes.lookup(keys, 900.0)
        return set(few), set(many)

    few, many = asyncio.run(both())
    assert few == set(keys[:10:2]) and many == set(keys[::2])
    asyncio.run(outcomes.close())
