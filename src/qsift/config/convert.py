"""The one converter: any declared section (qsift/declare.py) from its TOML table, every problem at once.

A problem is kept with its key path, as tomllib's result is indexed (`("listen", 1, "address")`), so
`qsift config check` can name its line (config/lines.py) and a starting daemon can say all that is wrong
in one message. A table with a problem is not built; its siblings still are, so theirs are found too.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from qsift.declare import Setting, Shape, declared, laid_over
from qsift.errors import ConfigError

Path = tuple[str | int, ...]
T = TypeVar("T")


class Rules(Protocol):
    """What a section's keys must say together: `config_rules(values, written)` on its class, given the
    values that were built (defaults included) and the keys the file wrote, yields (path, problem)."""

    def __call__(self, values: Mapping[str, Any], written: Collection[str]) -> Iterable[tuple[Path, str]]: ...


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{describe(self.path)}: {self.message}"


def convert(kind: type[T], raw: Mapping[str, Any]) -> tuple[T | None, list[Problem]]:
    """The section `kind` built from `raw`, or None and every problem found."""
    builder = _Builder()
    built = builder.table(kind, raw, (), partial=False)
    return (None if builder.problems else built), builder.problems


def key_names(kind: type) -> list[str]:
    """The keys a table of this section may hold, sorted: its own and those of its flat sections."""
    names: list[str] = []
    for name, spec in declared(kind):
        if spec.shape == Shape.FLAT:
            names += key_names(spec.table)
        else:
            names.append(name)
    return sorted(names)


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


def toml_text(value: object) -> str:
    """A value as the file would write it, for messages and the reference."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    return str(value)


_FAILED: Any = object()
_ABSENT: Any = object()


class _Builder:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # The sections built so far by type: a flat section is laid over the enclosing one (a listener's
        # limits over `[limits]`), which is declared, and so built, before it.
        self.enclosing: dict[type, Any] = {}

    def problem(self, path: Path, message: str) -> Any:
        self.problems.append(Problem(path, message))
        return _FAILED

    def table(self, kind: type, raw: object, path: Path, *, partial: bool) -> Any:
        """The section, or with `partial` the values the table sets (an overlay)."""
        if not isinstance(raw, Mapping):
            return self.problem(path, "must be a table")
        before = len(self.problems)
        allowed = key_names(kind)
        for name in raw:
            if name not in allowed:
                self.problem((*path, name), f"unknown key (allowed: {', '.join(allowed)})")
        values: dict[str, Any] = {}
        for name, spec in declared(kind):
            value = self.field(name, spec, raw, path, partial=partial)
            if value is not _ABSENT and value is not _FAILED:
                values[name] = value
        rules: Rules | None = getattr(kind, "config_rules", None)
        for where, message in rules(values, raw.keys()) if rules else ():
            self.problem((*path, *where), message)
        if len(self.problems) > before:
            return _FAILED
        return values if partial else kind(**values)

    def field(self, name: str, spec: Setting, raw: Mapping[str, Any], path: Path, *, partial: bool) -> Any:
        here = (*path, name)
        if spec.shape == Shape.FLAT:
            sub = spec.table
            written = {key: value for key, value in raw.items() if key in key_names(sub)}
            values = self.table(sub, written, path, partial=True)
            return values if values is _FAILED else laid_over(self.enclosing.get(sub, sub()), values)
        if name not in raw:
            if spec.required:
                return self.problem(here, "is required")
            if spec.shape == Shape.ARRAY and spec.default and not partial:
                return self.array(spec, list(spec.default), here)
            if spec.shape == Shape.TABLE:
                self.enclosing[spec.table] = spec.table()
            return _ABSENT
        value = raw[name]
        if spec.shape == Shape.KEY:
            return self.key(spec, value, here)
        if spec.shape == Shape.ARRAY:
            return self.array(spec, value, here)
        sub = spec.table
        if spec.shape == Shape.NAMED:
            if not isinstance(value, Mapping):
                return self.problem(here, f"must be tables named [{_dotted(here)}.NAME]")
            built = {n: self.table(sub, t, (*here, n), partial=False) for n, t in value.items()}
            return _FAILED if _FAILED in built.values() else built
        table = self.table(sub, value, here, partial=spec.shape == Shape.OVERLAY)
        if spec.shape == Shape.TABLE and table is not _FAILED:
            self.enclosing[sub] = table
        return table

    def array(self, spec: Setting, value: object, path: Path) -> Any:
        if not isinstance(value, list):
            return self.problem(path, f"must be one or more [[{_dotted(path)}]] tables")
        built = tuple(self.table(spec.table, t, (*path, i), partial=False) for i, t in enumerate(value))
        return _FAILED if _FAILED in built else built

    def key(self, spec: Setting, value: object, path: Path) -> Any:
        assert spec.kind is not None
        if not spec.kind.accepts(value):
            return self.problem(path, f"must be {spec.kind.text}, not {toml_text(value)}")
        if spec.choices and value not in spec.choices:
            return self.problem(path, f"must be one of {', '.join(spec.choices)}, not {toml_text(value)}")
        problem = spec.check(value) if spec.check is not None else None
        if problem:
            return self.problem(path, problem)
        try:
            return spec.value(value)
        except (ValueError, re.error, ConfigError) as exc:
            return self.problem(path, str(exc))


def _dotted(path: Path) -> str:
    return ".".join(str(part) for part in path if isinstance(part, str))
