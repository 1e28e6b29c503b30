"""The configuration in effect: the file's values over every default, written back as TOML.

`qsift config check` prints it so a postmaster sees what qsift will do, not only what the file says;
it reads back as a configuration that means the same thing (a test holds it to that).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from qsift.checks.scanner_config import SCANNER_KEYS
from qsift.config import Config
from qsift.config.convert import key_names
from qsift.declare import Shape, declared
from qsift.policy.bank import ORIGINATING


def effective(raw: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """`raw` (the parsed file, already valid) with the defaults filled in, as a TOML-shaped mapping."""
    values = _filled(Config, raw, {})
    values["myhostname"] = config.myhostname
    values["workers"] = config.worker_count
    values["quarantine"]["dir"] = config.quarantine_dir
    values["notify"]["method"] = config.notify_forward.method
    values["auth"]["authserv_id"] = config.authserv_id
    for listener in values["listen"]:
        if listener["protocol"] == "qmqp":
            del listener["xforward_hosts"]
    virus = values["virus"]
    for name in ("scanners", "backup_scanners"):
        virus[name] = [{k: v for k, v in t.items() if k in SCANNER_KEYS[t["type"]]} for t in virus[name]]
    if not raw.get("spam"):
        del values["spam"]  # no spam scanner: its levels never apply
    values["policy_bank"].setdefault(
        ORIGINATING, {"relay_client": True, "authenticated": True, "originating": True}
    )
    return values


def dumps(table: Mapping[str, Any]) -> str:
    """TOML for a mapping of strings, numbers, booleans, lists, tables and arrays of tables."""
    return "\n".join(_table_lines(table, ())).lstrip("\n") + "\n"


def _filled(kind: type, raw: Mapping[str, Any], enclosing: dict[type, dict[str, Any]]) -> dict[str, Any]:
    """The keys a table writes, and every other key of its section with its default; a flat section's
    over the enclosing section of its type, as the converter lays them (a listener's limits)."""
    values: dict[str, Any] = {}
    for name, spec in declared(kind):
        given = raw.get(name)
        if spec.shape == Shape.KEY:
            if (value := given if given is not None else spec.default) is not None:
                values[name] = value
            continue
        sub = spec.table
        if spec.shape == Shape.FLAT:
            values.update(enclosing.get(sub) or _filled(sub, {}, enclosing))
            values.update({key: value for key, value in raw.items() if key in key_names(sub)})
        elif spec.shape == Shape.TABLE:
            values[name] = enclosing[sub] = _filled(sub, given or {}, enclosing)
        elif spec.shape == Shape.ARRAY:
            written = given if given is not None else list(spec.default)
            values[name] = [_filled(sub, table, enclosing) for table in written]
        else:  # named tables and overlays: as written
            values[name] = dict(given or {})
    return values


def _table_lines(table: Mapping[str, Any], path: tuple[str, ...]) -> list[str]:
    lines = [f"{_key(name)} = {_value(value)}" for name, value in table.items() if not _nested(value)]
    for name, value in table.items():
        here = (*path, name)
        if isinstance(value, Mapping):
            lines += ["", f"[{'.'.join(map(_key, here))}]", *_table_lines(value, here)]
        elif _nested(value):
            for element in value:
                lines += ["", f"[[{'.'.join(map(_key, here))}]]", *_table_lines(element, here)]
    return lines


def _nested(value: object) -> bool:
    """A table or an array of tables: written under a header of its own."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML's basic-string escapes
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")
