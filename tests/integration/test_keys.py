"""The keys in a running `qsift serve`: a key setup that would hand out a power is refused at start and at
SIGHUP, with the fix in the message; a good one read at SIGHUP is the one the new workers check with."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from qsift.wire import client_context
from tests.harness import free_port, qmqp_send
from tests.integration.test_destinies import SENDER, banned_message
from tests.integration.test_workers import QSIFT, config_text, serving, sink

#: Mail from a relay client passes banned files: what a forged or unchecked client field would win.
ORIGINATING = '[policy_bank.ORIGINATING]\ndestiny = { banned = "pass" }\n'
RCPT = b"b@example.net"


def client_field(key: bytes, recipient: bytes) -> bytes:
    context = client_context.ClientContext(ip="192.0.2.7", relay_client=True)
    return client_context.make_field(key, context, SENDER, [recipient], int(time.time()))


def test_the_single_site_key_of_before_stops_the_start_with_the_way_out(tmp_path: Path) -> None:
    shared = tmp_path / "site.key"
    shared.write_bytes(os.urandom(32))
    shared.chmod(0o440)  # qmaild:qsift, as the setup before the split made it
    config = tmp_path / "qsift.toml"
    extra = f'[mark]\nkey_file = "{shared}"\n'
    config.write_text(config_text(tmp_path / "state", "smtp:[127.0.0.1]:1", free_port(), extra))
    result = subprocess.run(
        [QSIFT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert f"the mark key {shared} is mode 0440" in result.stderr, result.stderr
    assert "name it as [client_context] key_file instead" in result.stderr, result.stderr


async def test_sighup_takes_a_client_key_only_once_it_is_safe(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o444)  # every local user could read it
    async with sink() as mta:
        with serving(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", ORIGINATING) as served:
            signed = client_field(key.read_bytes(), RCPT) + banned_message()
            answer = await qmqp_send(served.port, signed, SENDER, [RCPT])
            assert "BOUNCE" in answer, answer  # no client key yet: the field is not believed
            served.config.write_text(served.config.read_text() + f'[client_context]\nkey_file = "{key}"\n')
            served.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(
                served.wait_for_log, r"client key .* mode 0444: .*keeping the running configuration"
            )
            key.chmod(0o440)
            served.process.send_signal(signal.SIGHUP)
            await asyncio.to_thread(served.wait_for_log, r"SIGHUP: configuration .* read")
            await asyncio.to_thread(served.wait_for_log, r"qsift ready.*\n(.|\n)*qsift ready")
            await served.settled_workers()
            other = b"c@example.net"  # another envelope: not a retry of the bounced one
            signed = client_field(key.read_bytes(), other) + banned_message()
            answer = await qmqp_send(served.port, signed, SENDER, [other])
            assert answer.startswith("K250") and "BOUNCE" not in answer, answer
