from __future__ import annotations

import datetime
import random
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.config.lines import Path, key_lines, line_of

ROOT = FilePath(__file__).resolve().parents[2]


def test_table_headers_and_their_keys() -> None:
    text = 'top = 1\n\n[forward]\nmethod = "smtp:[127.0.0.1]:10025"\n[limits.size]\nmax = 3\n'
    assert key_lines(text) == {
        ("top",): 1,
        ("forward",): 3,
        ("forward", "method"): 4,
        ("limits",): 5,
        ("limits", "size"): 5,
        ("limits", "size", "max"): 6,
    }


def test_a_later_header_claims_a_table_an_earlier_one_implied() -> None:
    assert key_lines("[a.b]\n[a]\n") == {("a",): 2, ("a", "b"): 1}


def test_array_tables_count_per_path() -> None:
    text = """\
[[listen]]
protocol = "qmqp"
[[virus.scanners]]
type = "clamd"
[[listen]]
protocol = "smtp"
"""
    lines = key_lines(text)
    assert lines[("listen",)] == 1
    assert lines[("listen", 0)] == 1
    assert lines[("listen", 0, "protocol")] == 2
    assert lines[("virus", "scanners", 0)] == 3
    assert lines[("virus", "scanners", 0, "type")] == 4
    assert lines[("listen", 1)] == 5
    assert lines[("listen", 1, "protocol")] == 6


def test_nested_array_tables_index_within_their_element() -> None:
    text = """\
[[fruit]]
name = "apple"
[fruit.physical]
color = "red"
[[fruit.variety]]
name = "red delicious"
[[fruit.variety]]
name = "granny smith"
[[fruit]]
name = "banana"
[[fruit.variety]]
name = "plantain"
"""
    lines = key_lines(text)
    assert lines[("fruit", 0, "physical", "color")] == 4
    assert lines[("fruit", 0, "variety", 0, "name")] == 6
    assert lines[("fruit", 0, "variety", 1, "name")] == 8
    assert lines[("fruit", 1, "name")] == 10
    assert lines[("fruit", 1, "variety", 0)] == 11
    assert lines[("fruit", 1, "variety", 0, "name")] == 12
    assert set(lines) == set(_nodes(tomllib.loads(text)))


def test_array_tables_under_a_named_table() -> None:
    text = """\
[policy_bank.X]
destiny = { spam = "bounce" }
[[policy_bank.X.policy.recipient]]
match = ["a@example.com"]
[[policy_bank.Y.policy.recipient]]
match = ["b@example.com"]
[[policy_bank.X.policy.recipient]]
match = ["c@example.com"]
"""
    lines = key_lines(text)
    assert lines[("policy_bank", "X", "policy", "recipient", 0, "match")] == 4
    assert lines[("policy_bank", "Y", "policy", "recipient", 0, "match")] == 6
    assert lines[("policy_bank", "X", "policy", "recipient", 1, "match", 0)] == 8
    assert set(lines) == set(_nodes(tomllib.loads(text)))


def test_dotted_keys_register_their_intermediate_tables() -> None:
    text = "a.b = 1\na.c.d = 2\n[t]\nx . y = 3\n"
    assert key_lines(text) == {
        ("a",): 1,
        ("a", "b"): 1,
        ("a", "c"): 2,
        ("a", "c", "d"): 2,
        ("t",): 3,
        ("t", "x"): 4,
        ("t", "x", "y"): 4,
    }


def test_quoted_keys_are_single_parts() -> None:
    text = r"""
"a b" = 1
'x.y' = 2
"q\"uote\\d" = 3
"tab\tand\u00e9".'lit\eral' = 4
[ "dotted.table" . 'name' ]
k = 5
"""
    assert key_lines(text) == {
        ("a b",): 2,
        ("x.y",): 3,
        ('q"uote\\d',): 4,
        ("tab\tand\u00e9",): 5,
        ("tab\tand\u00e9", "lit\\eral"): 5,
        ("dotted.table",): 6,
        ("dotted.table", "name"): 6,
        ("dotted.table", "name", "k"): 7,
    }


def test_escapes_tomllib_would_reject_are_kept_as_written() -> None:
    assert key_lines(r'"\q\U00110000\U0001F600" = 1') == {("\\q\\U00110000\U0001f600",): 1}


