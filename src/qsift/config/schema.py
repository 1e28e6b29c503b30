"""A configuration schema and the checks it makes: tables, keys, their types, defaults and meaning.

config.py and the parsers it calls build the typed objects and stop at the first error, which is what a
starting daemon needs. A schema is for people and tools: `validate` reports every problem a file's keys
show by themselves, at once, each with its key path; config/tables.py describes qsift's own file with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Path = tuple[str | int, ...]
#: A check on one value: the problem with it, or None.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False
    check: Check | None = None
    #: What an unset key with no default of its own means, for the reference.
    unset: str = "(none)"

    @property
    def default_text(self) -> str:
        """The default as the reference shows it."""
        if self.required:
            return "(required)"
        if self.default is None:
            return self.unset
        return toml_text(self.default)


@dataclass(frozen=True)
class Table:
    """A `[table]`; with `array`, a `[[table]]` that may repeat; with `named`, `[table.NAME]` tables."""

    name: str
    doc: str
    keys: tuple[Key, ...] = ()
    tables: tuple[Table, ...] = ()
    array: bool = False
    named: bool = False
    #: Rules over several keys (which keys a scanner type takes): (path in this table, problem) pairs.
    rules: Callable[[Mapping[str, Any]], Iterable[tuple[Path, str]]] | None = None

    def key(self, name: str) -> Key | None:
        return next((key for key in self.keys if key.name == name), None)

    def table(self, name: str) -> Table | None:
        return next((table for table in self.tables if table.name == name), None)

    def child(self, name: str) -> Table:
        """A table the schema is known to have."""
        found = self.table(name)
        if found is None:
            raise KeyError(name)
        return found

    @property
    def names(self) -> list[str]:
        return sorted([key.name for key in self.keys] + [table.name for table in self.tables])


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{describe(self.path)}: {self.message}"


def validate(schema: Table, raw: Mapping[str, Any]) -> list[Problem]:
    """Every problem in a parsed configuration file that one key (or one table's rules) shows by itself."""
    problems: list[Problem] = []
    _check_table(schema, raw, (), problems)
    return problems


def describe(path: Path) -> str:
    """A key path as the file writes it: `[limits] message_size`, `[[listen]] #2 address`."""
    *table, key = path
    if not table:
        return str(key)
    if isinstance(key, int) and not any(isinstance(part, int) for part in table):
        return f"[[{'.'.join(map(str, table))}]] #{key + 1}"  # the array element itself
    last_index = max((i for i, part in enumerate(table) if isinstance(part, int)), default=-1)
    if last_index < 0:
        return f"[{'.'.join(map(str, table))}] {key}"
    head = ".".join(str(part) for part in table[:last_index] if not isinstance(part, int))
    rest = ".".join(map(str, [*table[last_index + 1 :], key]))
    return f"[[{head}]] #{table[last_index] + 1} {rest}"  # type: ignore[operator]


# --- checking ------------------------------------------------------------------------------------------


def _check_table(table: Table, raw: object, path: Path, problems: list[Problem]) -> None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, "must be a table"))
        return
    for name, value in raw.items():
        here = (*path, name)
        key, sub = table.key(name), table.table(name)
        if sub is not None:
            _check_sub_table(sub, value, here, problems)
        elif key is not None:
            message = _check_value(key, value)
            if message:
                problems.append(Problem(here, message))
        else:
            problems.append(Problem(here, f"unknown key (allowed: {', '.join(table.names)})"))
    for key in table.keys:
        if key.required and key.name not in raw:
            problems.append(Problem((*path, key.name), "is required"))
    if table.rules is not None:
        problems.extend(Problem((*path, *where), message) for where, message in table.rules(raw))


def _check_sub_table(table: Table, value: object, path: Path, problems: list[Problem]) -> None:
    if table.array:
        if not isinstance(value, list):
            problems.append(Problem(path, f"must be one or more [[{table.name}]] tables"))
            return
        for index, element in enumerate(value):
            _check_table(table, element, (*path, index), problems)
    elif table.named:
        if not isinstance(value, Mapping):
            problems.append(Problem(path, f"must be tables named [{table.name}.NAME]"))
            return
        for name, element in value.items():
            _check_table(table, element, (*path, name), problems)
    else:
        _check_table(table, value, path, problems)


def _check_value(key: Key, value: object) -> str | None:
    expected = KINDS[key.kind]
    if not expected.accepts(value):
        return f"must be {expected.text}, not {toml_text(value)}"
    if key.choices and value not in key.choices:
        return f"must be one of {', '.join(key.choices)}, not {toml_text(value)}"
    if key.check is not None:
        return key.check(value)
    return None


@dataclass(frozen=True)
class Kind:
    text: str
    accepts: Callable[[object], bool]


def whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


KINDS = {
    "string": Kind("a string", lambda v: isinstance(v, str)),
    "boolean": Kind("true or false", lambda v: isinstance(v, bool)),
    "integer": Kind("a whole number >= 0", lambda v: whole(v) and v >= 0),  # type: ignore[operator]
    "seconds": Kind("a number of seconds > 0", lambda v: number(v) and v > 0),  # type: ignore[operator]
    "count": Kind("a whole number >= 1", lambda v: whole(v) and v >= 1),  # type: ignore[operator]
    "level": Kind("a score (a number)", number),
    "strings": Kind(
        "a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)
    ),
    "codes or regex": Kind(
        "a list of exit codes or a regex (a string)",
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(whole(c) for c in v)),
    ),
}


def toml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    return str(value)
