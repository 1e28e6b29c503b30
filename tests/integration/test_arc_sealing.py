"""ARC sealing end to end through the real daemon: a listener's bank of list traffic seals the checked
mail it passes on, and the copy the downstream gets validates against the keys a real knotd publishes
(DKIM-signed mail without a chain gets i=1 cv=none, mail with a valid chain i=2 cv=pass); the base policy
seals nothing; a sealing key that is no RSA key, or missing, stops the start."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qsift.auth.arc import ArcValidation, sign_arc, validate_arc
from tests.fakes.mta import fake_mta
from tests.harness import free_port, qmqp_send, running_daemon
from tests.integration.test_auth_inbound import SENDER, signed
from tests.unit.auth.arc_world import ArcWorld, arc_world, ed25519_key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcWorld]:
    """The author's DKIM key (s1._domainkey.signed.test, as test_auth_inbound signs with it), an earlier
    hop's ARC key (up._domainkey.example.test) and qsift's sealing key (seal._domainkey.forwarder.test)."""
    keys = {
        "author": ("signed.test", "s1"),
        "upstream": ("example.test", "up"),
        "ours": ("forwarder.test", "seal"),
    }
    dmarc = {"signed.test": '_dmarc TXT "v=DMARC1; p=reject"\n'}
    with arc_world(tmp_path_factory.mktemp("arc-sealing"), keys, dmarc) as made:
        yield made


async def delivered(tmp_path: Path, world: ArcWorld, raw: bytes, *, bank: bool = True) -> bytes:
    """The copy the downstream got of `raw`, sent over QMQP to a listener of the LISTS bank (or not)."""
    top: dict[str, Any] = {
        "dns": {"nameservers": [world.address], "timeout": 2.0},
        "auth": {"check": True},
        "arc": {"domain": "forwarder.test", "selector": "seal", "key_file": str(world.paths["ours"])},
        "policy_bank": {"LISTS": {"arc": {"seal": True}}},
    }
    listen = {"policy_bank": "LISTS"} if bank else None
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top, listen_extra=listen
        ) as daemon,
    ):
        answer = await qmqp_send(daemon.qmqp, raw, SENDER, [b"bob@example.net"])
    assert answer.startswith("K"), answer
    body: bytes = mta.accepted[0].body
    return body


async def validate(world: ArcWorld, message: bytes) -> ArcValidation:
    return await validate_arc(world.resolver(), message)


async def test_signed_mail_without_a_chain_leaves_sealed_i1_cv_none(tmp_path: Path, world: ArcWorld) -> None:
    body = await delivered(tmp_path, world, signed(world.paths["author"]))
    assert body.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.test; s=seal;"), body[:300]
    aar = body[body.index(b"ARC-Authentication-Results:") :].split(b"\r\n")[0]
    assert aar.startswith(b"ARC-Authentication-Results: i=1; qsift.test;"), aar
    assert b"dkim=pass" in body.split(b"\r\n\r\n")[0] and b"arc=none" in body.split(b"\r\n\r\n")[0]
    found = await validate(world, body)
    assert (found.result.result, found.sealer) == ("pass", "forwarder.test"), found


async def test_mail_with_a_valid_chain_leaves_sealed_i2_cv_pass(tmp_path: Path, world: ArcWorld) -> None:
    raw = signed(world.paths["author"])
    upstream_field = b"Authentication-Results: mx.example.test; dkim=pass header.d=signed.test"
    arrived = b"".join(sign_arc(raw, "mx.example.test", upstream_field, world.keys["upstream"])) + raw
    body = await delivered(tmp_path, world, arrived)
    assert body.startswith(b"ARC-Seal: i=2; cv=pass;"), body[:300]
    found = await validate(world, body)
    assert (found.result.result, found.sealer) == ("pass", "forwarder.test"), found
    assert b"ARC-Seal: i=1;" in body


async def test_the_base_policy_seals_nothing(tmp_path: Path, world: ArcWorld) -> None:
    body = await delivered(tmp_path, world, signed(world.paths["author"]), bank=False)
    assert b"ARC-" not in body and b"Authentication-Results: qsift.test;" in body


def test_a_bad_key_file_stops_the_start(tmp_path: Path, world: ArcWorld) -> None:
    from tests.integration.test_workers import QSIFT, config_text

    for path, why in (
        (ed25519_key(tmp_path / "ed.pem"), "is an Ed25519 key: ARC seals are rsa-sha256"),
        (tmp_path / "missing.pem", "cannot read the ARC key"),
    ):
        extra = f'[arc]\ndomain = "forwarder.test"\nselector = "seal"\nkey_file = "{path}"\n'
        config = tmp_path / "qsift.toml"
        config.write_text(config_text(tmp_path / "state", "smtp:[127.0.0.1]:1", free_port(), extra))
        served = subprocess.run(
            [QSIFT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
        )
        assert served.returncode != 0
        assert f"{path} (seal._domainkey.forwarder.test)" in served.stderr, served.stderr
        assert why in served.stderr, served.stderr