def test_inline_tables_register_their_keys() -> None:
    text = 'k = { a = 1, b = { c = 2 }, "d.e" = { f.g = [] } }\nnext = {}\n'
    assert key_lines(text) == {
        ("k",): 1,
        ("k", "a"): 1,
        ("k", "b"): 1,
        ("k", "b", "c"): 1,
        ("k", "d.e"): 1,
        ("k", "d.e", "f"): 1,
        ("k", "d.e", "f", "g"): 1,
        ("next",): 2,
    }


def test_an_inline_table_across_lines_gives_each_key_its_line() -> None:
    # TOML 1.0 forbids it, TOML 1.1 allows it: either way each key keeps its own line.
    assert key_lines("k = {\n  a = 1,\n  b = 2\n}\n") == {("k",): 1, ("k", "a"): 2, ("k", "b"): 3}


def test_arrays_of_inline_tables_index_their_elements() -> None:
    text = """\
scanners = [
  { type = "clamd", address = "unix:/run/clamd.ctl" },  # the main one
  { type = "command", args = ["{}", "--", { deep = true }] },
]
one_line = [ {a=1}, {a=2} ]
"""
    lines = key_lines(text)
    assert lines[("scanners",)] == 1
    assert lines[("scanners", 0)] == 2
    assert lines[("scanners", 0, "address")] == 2
    assert lines[("scanners", 1, "type")] == 3
    assert lines[("scanners", 1, "args", 2, "deep")] == 3
    assert lines[("one_line", 0, "a")] == 5
    assert lines[("one_line", 1, "a")] == 5
    assert set(lines) == set(_nodes(tomllib.loads(text)))


def test_multiline_strings_hide_what_looks_like_keys_and_headers() -> None:
    text = '''\
banner = """
[forward]
method = "x"
\\""" still = "inside"
# not a comment
"""
note = \'\'\'
[[listen]]
a = b \'\'
\'\'\'
quotes = """ends with two quotes"""""
after = 1
'''
    assert tomllib.loads(text)["quotes"] == 'ends with two quotes""'
    assert key_lines(text) == {("banner",): 1, ("note",): 7, ("quotes",): 11, ("after",): 12}


def test_multiline_arrays_with_comments_and_trailing_commas() -> None:
    text = """\
args = [
  "--stdout",  # a ] and a [x] in a comment
  "#not a comment",

  '[y]',
]
clean = [0,
1]
"""
    assert key_lines(text) == {
        ("args",): 1,
        ("args", 0): 2,
        ("args", 1): 3,
        ("args", 2): 5,
        ("clean",): 7,
        ("clean", 0): 7,
        ("clean", 1): 8,
    }


def test_comments_and_hashes_in_strings() -> None:
    text = """\
# [commented] = out
a = "x # y" # b = 2
# c = 3
[t] # [u]
d = 'e#f'#
"""
    assert key_lines(text) == {("a",): 2, ("t",): 4, ("t", "d"): 5}


def test_whitespace_around_dots_and_brackets() -> None:
    text = "[ a . b ]\nk=1\n[[ listen ]]\n\t x\t.\ty   =   2\n[[listen]]\n"
    assert key_lines(text) == {
        ("a",): 1,
        ("a", "b"): 1,
        ("a", "b", "k"): 2,
        ("listen",): 3,
        ("listen", 0): 3,
        ("listen", 0, "x"): 4,
        ("listen", 0, "x", "y"): 4,
        ("listen", 1): 5,
    }


def test_crlf_line_endings() -> None:
    text = '[[listen]]\r\nprotocol = "qmqp"\r\nacl = [\r\n  "::1",\r\n]\r\nbanner = """\r\n[x]\r\n"""\r\n'
    assert key_lines(text) == {
        ("listen",): 1,
        ("listen", 0): 1,
        ("listen", 0, "protocol"): 2,
        ("listen", 0, "acl"): 3,
        ("listen", 0, "acl", 0): 4,
        ("listen", 0, "banner"): 6,
    }


