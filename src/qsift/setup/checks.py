"""Checks on `qsift setup` options that every target shares: paths and account names."""

from __future__ import annotations

import re

from qsift.errors import ConfigError

# useradd's own rule (shadow-utils' is_valid_user_name, with its default strictness).
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]*\$?\Z", re.IGNORECASE)


def absolute_path(flag: str, path: str) -> str:
    """`path` itself, if it is absolute and one line: run scripts and units start from another directory."""
    if not path.startswith("/"):
        raise ConfigError(f"{flag} must be an absolute path, not {path!r}")
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        raise ConfigError(f"{flag} must not contain control characters: {path!r}")
    return path


def account_name(flag: str, name: str) -> str:
    if not _ACCOUNT.match(name) or len(name) > 32:
        raise ConfigError(f"{flag} must be an account name, not {name!r}")
    return name
