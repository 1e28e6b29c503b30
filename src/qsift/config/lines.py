"""Where each key of a TOML document is written, so configuration errors can name a line.

tomllib returns plain dicts and lists without positions, so `qsift config check` could only name the
key of a bad setting. key_lines() scans the same text a second time and maps every key path it finds
to the 1-based line it is written on. Paths are the ones tomllib's result is indexed by: table names
and keys as strings, array elements (`[[listen]]` tables included) as 0-based indexes. line_of() falls
back to the nearest ancestor for a path that is not written out (a default, a table a header implies).

It is a scanner, not a validator: it trusts tomllib to have rejected invalid TOML, and on text it
cannot make sense of it returns what it found instead of raising.
"""

import re
from bisect import bisect_left
from collections.abc import Mapping
from typing import TypeAlias

Path: TypeAlias = tuple[str | int, ...]

_SPACE = " \t\r"  # \r: so CRLF files scan like LF ones; lines are counted by \n alone
_BLANK = _SPACE + "\n"
# One-line basic and literal strings; group 1 still holds the escapes.
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\'([^\'\n]*)\'')
_KEY_PART = re.compile(rf"([A-Za-z0-9_-]+)|{_STRING.pattern}")
# A multi-line string after its opening quotes, through the closing ones: the content may hold one or
# two quotes in a row, and up to two more may sit just before the closing three (`"""a""""` is 'a"').
_MULTILINE_END = {
    '"""': re.compile(r'(?:[^"\\]|\\.|""?(?!"))*"{3,5}', re.DOTALL),
    "'''": re.compile(r"(?:[^']|''?(?!'))*'{3,5}"),
}
# Where numbers, booleans and dates end; a date may hold a space (`1979-05-27 07:32:00`).
_BARE_VALUE_END = re.compile(r"[,\]}#\n]")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}
# Far deeper than any configuration nests; past it the scan stops rather than recurse without bound.
_MAX_DEPTH = 64


def key_lines(text: str) -> dict[Path, int]:
    """Map each key path written in `text` to its 1-based line; intermediate tables get their first line.

    A header `[a.b]` gives ("a", "b"), the n-th `[[a]]` gives ("a", n - 1), `k = v` under it adds
    ("k",), a dotted key its parts, and the keys of inline tables and the elements of arrays are
    registered too (("k", 0, "a") for `k = [{ a = 1 }]`).
    """
    scanner = _Scanner(text)
    scanner.document()
    return scanner.found


def line_of(lines: Mapping[Path, int], path: Path) -> int | None:
    """The line of `path`, else of its nearest ancestor that has one, else None."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def _unescape(escaped: str) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) == 1:
            return _ESCAPES.get(code, match.group(0))
        point = int(code[1:], 16)
        return chr(point) if point <= 0x10FFFF else match.group(0)

    return _ESCAPE.sub(replace, escaped)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.found: dict[Path, int] = {}
        # How many elements the `[[...]]` headers have opened so far, per array (resolved) path.
        self.arrays: dict[Path, int] = {}
        self.newlines = [match.start() for match in re.finditer("\n", text)]

    def line(self) -> int:
        return bisect_left(self.newlines, self.pos) + 1

    def at(self, prefix: str) -> bool:
        return self.text.startswith(prefix, self.pos)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def skip_blank(self) -> None:
        """Skip spaces, line ends and comments: what may separate the items of a document or array."""
        while self.pos < len(self.text):
            if self.text[self.pos] in _BLANK:
                self.pos += 1
            elif self.at("#"):
                self.skip_line()
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def register(self, path: Path, line: int) -> None:
        for end in range(1, len(path)):
            self.found.setdefault(path[:end], line)
        self.found[path] = line

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            if self.at("["):
                table = self.header() or table
            else:
                self.key_value(table, 0)
            # A comment, or whatever invalid text follows an item: nothing more starts on this line.
            self.skip_line()

    def header(self) -> Path | None:
        line = self.line()
        array = self.at("[[")
        self.pos += 2 if array else 1
        self.skip_space()
        parts = self.key()
        self.skip_space()
        close = "]]" if array else "]"
        if parts is None or not self.at(close):
            return None
        self.pos += len(close)
        # `[[fruits.varieties]]` and `[fruits.physical]` name the last `[[fruits]]` element opened.
        path: Path = ()
        for part in parts[:-1]:
            path += (part,)
            if path in self.arrays:
                path += (self.arrays[path] - 1,)
        path += (parts[-1],)
        if array:
            index = self.arrays.get(path, 0)
            self.arrays[path] = index + 1
            path += (index,)
        self.register(path, line)
        return path

    def key(self) -> list[str] | None:
        """A dotted key's parts, or None if no key starts here."""
        parts: list[str] = []
        while True:
            self.skip_space()
            match = _KEY_PART.match(self.text, self.pos)
            if match is None:
                return None
            self.pos = match.end()
            bare, basic, literal = match.groups()
            if basic is not None:
                parts.append(_unescape(basic))
            else:
                parts.append(bare if bare is not None else literal)
            self.skip_space()
            if not self.at("."):
                return parts
            self.pos += 1

    def key_value(self, table: Path, depth: int) -> None:
        line = self.line()
        parts = self.key()
        if parts is None or not self.at("="):
            return
        self.pos += 1
        path = table + tuple(parts)
        self.register(path, line)
        self.skip_space()
        self.value(path, depth)

    def value(self, path: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.pos = len(self.text)
        elif self.at('"""') or self.at("'''"):
            end = _MULTILINE_END[self.text[self.pos : self.pos + 3]].match(self.text, self.pos + 3)
            self.pos = end.end() if end else len(self.text)
        elif self.at('"') or self.at("'"):
            string = _STRING.match(self.text, self.pos)
            if string:
                self.pos = string.end()
            else:
                self.skip_line()
        elif self.at("{"):
            self.items(path, depth + 1, "}")
        elif self.at("["):
            self.items(path, depth + 1, "]")
        else:
            end = _BARE_VALUE_END.search(self.text, self.pos)
            self.pos = end.start() if end else len(self.text)

    def items(self, path: Path, depth: int, close: str) -> None:
        """The `key = value` pairs of an inline table, or (close "]") the elements of an array."""
        self.pos += 1
        index = 0
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            if self.at(close):
                self.pos += 1
                return
            start = self.pos
            if self.at(","):
                self.pos += 1
            elif close == "}":
                self.key_value(path, depth)
            else:
                element = (*path, index)
                self.register(element, self.line())
                self.value(element, depth)
                index += 1
            if self.pos == start:
                # Invalid text (a stray `}` in an array, `=` with no key) would not move the scan on.
                self.pos += 1