def test_dates_numbers_and_booleans() -> None:
    text = "d = 1979-05-27 07:32:00Z\nn = [1_000, -0.5e3, inf, true]\nt = 07:32:00\n"
    assert key_lines(text) == {
        ("d",): 1,
        ("n",): 2,
        ("n", 0): 2,
        ("n", 1): 2,
        ("n", 2): 2,
        ("n", 3): 2,
        ("t",): 3,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("[unclosed\nk = 1\n", {("k",): 2}),
        ("[[]]\n[a\nk = 1", {("k",): 3}),
        ("[t]\n[also bad]\nk = 1", {("t",): 1, ("t", "k"): 3}),
        ('a = "unterminated\nb = 1', {("a",): 1, ("b",): 2}),
        ("a = '''never closed\nb = 1", {("a",): 1}),
        ("a = [1, 2\nb = 3", {("a",): 1, ("a", 0): 1, ("a", 1): 1, ("a", 2): 2}),
        ("a = { b = 1", {("a",): 1, ("a", "b"): 1}),
        ("a = [}, 1]", {("a",): 1, ("a", 0): 1, ("a", 1): 1}),
        ("a = { = 1, b = 2 }", {("a",): 1, ("a", "b"): 1}),
        ("a = {,b c = 2}", {("a",): 1, ("a", "c"): 1}),
        ("a = [\n# only a comment", {("a",): 1}),
        ("a b = 1\n= 2\n] x\nc. = 3\nd = 4 5 = 6", {("d",): 5}),
        ("\x00\xff\ufffd = 1\nk\x00 = 2", {}),
    ],
)
def test_invalid_toml_gives_what_can_be_found(text: str, expected: dict[Path, int]) -> None:
    assert key_lines(text) == expected


def test_deep_nesting_stops_the_scan_instead_of_recursing() -> None:
    lines = key_lines("a = " + "[" * 100_000 + "\nb = 1\n")
    assert lines[("a",)] == 1
    assert ("b",) not in lines
    assert key_lines("a = " + "{b = " * 100_000)[("a", "b", "b")] == 1


def test_line_of_falls_back_to_the_nearest_ancestor() -> None:
    lines = key_lines("[[listen]]\nprotocol = 'smtp'\n[limits]\n")
    assert line_of(lines, ("listen", 0, "protocol")) == 2
    assert line_of(lines, ("listen", 0, "acl", 3)) == 1
    assert line_of(lines, ("limits", "message_size")) == 3
    assert line_of(lines, ("dsn", "enabled")) is None
    assert line_of(lines, ()) is None
    assert line_of({("a",): 1, ("a", "b", "c"): 3}, ("a", "b", "d")) == 1


def _nodes(value: object, path: Path = ()) -> Iterator[Path]:
    """Every path that indexes into `value`: its tables' keys and its arrays' elements, at any depth."""
    children: list[tuple[str | int, object]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    for name, child in children:
        yield (*path, name)
        yield from _nodes(child, (*path, name))


_TOML_LIKE = st.lists(
    st.sampled_from(
        [*"[]{}\"'=.,#\\\n \ta1\x00\ud800", "[[", "]]", '"""', "'''", "\r\n", "x=", "\\u0041", "\\U00110000"]
    )
).map("".join)


@given(st.text() | _TOML_LIKE)
@settings(max_examples=500)
def test_never_raises(text: str) -> None:
    last_line = text.count("\n") + 1
    for path, line in key_lines(text).items():
        assert path
        assert 1 <= line <= last_line


# A tiny TOML writer that picks at random among the ways TOML allows writing the same document, so the
# scanner meets headers, dotted keys, inline tables, one- and multi-line arrays and strings.

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COMMENT = "  # [not.a] = table, x = 1"


def _basic(text: str, newlines: str = "") -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in newlines:
            return char
        if char in '"\\':
            return "\\" + char
        return f"\\u{ord(char):04x}"

    return re.sub(r'["\\\x00-\x08\x0a-\x1f\x7f]', escape, text)


def _key(name: str, rnd: random.Random) -> str:
    if _BARE.fullmatch(name) and rnd.random() < 0.7:
        return name
    if "'" not in name and not _CONTROL.search(name) and rnd.random() < 0.5:
        return f"'{name}'"
    return f'"{_basic(name)}"'


def _dotted(keys: list[str], rnd: random.Random) -> str:
    return rnd.choice([".", " . ", "\t.  "]).join(keys)


def _string(text: str, rnd: random.Random) -> str:
    style = rnd.randrange(4)
    plain = not _CONTROL.search(text.replace("\n", ""))
    if style == 1 and "'" not in text and not _CONTROL.search(text):
        return f"'{text}'"
    # The newline after the opening quotes is dropped by TOML, so one that starts `text` survives.
    if style == 2 and plain and "'''" not in text:
        return f"'''\n{text}'''"
    if style == 3:
        return f'"""\n{_basic(text, newlines=chr(10))}"""'
    return f'"{_basic(text)}"'


def _inline(value: object, rnd: random.Random) -> str:
    if isinstance(value, str):
        return _string(value, rnd)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=rnd.choice("T "))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        items = [_inline(item, rnd) for item in value]
        if rnd.random() < 0.5:
            return "[" + ", ".join(items) + "]"
        return "[\n" + "".join(f"  {item},{_COMMENT}\n" for item in items) + "]"
    assert isinstance(value, dict)
    pairs = [f"{_key(name, rnd)} = {_inline(item, rnd)}" for name, item in value.items()]
    return "{ " + ", ".join(pairs) + " }"


