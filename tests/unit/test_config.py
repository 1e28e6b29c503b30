from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from qsift import config
from qsift.config.convert import key_names
from qsift.errors import ConfigError


def test_empty_file_gives_the_howto_setup() -> None:
    settings = config.loads("")
    assert [(listener.protocol, str(listener.address)) for listener in settings.listeners] == [
        ("qmqp", "127.0.0.1:10628"),
        ("smtp", "127.0.0.1:10024"),
    ]
    assert settings.forward.method == "smtp:[127.0.0.1]:10025"
    assert settings.limits.message_size == 50 * 1024 * 1024
    assert settings.dedupe_window == 3600.0


def test_listeners_inherit_and_override_limits() -> None:
    settings = config.loads(
        """
        [limits]
        message_size = 1000
        [[listen]]
        protocol = "lmtp"
        address = "unix:/run/qsift/lmtp.sock"
        [[listen]]
        protocol = "qmqp"
        address = "[::1]:10628"
        acl = ["::1", "10.0.0.0/8"]
        max_sessions = 3
        """
    )
    lmtp, qmqp = settings.listeners
    assert lmtp.address.path == "/run/qsift/lmtp.sock"
    assert lmtp.limits.message_size == 1000
    assert qmqp.address.host == "::1"
    assert qmqp.limits.max_sessions == 3
    assert qmqp.limits.message_size == 1000
    assert str(qmqp.address) == "[::1]:10628"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("log_levl = 2", "log_levl: unknown key"),
        ("log_level = 9", "log_level: must be 5 or less"),
        ("[limits]\nmessage_size = -1", "whole number"),
        ("[limits]\nmessage_size = true", "whole number"),
        ("[limits]\nclient_timeout = 0", "seconds > 0"),
        ("[limits]\nmax_sessions = 0", "max_sessions: must be a whole number >= 1"),
        ("[forward]\nmethod = 'smtp'", "is not smtp:[host]:port"),
        ("[forward]\nmethod = 'maildir:relative'", "is not smtp:[host]:port"),
        ("[[listen]]\nprotocol = 'pop3'\naddress = '127.0.0.1:1'", "protocol: must be one of"),
        ("[[listen]]\nprotocol = 'smtp'\naddress = 'nohost'", "address: must be host:port"),
        ("[[listen]]\nprotocol = 'smtp'\naddress = 'unix:rel'", "must be absolute"),
        ("[[listen]]\nprotocol = 'smtp'", "address: is required"),
        ("[[listen]]\nprotocol = 'smtp'\naddress = '127.0.0.1:1'\nacl = ['nonsense']", "acl"),
        ("[[listen]]\nprotocol = 'smtp'\naddress = '127.0.0.1:1'\nacl = 'x'", "acl: must be a list"),
        ("[[listen]]\nprotocol = 'smtp'\naddress = '127.0.0.1:1'\nfoo = 1", "foo: unknown key"),
        (
            "[[listen]]\nprotocol = 'smtp'\naddress = '127.0.0.1:1'\n"
            "[[listen]]\nprotocol = 'qmqp'\naddress = '127.0.0.1:1'",
            "127.0.0.1:1 is [[listen]] #1's too",
        ),
        ("limits = 3", "limits: must be a table"),
        ("myhostname = 3", "must be a string"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as caught:
        config.from_mapping(tomllib.loads(text))
    assert complaint in str(caught.value)
    with pytest.raises(ConfigError):
        config.loads(text)


def test_loading_names_every_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads("log_levl = 1\n\n[limits]\nbusy_wait = 0\n", source="q.toml")
    allowed = ", ".join(key_names(config.Config))
    assert str(caught.value) == (
        f"q.toml:1: log_levl: unknown key (allowed: {allowed}); "
        "q.toml:4: [limits] busy_wait: must be a number of seconds > 0, not 0"
    )
    with pytest.raises(ConfigError, match=r"^q\.toml:1: not TOML: "):
        config.loads("this is not toml", source="q.toml")


def test_load_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.toml"))
    (tmp_path / "ok.toml").write_text("log_level = 3\n")
    assert config.load(str(tmp_path / "ok.toml")).log_level == 3
    (tmp_path / "latin1.toml").write_bytes(b'myhostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(tmp_path / "latin1.toml"))
