"""How a configuration setting is declared: once, on the frozen dataclass that uses it.

A field says its default in the file's own syntax, its documentation, the kind of TOML value it takes and,
for the few compound values (addresses, networks, regexes, lookup tables), the one function that parses
it. config/convert.py builds any section from its TOML table by these declarations and collects every
problem with its key path; config/reference.py and config/effective.py write the reference and the
configuration in effect from the same declarations. Nothing else describes a key.

    @dataclass(frozen=True)
    class Forward:
        method: str = setting("smtp:[127.0.0.1]:10025", "Where clean mail goes.", check=forward_method)
        connect_timeout: float = setting(10.0, "Seconds to wait for the greeting.")

A parse or check function raises ValueError with what is wrong (ConfigError is one); the converter puts
the key's path in front.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    """What TOML value a key takes, as the reference and the error messages say it."""

    text: str
    name: str
    accepts: Callable[[Any], bool]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


STRING = Kind("a string", "string", lambda v: isinstance(v, str))
BOOLEAN = Kind("true or false", "boolean", lambda v: isinstance(v, bool))
INTEGER = Kind("a whole number >= 0", "integer", lambda v: _whole(v) and v >= 0)
COUNT = Kind("a whole number >= 1", "count", lambda v: _whole(v) and v >= 1)
SECONDS = Kind("a number of seconds > 0", "seconds", lambda v: _number(v) and v > 0)
LEVEL = Kind("a score (a number)", "level", _number)
STRINGS = Kind(
    "a list of strings", "strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)
)
CODES_OR_REGEX = Kind(
    "a list of exit codes or a regex (a string)",
    "codes or regex",
    lambda v: isinstance(v, str) or (isinstance(v, list) and all(_whole(c) for c in v)),
)


class Shape:
    """How a field sits in the file: a key, a table, an array of tables, named tables, or the keys of
    another section written in this table (`flat`; over the enclosing section of that type, if any)."""

    KEY, TABLE, ARRAY, NAMED, FLAT, OVERLAY = "key", "table", "array", "named", "flat", "overlay"


_REQUIRED: Any = object()
META = "qsift.setting"


@dataclass(frozen=True)
class Setting:
    doc: str
    shape: str = Shape.KEY
    #: The default as the file would write it (None: unset; a list for an array of tables).
    default: Any = None
    required: bool = False
    kind: Kind | None = None
    choices: tuple[str, ...] = ()
    #: The TOML value to the field's value; raises ValueError with what is wrong.
    parse: Callable[[Any], Any] | None = None
    #: A problem with a value of the right kind, or None.
    check: Callable[[Any], str | None] | None = None
    #: What an unset key with no default means, for the reference.
    unset: str = "(none)"
    #: The section class of a table, an array, named tables, a flat section or an overlay.
    section: type | None = None

    @property
    def table(self) -> type:
        """The section class of anything but a key."""
        assert self.section is not None, "a key has no section"
        return self.section

    def value(self, written: Any) -> Any:
        """The field's value for a TOML value that passed the checks."""
        if self.parse is not None:
            return self.parse(written)
        return tuple(written) if isinstance(written, list) else written


def setting(
    default: Any = _REQUIRED,
    doc: str = "",
    *,
    kind: Kind | None = None,
    choices: tuple[str, ...] = (),
    parse: Callable[[Any], Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    unset: str = "(none)",
) -> Any:
    """A key. `default` is written as the file would write it; the kind follows from it unless given."""
    required = default is _REQUIRED
    known = None if required else default
    kind = kind or _kind_of(known)
    if parse is None and kind in (SECONDS, LEVEL):
        parse = float  # a TOML integer is a number of seconds or a score too
    made = Setting(doc, Shape.KEY, known, required, kind, choices, parse, check, unset)
    if required:
        return field(metadata={META: made})
    # None (unset) and "" (none) are kept as they are: a parser need not take them.
    return field(default=known if known in (None, "") else made.value(known), metadata={META: made})


def section(kind: type, doc: str, *, flat: bool = False) -> Any:
    """A `[table]` of its own, or with `flat` the section's keys written in this table."""
    made = Setting(doc, Shape.FLAT if flat else Shape.TABLE, section=kind)
    return field(default_factory=kind, metadata={META: made})


def tables(kind: type, doc: str, *, default: tuple[Mapping[str, Any], ...] = ()) -> Any:
    """A `[[table]]` that may repeat; `default` (as written) is built like written tables when absent."""
    made = Setting(doc, Shape.ARRAY, default=default, section=kind)
    return field(default=(), metadata={META: made})


def named(kind: type, doc: str) -> Any:
    """`[table.NAME]` tables, by name."""
    made = Setting(doc, Shape.NAMED, section=kind)
    return field(default_factory=dict, metadata={META: made})


def overlay(kind: type, doc: str) -> Any:
    """Some keys of a section, each optional, laid over a base later: the values set, by field name."""
    made = Setting(doc, Shape.OVERLAY, section=kind, unset="(the base policy's)")
    return field(default_factory=dict, metadata={META: made})


def pattern(flags: int = 0) -> Callable[[str], re.Pattern[str]]:
    """The parse function of a regex key."""

    def compiled(value: str) -> re.Pattern[str]:
        try:
            return re.compile(value, flags)
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None

    return compiled


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The parse function of a key where "" means none: "" is kept, anything else parsed."""
    return lambda text: parse(text) if text else text


def declared(kind: type) -> list[tuple[str, Setting]]:
    """The declared fields of a section, in order."""
    return [(f.name, f.metadata[META]) for f in dataclasses.fields(kind) if META in f.metadata]


def laid_over(base: Any, values: Mapping[str, Any]) -> Any:
    """A section with an overlay's values in place of its own."""
    return dataclasses.replace(base, **values) if values else base


def _kind_of(default: object) -> Kind:
    if isinstance(default, bool):
        return BOOLEAN
    if isinstance(default, int):
        return INTEGER
    if isinstance(default, float):
        return SECONDS
    if isinstance(default, list):
        return STRINGS
    return STRING
