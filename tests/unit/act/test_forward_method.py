"""The forward method in amavisd-new's syntax."""

from __future__ import annotations

import pytest

from qsift.act.smtp_forward import SmtpTarget, parse_forward_method
from qsift.errors import ConfigError


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("smtp:[127.0.0.1]:10025", SmtpTarget(False, host="127.0.0.1", port=10025)),
        ("smtp:[::1]:10025", SmtpTarget(False, host="::1", port=10025)),
        ("smtp:localhost:2525", SmtpTarget(False, host="localhost", port=2525)),
        ("smtp:[127.0.0.1]", SmtpTarget(False, host="127.0.0.1", port=25)),
        ("smtp:mx.example.org", SmtpTarget(False, host="mx.example.org", port=25)),
        ("lmtp:[127.0.0.1]:24", SmtpTarget(True, host="127.0.0.1", port=24)),
        ("lmtp:[127.0.0.1]", SmtpTarget(True, host="127.0.0.1", port=24)),
        ("lmtp:unix:/run/dovecot/lmtp", SmtpTarget(True, path="/run/dovecot/lmtp")),
    ],
)
def test_accepted_forms(method: str, target: SmtpTarget) -> None:
    assert parse_forward_method(method) == target


def test_describe_is_canonical() -> None:
    assert parse_forward_method("smtp:localhost:2525").describe() == "smtp:[localhost]:2525"
    assert parse_forward_method("lmtp:unix:/s").describe() == "lmtp:unix:/s"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("pipe:/bin/cat", "expected smtp:"),
        ("lmtp:unix:relative", "absolute"),
        ("smtp:[127.0.0.1", r"expected \[host\]:port"),
        ("smtp:[127.0.0.1]25", r"expected \[host\]:port"),
        ("smtp:[]:25", "no host"),
        ("smtp::25", "no host"),
        ("smtp:[127.0.0.1]:0", "bad port"),
        ("smtp:[127.0.0.1]:65536", "bad port"),
        ("smtp:[127.0.0.1]:x", "bad port"),
    ],
)
def test_refused_forms(method: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_forward_method(method)
