"""tcprules(1) rule lines: `address:allow,VAR="value",...`, quoted the way tcprules reads them.

tcprules takes the character after `VAR=` as the delimiter and the value as everything up to its next
occurrence (ucspi-tcp's tcprules.c), so a value may hold commas and spaces but not its own delimiter.
`"` is the usual one; another is chosen for a value that contains `"`. A newline ends the rule and a
NUL separates the cdb's variables: neither can be carried at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from qsift.errors import ConfigError

_DELIMITERS = "\"'|%^~+@"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def quoted(value: str) -> str:
    """`value` between the first delimiter it does not contain."""
    if "\n" in value or "\0" in value:
        raise ConfigError(f"a tcprules value cannot hold a newline or NUL: {value!r}")
    for delimiter in _DELIMITERS:
        if delimiter not in value:
            return f"{delimiter}{value}{delimiter}"
    raise ConfigError(f"no tcprules delimiter is free for {value!r} (it contains all of {_DELIMITERS})")


def rule(address: str, variables: Sequence[tuple[str, str]], *, allow: bool = True) -> str:
    """One rule line; `address` as tcprules writes it (`127.`, `10.1.2.3`, `` for the default rule)."""
    if any(char.isspace() for char in address) or address.startswith("#"):
        raise ConfigError(f"not a tcprules address: {address!r}")
    parts = [f"{address}:{'allow' if allow else 'deny'}"]
    for name, value in variables:
        if not _NAME.match(name):
            raise ConfigError(f"not an environment variable name: {name!r}")
        parts.append(f"{name}={quoted(value)}")
    return ",".join(parts)
