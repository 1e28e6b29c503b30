"""Workers killed (SIGKILL) while they carry mail: nothing is lost, and the duplicates the kills can cause
come only from the window DESIGN.md's invariant 2 names (the downstream's 250 to the record's commit).

The random-kill run prints its figures; docs/reliability.md ("Worker kills") has them and the command
for a longer run (QSIFT_KILLS, QSIFT_KILL_EVERY).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import time
from collections import Counter
from pathlib import Path

from tests.fakes.mta import FakeMta, Script, fake_mta
from tests.harness import qmqp_send
from tests.integration.test_destinies import SENDER
from tests.integration.test_workers import CLEAN, Served, serving

RECIPIENT = b"b@example.net"
#: The downstream refuses this one: the others' K then comes with a DSN to the sender about it.
REFUSED = b"refused@example.net"


async def send_until_accepted(
    port: int, message: bytes, recipients: tuple[bytes, ...] = (RECIPIENT,), attempts: int = 50
) -> str:
    """What qmail does with a message: try again after a dropped connection or a Z, until K or D."""
    answer = ""
    for _ in range(attempts):
        try:
            answer = await qmqp_send(port, message, SENDER, list(recipients), timeout=60)
        except (ConnectionError, OSError):
            answer = ""
        if answer[:1] in ("K", "D"):
            return answer
    return answer


async def test_a_worker_killed_right_after_the_downstream_accepted_causes_no_duplicate(
    tmp_path: Path,
) -> None:
    """Killed the moment the downstream hears QUIT, that is after its 250: the delivery is on record by
    then, so the retry is answered from the record. (Before, the record came after QUIT and the close:
    the retry was delivered a second time.)"""
    script = Script(quit_reply=None)  # the worker waits for the goodbye: the kill comes in that wait
    async with fake_mta(script) as mta:
        # A connection per message, so that QUIT follows the 250 (a kept session would say nothing).
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", forward_extra="idle_sessions = 0") as served:
            workers = await served.settled_workers()
            sending = asyncio.create_task(qmqp_send(served.port, CLEAN % 1, SENDER, [RECIPIENT]))
            await asyncio.wait_for(mta.quit_received.wait(), 30)
            for worker in workers:  # the one carrying the message among them
                os.kill(worker, signal.SIGKILL)
            try:
                first = await asyncio.wait_for(sending, 30)
            except ConnectionResetError:
                first = ""
            assert first == "", first  # no answer: the client retries
            retry = await send_until_accepted(served.port, CLEAN % 1)
            assert re.match(r"K250 2\.0\.0 Ok, id=\S+, already delivered as id=", retry), retry
    assert len(mta.accepted) == 1


def deliveries_by_message(mta: FakeMta) -> Counter[int]:
    """How often each message reached the downstream (the DSNs about refused recipients not counted)."""
    counts: Counter[int] = Counter()
    for delivery in mta.accepted:
        if delivery.sender == SENDER:
            number = re.search(rb"hello (\d+)", delivery.body)
            assert number is not None, delivery.body[-200:]
            counts[int(number.group(1))] += 1
    return counts


async def kill_workers(served: Served, every: tuple[float, float], kills: int) -> None:
    """SIGKILL a random worker every `every` seconds, `kills` times."""
    chance = random.Random(20261203)
    while kills:
        await asyncio.sleep(chance.uniform(*every))  # the kills' pace, not a wait for readiness
        workers = served.workers()
        if workers:
            try:
                os.kill(chance.choice(workers), signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills -= 1


async def test_random_worker_kills_lose_nothing(tmp_path: Path) -> None:
    """Four clients send messages, one after the other, while a random worker is killed every 0.5 to
    1 s; each message is retried after a dropped connection until it is accepted. Every other message
    also goes to a recipient the downstream refuses, so a DSN follows its delivery (before this change,
    inside the window between the downstream's 250 and the record)."""
    kills = int(os.environ.get("QSIFT_KILLS", "12"))
    low, high = (float(s) for s in os.environ.get("QSIFT_KILL_EVERY", "0.5-1.0").split("-"))
    #: Seconds each client waits between its messages (0: as fast as qsift takes them).
    pause = float(os.environ.get("QSIFT_KILL_PAUSE", "0"))
    numbers = itertools.count()
    answers: list[str] = []
    script = Script(rcpt_replies={REFUSED.decode(): "550 5.1.1 no such user"})
    async with fake_mta(script) as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}") as served:
            killing = asyncio.create_task(kill_workers(served, (low, high), kills))

            async def client() -> None:
                while not killing.done():
                    number = next(numbers)
                    recipients = (RECIPIENT, REFUSED)[: 1 + number % 2]
                    answers.append(await send_until_accepted(served.port, CLEAN % number, recipients))
                    await asyncio.sleep(pause)  # the load's shape

            started = time.monotonic()
            await asyncio.gather(killing, *(client() for _ in range(4)))
            elapsed = time.monotonic() - started
    messages = len(answers)
    delivered = deliveries_by_message(mta)
    lost = [n for n in range(messages) if not delivered[n]]
    duplicates = sum(count - 1 for count in delivered.values())
    print(
        f"\n{messages} messages in {elapsed:.0f} s, {kills} workers killed: {duplicates} duplicates "
        f"({100 * duplicates / kills:.1f} per 100 kills), {len(lost)} lost"
    )
    assert all(a.startswith("K") for a in answers), [a for a in answers if not a.startswith("K")][:5]
    assert lost == []
