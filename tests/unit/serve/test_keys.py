"""The daemon's keys: the mark key made qsift's alone, the client key readable by whom it must be, the
one-key setup of before refused with what to do, never used quietly, and the ARC sealing key read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qsift import config
from qsift.errors import ConfigError
from qsift.serve.keys import load_keys


def settings(tmp_path: Path, **tables: dict[str, str]) -> config.Config:
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    return config.from_mapping({"state_dir": str(tmp_path / "state"), **tables})


def key_file(path: Path, mode: int, content: bytes | None = None) -> str:
    path.write_bytes(os.urandom(32) if content is None else content)
    path.chmod(mode)
    return str(path)


def test_the_mark_key_is_made_once_for_qsift_alone_and_no_client_key_by_default(tmp_path: Path) -> None:
    keys = load_keys(settings(tmp_path))
    made = tmp_path / "state" / "mark.key"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and len(keys.mark) == 32
    assert keys.client is None  # nothing to check X-Qsift-Client with: no field is believed
    assert load_keys(settings(tmp_path)).mark == keys.mark


@pytest.mark.parametrize("mode", [0o440, 0o400, 0o640, 0o600])
def test_a_client_key_for_qmaild_and_qsift_is_taken(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path / "client.key", mode)
    keys = load_keys(settings(tmp_path, client_context={"key_file": path}))
    assert keys.client == Path(path).read_bytes() and keys.client != keys.mark


@pytest.mark.parametrize(
    ("mode", "content", "words"),
    [
        (0o444, None, "mode 0444: every local user who can read it can claim to be a relay client"),
        (0o644, None, "chown qmaild:qsift"),
        (0o460, None, "mode 0460"),  # qmaild's group could replace it
        (0o440, b"", "the client key {path} is empty"),
    ],
)
def test_a_client_key_others_can_read_or_an_empty_one_is_refused(
    tmp_path: Path, mode: int, content: bytes | None, words: str
) -> None:
    path = key_file(tmp_path / "client.key", mode, content)
    with pytest.raises(ConfigError, match=words.format(path=path)):
        load_keys(settings(tmp_path, client_context={"key_file": path}))


def test_a_client_key_named_but_missing_says_how_to_make_it(tmp_path: Path) -> None:
    path = str(tmp_path / "client.key")
    with pytest.raises(ConfigError, match=rf"does not exist; .*head -c 32 /dev/urandom > {path}; "):
        load_keys(settings(tmp_path, client_context={"key_file": path}))


def test_the_shared_key_of_before_is_refused_with_the_way_out(tmp_path: Path) -> None:
    # The documented setup before the split: one key, qmaild's and qsift's, named as [mark] key_file.
    shared = key_file(tmp_path / "site.key", 0o440)
    with pytest.raises(ConfigError, match=r"mark key .* mode 0440: .*name it as \[client_context\] key_file"):
        load_keys(settings(tmp_path, mark={"key_file": shared}))
    # ... and naming it for both is refused too, whatever its mode.
    os.chmod(shared, 0o600)
    both = {"mark": {"key_file": shared}, "client_context": {"key_file": shared}}
    with pytest.raises(ConfigError, match="are the same file"):
        load_keys(settings(tmp_path, **both))
    # The way out the message gives: the file becomes the client key, qsift makes a mark key of its own.
    os.chmod(shared, 0o440)
    keys = load_keys(settings(tmp_path, client_context={"key_file": shared}))
    assert keys.client == Path(shared).read_bytes() and (tmp_path / "state" / "mark.key").exists()


def test_the_arc_key_is_read_with_the_others(tmp_path: Path) -> None:
    from tests.unit.auth.rfc8463 import RFC8463_RSA

    assert load_keys(settings(tmp_path)).arc is None
    path = key_file(tmp_path / "arc.pem", 0o600, RFC8463_RSA)
    arc = {"domain": "example.org", "selector": "arc1", "key_file": path}
    keys = load_keys(settings(tmp_path, arc=arc))
    assert keys.arc is not None and (keys.arc.domain, keys.arc.selector) == ("example.org", "arc1")
    with pytest.raises(ConfigError, match=r"cannot read the ARC key .*gone\.pem \(arc1\._domainkey"):
        load_keys(settings(tmp_path, arc={**arc, "key_file": str(tmp_path / "gone.pem")}))
