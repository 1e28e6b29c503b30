"""DKIM signing end to end through the real daemon: our users' mail (a listener's ORIGINATING bank, or
RELAYCLIENT in qsift-queue's client context) reaches the downstream signed, and the signature verifies
against the keys a real knotd publishes; inbound mail, mail from a domain without a key, and a bank that
turns signing off reach it unsigned. The signature covers qsift's own edits (the X-Qsift-Scanned mark, a
long line re-encoded), since it is made over the bytes that leave."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import dkim
import pytest

from qsift.auth.dkim_keys import read_private_key
from qsift.auth.dns import Resolver
from qsift.auth.settings import DnsSettings
from qsift.dkim_tools import genkey
from tests.dns_server import DnsServer, running_knot, txt_strings
from tests.fakes.mta import Delivery, FakeMta, fake_mta
from tests.harness import RunningDaemon, free_port, qmqp_send, running_daemon, smtp_send
from tests.integration.test_destinies import SENDER
from tests.integration.test_recipient_policy import client_field, client_key

BOB = b"bob@elsewhere.test"
MESSAGE = (
    b"From: Alice <alice@example.test>\nTo: bob@elsewhere.test\nDate: Thu, 03 Dec 2026 12:00:00 +0000\n"
    b"Subject: hello\nMessage-ID: <1@example.test>\n\nhello  there\n"
)
#: A line over 998 octets: the forward re-encodes it (act/long_lines.py) before the signature is made.
LONG = MESSAGE.replace(b"hello  there\n", b"x" * 1500 + b"\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("signing-keys")
    entries = []
    records = ""
    for selector, ed25519 in (("s2048", False), ("ed", True)):
        path = directory / f"{selector}.pem"
        assert genkey("example.test", selector, str(path), 2048, ed25519, io.StringIO(), io.StringIO()) == 0
        key = read_private_key(str(path))
        entries.append({"domain": "example.test", "selector": selector, "key_file": str(path)})
        records += f"{selector}._domainkey TXT ( {txt_strings(key.record)} )\n"
    return {"entries": entries, "records": records}


@pytest.fixture(scope="module")
def server(keys: dict[str, Any]) -> Iterator[DnsServer]:
    with running_knot({"example.test": keys["records"]}) as running:
        yield running


async def verdicts(delivery: Delivery, server: DnsServer) -> list[tuple[bytes, bool]]:
    """Each DKIM-Signature's a= and dkimpy's verdict on the message as the downstream got it (dkimpy's
    lookups are blocking: in a thread, each through a resolver of its own)."""
    return await asyncio.to_thread(_verdicts, delivery, server)


def _verdicts(delivery: Delivery, server: DnsServer) -> list[tuple[bytes, bool]]:
    settings = DnsSettings(nameservers=(server.address,), timeout=3.0)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        found = asyncio.run(Resolver(settings).txt(name.decode()))
        return found[0].encode() if found else None

    verifier = dkim.DKIM(delivery.body)
    signatures = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    algorithms = [dkim.util.parse_tag_value(v)[b"a"] for v in signatures]
    return [(a, bool(verifier.verify(i, dnsfunc=lookup))) for i, a in enumerate(algorithms)]


def signing_daemon(
    tmp_path: Path,
    mta: FakeMta,
    keys: dict[str, Any],
    *,
    bank: str = "",
    protocols: tuple[str, ...] = ("qmqp",),
    **top: Any,
) -> AbstractAsyncContextManager[RunningDaemon]:
    """qsift with `keys` to sign with, forwarding to `mta`; its listeners in `bank` (else the base policy)."""
    return running_daemon(
        tmp_path,
        f"smtp:[127.0.0.1]:{mta.port}",
        protocols=protocols,
        listen_extra={"policy_bank": bank} if bank else None,
        top={"dkim": {"keys": keys["entries"]}, **top},
    )


async def test_originating_mail_arrives_signed_and_verifies(
    tmp_path: Path, keys: dict[str, Any], server: DnsServer
) -> None:
    async with (
        fake_mta() as mta,
        signing_daemon(tmp_path, mta, keys, bank="ORIGINATING", protocols=("qmqp", "smtp")) as daemon,
    ):
        assert (await qmqp_send(daemon.qmqp, MESSAGE, SENDER, [BOB])).startswith("K")
        assert (await smtp_send(daemon.smtp, LONG, SENDER, [BOB])).final[0][0] == 250
    first, second = mta.deliveries
    both = [(b"rsa-sha256", True), (b"ed25519-sha256", True)]
    assert await verdicts(first, server) == both
    assert await verdicts(second, server) == both
    assert first.body.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.test;")
    assert b"X-Qsift-Scanned: " in first.body  # made before the signature, and covered by the body hash
    assert b"x" * 1500 not in second.body  # the long line was re-encoded before signing


async def test_relayclient_in_the_client_context_signs(
    tmp_path: Path, keys: dict[str, Any], server: DnsServer
) -> None:
    async with (
        fake_mta() as mta,
        signing_daemon(tmp_path, mta, keys, **client_key(tmp_path)) as daemon,
    ):
        relayed = client_field(tmp_path, [BOB]) + MESSAGE
        assert (await qmqp_send(daemon.qmqp, relayed, SENDER, [BOB])).startswith("K")
        inbound = client_field(tmp_path, [BOB], relay=False) + MESSAGE.replace(b"hello", b"inbound")
        assert (await qmqp_send(daemon.qmqp, inbound, SENDER, [BOB])).startswith("K")
    signed, unsigned = mta.deliveries
    assert [ok for _, ok in await verdicts(signed, server)] == [True, True]
    assert b"DKIM-Signature" not in unsigned.body


async def test_inbound_unknown_domain_and_a_quiet_bank_stay_unsigned(
    tmp_path: Path, keys: dict[str, Any], server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qsift")
    quiet = {"QUIET": {"originating": True, "dkim": {"sign": False}}}
    async with (
        fake_mta() as mta,
        signing_daemon(tmp_path / "base", mta, keys) as inbound,
        signing_daemon(tmp_path / "originating", mta, keys, bank="ORIGINATING") as originating,
        signing_daemon(tmp_path / "quiet", mta, keys, bank="QUIET", policy_bank=quiet) as quiet_one,
    ):
        assert (await qmqp_send(inbound.qmqp, MESSAGE, SENDER, [BOB])).startswith("K")
        other = MESSAGE.replace(b"alice@example.test", b"alice@example.org")
        assert (await qmqp_send(originating.qmqp, other, SENDER, [BOB])).startswith("K")
        assert (await qmqp_send(quiet_one.qmqp, MESSAGE + b"quiet\n", SENDER, [BOB])).startswith("K")
    assert len(mta.deliveries) == 3
    assert all(b"DKIM-Signature" not in d.body for d in mta.deliveries)
    said = [r.getMessage() for r in caplog.records]
    assert any("not DKIM-signed: no DKIM key for example.org or a parent domain" in m for m in said), said


def test_a_bad_key_file_stops_the_start_and_config_check_does_not_read_it(tmp_path: Path) -> None:
    from tests.integration.test_workers import QSIFT, config_text

    public = tmp_path / "public.pem"
    public.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for path, why in (
        (tmp_path / "missing.pem", "cannot read the DKIM key"),
        (public, "holds a PUBLIC KEY, not an unencrypted private key"),
    ):
        extra = f'[[dkim.keys]]\ndomain = "example.test"\nselector = "s1"\nkey_file = "{path}"\n'
        config = tmp_path / "qsift.toml"
        config.write_text(config_text(tmp_path / "state", "smtp:[127.0.0.1]:1", free_port(), extra))
        checked = subprocess.run(
            [QSIFT, "config", "check", str(config)], capture_output=True, text=True, timeout=60, check=False
        )
        assert checked.returncode == 0, checked.stderr  # what the file says is right
        served = subprocess.run(
            [QSIFT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
        )
        assert served.returncode != 0
        assert f"{path} (s1._domainkey.example.test)" in served.stderr, served.stderr
        assert why in served.stderr, served.stderr
