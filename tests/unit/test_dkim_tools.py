"""`qsift dkim genkey` and `showkey` from the command line: the key file (0600, PEM that openssl reads,
never overwritten), the record printed, bad arguments refused in one line. testkey, which needs DNS, is
tested against knotd (tests/integration/test_dkim_interop.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qsift.auth.dkim_keys import KeyType, read_private_key
from qsift.cli import main


def test_genkey_writes_an_ed25519_key_openssl_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ed.pem"
    assert main(["dkim", "genkey", "Example.ORG.", "E1", "--ed25519", "--out", str(path)]) == 0
    said = capsys.readouterr()
    key = read_private_key(str(path))
    assert key.type is KeyType.ED25519
    assert path.stat().st_mode & 0o777 == 0o600
    assert said.out == f'e1._domainkey.example.org.\t3600\tIN\tTXT\t(\n  "{key.record}" )\n'
    assert 'domain = "example.org"\nselector = "e1"' in said.err
    openssl = shutil.which("openssl")
    if openssl is not None:
        text = subprocess.run([openssl, "pkey", "-in", str(path), "-noout", "-text"], capture_output=True)
        assert text.returncode == 0 and b"ED25519 Private-Key" in text.stdout


def test_genkey_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "taken.pem"
    path.write_text("mine")
    assert main(["dkim", "genkey", "example.org", "s1", "--ed25519", "--out", str(path)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert path.read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["a b", "s1"], "not a domain name"),
        (["example.org", "s_1."], "not a selector"),
        (["example.org", "s1", "--bits", "512"], "must be 1024 to 4096"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["dkim", "genkey", *args])
    assert stopped.value.code == 2
    assert why in capsys.readouterr().err


def test_showkey_with_a_bad_key_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "qsift.toml"
    config.write_text(
        f'[[dkim.keys]]\ndomain = "x.test"\nselector = "s1"\nkey_file = "{tmp_path}/none.pem"\n'
    )
    assert main(["dkim", "showkey", "--config", str(config)]) == 2
    assert "cannot read the DKIM key" in capsys.readouterr().err
    config.write_text("")
    assert main(["dkim", "showkey", "--config", str(config)]) == 0
    assert "no [[dkim.keys]]" in capsys.readouterr().out