def _pair(keys: list[str], value: object, rnd: random.Random) -> str:
    comment = _COMMENT if rnd.random() < 0.2 else ""
    return f"{_dotted(keys, rnd)}{rnd.choice([' = ', '=', '  =  '])}{_inline(value, rnd)}{comment}"


def _dotted_pairs(keys: list[str], table: dict[str, Any], rnd: random.Random) -> Iterator[str]:
    for name, value in table.items():
        path = [*keys, _key(name, rnd)]
        if isinstance(value, dict) and value and rnd.random() < 0.5:
            yield from _dotted_pairs(path, value, rnd)
        else:
            yield _pair(path, value, rnd)


def _table(header: list[str], table: dict[str, Any], rnd: random.Random) -> Iterator[str]:
    """The body of `table` and then its sub-tables, those written with headers after its own keys."""
    later: list[tuple[list[str], dict[str, Any], bool]] = []
    for name, value in table.items():
        path = [*header, _key(name, rnd)]
        if isinstance(value, dict) and rnd.random() < 0.5:
            later.append((path, value, False))
        elif (
            value
            and isinstance(value, list)
            and all(isinstance(item, dict) for item in value)
            and rnd.random() < 0.7
        ):
            later.extend((path, item, True) for item in value)
        elif isinstance(value, dict) and value and rnd.random() < 0.5:
            yield from _dotted_pairs([path[-1]], value, rnd)
        else:
            yield _pair([path[-1]], value, rnd)
    for path, value, array in later:
        space = rnd.choice(["", " "])
        yield ("[[{0}{1}{0}]]" if array else "[{0}{1}{0}]").format(space, _dotted(path, rnd))
        yield from _table(path, value, rnd)


def _document(doc: dict[str, Any], rnd: random.Random) -> str:
    return "".join(line + "\n" + ("\n" if rnd.random() < 0.2 else "") for line in _table([], doc, rnd))


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_SCALARS = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | _TEXT
    | st.text("[]{}=#.\"'\n\\ab", max_size=12)
    | st.dates()
    | st.datetimes()
    | st.times()
)
_NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True) | _TEXT
_DOCUMENTS = st.dictionaries(
    _NAMES,
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
        max_leaves=12,
    ),
    max_size=5,
)


@given(_DOCUMENTS, st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_generated_documents(doc: dict[str, Any], rnd: random.Random) -> None:
    text = _document(doc, rnd)
    assert tomllib.loads(text) == doc  # the writer wrote what the test believes it did
    _check(text)
    assert key_lines(text.replace("\n", "\r\n")) == key_lines(text)


def _check(text: str) -> None:
    """key_lines finds exactly the paths tomllib does, each on a line that names its last key."""
    lines = key_lines(text)
    assert set(lines) == set(_nodes(tomllib.loads(text)))
    rows = text.split("\n")
    for path, line in lines.items():
        name = path[-1]
        if isinstance(name, str):
            row = rows[line - 1]
            assert name in row or _basic(name) in row, (path, row)


def _real_documents() -> Iterator[Any]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "*.toml"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        yield pytest.param((ROOT / name).read_text(encoding="utf-8"), id=name)
    for doc in sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"]):
        blocks = re.findall(r"^```toml\n(.*?)^```", doc.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
        for number, block in enumerate(blocks, 1):
            yield pytest.param(block, id=f"{doc.relative_to(ROOT)}#{number}")


@pytest.mark.parametrize("text", list(_real_documents()))
def test_real_files(text: str) -> None:
    _check(text)
