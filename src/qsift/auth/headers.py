"""The Authentication-Results field (RFC 8601): written once per message with every method's result, and
every field already claiming our authserv-id taken out first (§5), since only we may speak for it.

authres writes each result (quoting values as RFC 8601 §2.2 needs) and parses existing fields; the field is
folded here, one method to a line, to stay within 78 columns where the values allow it (RFC 5322 §2.1.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres  # type: ignore[import-untyped]
from authres.core import AuthenticationResultProperty, QuotableValue  # type: ignore[import-untyped]

from qsift.auth.results import MethodResult

FIELD_NAME = "Authentication-Results"
LINE_LIMIT = 78
_TOKEN = re.compile(r"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+")
# pvalue's second form (RFC 8601 §2.2): [[local-part] "@"] domain-name.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"(?:{_ATOM}(?:\.{_ATOM})*)?")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# The authserv-id of a field authres cannot parse: its first word after any comments.
_LEADING_COMMENTS = re.compile(rb"^(?:\s|\((?:[^()\\]|\\.)*\))*")
_FIRST_WORD = re.compile(rb'"((?:[^"\\]|\\.)*)"|[^\s;()]+')
_FIELD = re.compile(rb"^([^:\s]+)[ \t]*:(.*)$", re.S)
#: What a fold may not cut: leading spaces, then characters and whole quoted strings up to the next space.
_FOLD_WORD = re.compile(r' *(?:"(?:[^"\\]|\\.)*"?|[^ "])+| +')


class _PropertyValue(QuotableValue):  # type: ignore[misc]
    """A pvalue as RFC 8601 §2.2 has it: a token or an address bare (a local-part that is no dot-atom
    quoted), anything else quoted; authres would leave any value with an "@" in it bare."""

    def quote_if_needed(self) -> str:
        local, at, domain = self.rpartition("@")
        if _TOKEN.fullmatch(self) or (at and _DOMAIN.fullmatch(domain) and _DOT_ATOM.fullmatch(local)):
            return str(self)
        if at and _DOMAIN.fullmatch(domain):
            return f"{_quoted(local)}@{domain}"
        return _quoted(self)

    @property
    def quoted_whole(self) -> bool:
        return self.quote_if_needed().endswith('"')


class _ReasonValue(QuotableValue):  # type: ignore[misc]
    """A reason: a token bare, anything else quoted (authres leaves a value with an "@" bare)."""

    def quote_if_needed(self) -> str:
        return str(self) if _TOKEN.fullmatch(self) else _quoted(self)


def _quoted(text: str) -> str:
    escaped = re.sub(r'(["\\])', r"\\\1", text)
    return f'"{escaped}"'


def render_authentication_results(
    authserv_id: str, results: Sequence[MethodResult], linesep: bytes = b"\r\n"
) -> bytes:
    """The whole field, `Authentication-Results: <authserv-id>; dkim=pass header.d=...; ...`, folded and
    ending in `linesep`; `<authserv-id>; none` when no method ran (RFC 8601 §2.2 no-result)."""
    if not _TOKEN.fullmatch(authserv_id):
        raise ValueError(f"authserv-id {authserv_id!r} is not an RFC 2045 token")
    features = authres.all_features()
    clauses = [str(_clause(features, result)) for result in results]
    if clauses:
        lines = [f"{FIELD_NAME}: {authserv_id};", *(f" {clause};" for clause in clauses)]
        lines[-1] = lines[-1].removesuffix(";")
    else:
        lines = [f"{FIELD_NAME}: {authserv_id}; none"]
    folded = [part for line in lines for part in _fold(line)]
    return linesep.join(part.encode("ascii") for part in folded) + linesep


def _clause(features: authres.FeatureContext, result: MethodResult) -> object:
    properties = []
    for key, value in result.properties:
        if not value:
            continue  # RFC 8601 has no empty pvalue: a property without a value says nothing
        ptype, _, name = key.partition(".")
        item = AuthenticationResultProperty(ptype, name, "x")
        item.value = _PropertyValue(_printable(value))
        properties.append(item)
    # authres (and dkimpy's ARC signer, which reads our field through it) drops a quoted pvalue that is
    # not followed by ";" or the end; a quoted one is therefore put last, where it survives.
    properties.sort(key=lambda item: bool(item.value.quoted_whole))
    clause = features.result(result.method, None, result.result, None, None, None, properties)
    clause.reason = _ReasonValue(_printable(result.reason)) if result.reason else None
    return clause


def _fold(line: str) -> list[str]:
    """`line` cut before spaces into pieces of at most LINE_LIMIT characters where words allow; never
    inside a quoted string, where a fold would add white space to the value."""
    pieces: list[str] = []
    current = ""
    for word in _FOLD_WORD.findall(line):
        if current.strip() and len(current) + len(word) > LINE_LIMIT:
            pieces.append(current)
            current = " " + word  # a continued clause sits one column deeper than a new one
        else:
            current += word
    return [*pieces, current]


def _printable(text: str) -> str:
    """Printable ASCII only: a CR or LF in a value would end the field early (RFC 8601 §7.2)."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)


def remove_authentication_results(header_block: bytes, authserv_id: str) -> bytes:
    """`header_block` without the Authentication-Results fields that claim `authserv_id`
    (case-insensitively), or that do not parse and begin with it; everything else byte for byte.

    Reading stops at the empty line that ends a header block: what follows (a body) is kept as is."""
    kept, at = [], 0
    for start, end in authentication_results_ranges(header_block, authserv_id):
        kept.append(header_block[at:start])
        at = end
    return b"".join([*kept, header_block[at:]])


def authentication_results_ranges(header_block: bytes, authserv_id: str) -> list[tuple[int, int]]:
    """The byte ranges (start, end) of the fields `remove_authentication_results` removes, for a
    message whose header is cut as it is forwarded."""
    ours = authserv_id.lower().encode("ascii")
    ranges: list[tuple[int, int]] = []
    at = 0
    for field in _fields(header_block):
        if field in (b"\n", b"\r\n"):
            break
        if _claims(field, ours):
            ranges.append((at, at + len(field)))
        at += len(field)
    return ranges


def _fields(header_block: bytes) -> list[bytes]:
    """Each field with its continuation lines and line ends; the empty line and the rest as they are."""
    fields: list[bytes] = []
    # Lines end at LF only: a bare CR inside a field does not start a new one.
    lines = re.findall(rb"[^\n]*\n|[^\n]+", header_block)
    for index, line in enumerate(lines):
        if line in (b"\n", b"\r\n"):
            return [*fields, line, b"".join(lines[index + 1 :])]
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _claims(field: bytes, ours: bytes) -> bool:
    match = _FIELD.match(field)
    if match is None or match[1].lower() != FIELD_NAME.lower().encode():
        return False
    value = re.sub(rb"\r?\n", b"", match[2])
    try:
        parsed = authres.all_features().parse_value(value.decode("utf-8", "replace"))
    except authres.AuthResError:
        return _first_word(value) == ours
    return str(parsed.authserv_id).encode("utf-8", "replace") == ours


def _first_word(value: bytes) -> bytes:
    rest = value[_LEADING_COMMENTS.match(value).end() :]  # type: ignore[union-attr]
    word = _FIRST_WORD.match(rest)
    if word is None:
        return b""
    return (word[1] if word[1] is not None else word[0]).lower()
