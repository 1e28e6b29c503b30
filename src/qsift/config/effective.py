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
from qsift.config import DEFAULT_LISTENERS, Config
from qsift.config.schema import Table
from qsift.config.tables import ROOT
from qsift.policy.bank import ORIGINATING


def effective(raw: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """`raw` (the parsed file, already valid) with the defaults filled in, as a TOML-shaped mapping."""
    values = _filled(ROOT, raw)
    values["myhostname"] = config.myhostname
    values["workers"] = config.worker_count
    values["quarantine"]["dir"] = config.quarantine_dir
    values["notify"]["method"] = config.notify.method
    limits = values["limits"]
    values["listen"] = [_listener(table, limits) for table in raw.get("listen", DEFAULT_LISTENERS)]
    virus = values["virus"]
    for name in ("scanners", "backup_scanners"):
        virus[name] = [_scanner(ROOT.child("virus").child(name), table) for table in virus[name]]
    if not raw.get("spam"):
        del values["spam"]  # no spam scanner: its levels never apply
    banks = dict(raw.get("policy_bank", {}))
    banks.setdefault(ORIGINATING, {"relay_client": True, "authenticated": True, "originating": True})
    values["policy_bank"] = banks
    return values


def dumps(table: Mapping[str, Any]) -> str:
    """TOML for a mapping of strings, numbers, booleans, lists, tables and arrays of tables."""
    return "\n".join(_table_lines(table, ())).lstrip("\n") + "\n"


def _filled(schema: Table, raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in schema.keys:
        value = raw.get(key.name, key.default)
        if value is not None:
            values[key.name] = value
    for sub in schema.tables:
        given = raw.get(sub.name)
        if sub.array or sub.named:
            values[sub.name] = given if given is not None else ([] if sub.array else {})
        else:
            values[sub.name] = _filled(sub, given or {})
    return values


def _listener(raw: Mapping[str, Any], limits: Mapping[str, Any]) -> dict[str, Any]:
    values = _filled(ROOT.child("listen"), raw)
    values.update({name: value for name, value in limits.items() if name not in values})
    values.setdefault("xforward_hosts", [])
    if values["protocol"] == "qmqp":
        del values["xforward_hosts"]
    return values


def _scanner(schema: Table, raw: Mapping[str, Any]) -> dict[str, Any]:
    allowed = SCANNER_KEYS[raw["type"]]
    return {name: value for name, value in _filled(schema, raw).items() if name in allowed}


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
