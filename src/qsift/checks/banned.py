"""Banned files: parts whose name or type says "program", ruled by an ordered list that first-match decides.

This is amavisd-new's `$banned_filename_re` (README.banned) in typed form. amavisd-new checks every key of a
part and of all its ancestors (declared type, name, `.`+file(1) type) against the list, and the first rule
that matches any of them decides: a plain rule bans, `[qr// => 0]` allows. That is what lets the sample's
`[qr'^\\.(rpm|cpio|tar)$' => 0]` pass everything inside a tar while `qr'^\\.(exe-ms|dll)$'`, placed above
it, still bans a Windows program in one. Here a rule names its field instead of hoping a regex only ever
meets the key it was written for, and may be limited to the message's own MIME parts or to archive members.

The default rules are the sample's active ones, plus what mail campaigns have used since, kept to names no
legitimate sender needs to mail as they are:

- the sample: file(1) types exe-ms and dll; everything inside rpm, cpio and tar allowed (placed after those
  two, as in the sample); the MIME types application/x-msdownload, x-msdos-program and hta; double
  extensions (`invoice.pdf.exe`); Windows class IDs in a name, which make Explorer hide the real type;
  the extensions .exe .vbs .pif .scr .cpl. The sample's separate "rudimentary" `.pif|.scr` rule is folded
  into the extension rule: it only exists so that rule can be used alone.
- hiding tricks: C0 and C1 control characters and DEL in a name; a run of five or more spaces followed by
  more of the name (`report.pdf<many spaces>.js` shows as `report.pdf...`; trailing spaces hide nothing and
  Windows drops them); the right-to-left and left-to-right overrides U+202E and U+202D
  (`invoice<RLO>fdp.exe` shows as `invoiceexe.pdf`), which no language needs in a file name, unlike the
  bidi marks and isolates that right-to-left scripts do use and which are left alone.
- scripts and installers Windows runs on a double click: .bat .cmd .hta .js .jse .lnk .msi .msp .ps1 .reg
  .vbe .wsf .wsh, all on Outlook's blocked (Level 1) list. A lone .com stays allowed, as in the sample's
  "basic" line: "example.com" is more often a misnamed link than a DOS program ("invoice.pdf.com" is still
  a double extension).
- extensions tolerate trailing dots and spaces, which Windows strips (`evil.exe.` runs); the sample only
  does so for double extensions.

Not banned by default: disk images (.iso .img .vhd). They are a current malware carrier but also how
installers and firmware travel; what makes one dangerous is the program inside, which the member rules ban
once the decoder opens the image, and an image it cannot open is reported unchecked, not clean. A site
that wants them refused adds a table: `[[banned]]`, `description = "disk image"`,
`filename = '.\\.(iso|img|vhdx?)$'`.

A field the decoder left empty ("" declared type for archive members, no file name) has no value to match:
a condition on it is false, as amavisd-new has no key for it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from qsift.declare import STRING, pattern, setting
from qsift.decode.parts import Part
from qsift.model import Category, Finding

Place = Literal["any", "top", "archive"]
PLACES: tuple[Place, ...] = ("any", "top", "archive")
_CONDITIONS = ("filename", "declared_type", "detected_type")
Path = tuple[str | int, ...]


@dataclass(frozen=True)
class BannedRule:
    """One `[[banned]]` table. A rule matches a part when every condition it sets matches (AND)."""

    description: str = setting("", 'For logs and DSNs, e.g. "double extension"; "" for the table\'s place.')
    #: Searched (re.search), case-insensitive, in the file name.
    filename: re.Pattern[str] | None = setting(
        None, "Regex searched in the file name (any case).", kind=STRING, parse=pattern(re.IGNORECASE)
    )
    declared_type: re.Pattern[str] | None = setting(
        None, "Regex matching the declared MIME type (any case).", kind=STRING, parse=pattern(re.IGNORECASE)
    )
    detected_type: re.Pattern[str] | None = setting(
        None, 'Regex matching the detected type ("exe-ms").', kind=STRING, parse=pattern(0)
    )
    place: Place = setting(
        "any", "any, top (a part of the message itself) or archive (inside one).", choices=PLACES
    )
    allow: bool = setting(False, "An exemption: matching parts (and a container's members) are allowed.")

    @staticmethod
    def config_rules(values: Mapping[str, object], written: Collection[str]) -> Iterator[tuple[Path, str]]:
        if not any(name in written for name in _CONDITIONS):
            yield ("filename",), f"a [[banned]] table needs at least one of {', '.join(_CONDITIONS)}"

    def matches(self, part: Part) -> bool:
        return (
            _in_place(self.place, part)
            and self._names_match(part)
            and _full(self.declared_type, part.declared_type)
            and _full(self.detected_type, part.detected_type)
        )

    def _names_match(self, part: Part) -> bool:
        # A ban holds if any name a reader may show matches; an exemption only if every one does, so that
        # an allowed name beside a banned one exempts nothing (amavisd-new checks each name on its own).
        names = (_found(self.filename, name) for name in part.names)
        return all(names) if self.allow else any(names)


def _in_place(place: Place, part: Part) -> bool:
    if place == "any":
        return True
    return (place == "top") == (part.depth == 0)


def _found(pattern: re.Pattern[str] | None, value: str) -> bool:
    return pattern is None or (bool(value) and pattern.search(value) is not None)


def _full(pattern: re.Pattern[str] | None, value: str) -> bool:
    return pattern is None or (bool(value) and pattern.fullmatch(value) is not None)


# --- the defaults -------------------------------------------------------------------------------------

_I = re.IGNORECASE
# Windows strips trailing dots and spaces from a name, so "evil.exe. " runs as evil.exe. Possessive
# quantifiers keep these linear: the sample's own regexes backtrack quadratically on long crafted names.
_TAIL = r"[.\s]*+\Z"


def _extension(names: str) -> re.Pattern[str]:
    return re.compile(rf".\.(?:{names}){_TAIL}", _I)


DEFAULT_RULES: tuple[BannedRule, ...] = (
    BannedRule("Windows program by its content", detected_type=re.compile(r"exe-ms|dll")),
    BannedRule(
        "inside a Unix archive (rpm, cpio, tar)", detected_type=re.compile(r"rpm|cpio|tar"), allow=True
    ),
    BannedRule(
        "Windows program MIME type",
        declared_type=re.compile(r"application/(?:x-msdownload|x-msdos-program|hta)", _I),
    ),
    # The sample's `^(?!cid:).*\.[^./]*[A-Za-z][^./]*\.\s*(exe|...)[.\s]*$`: an extension with a letter in
    # it, then a program's. "cid:" names are inline images' Content-IDs, not files.
    BannedRule(
        "double extension",
        filename=re.compile(
            r"\A(?!cid:)(?s:.*)\.(?=[^./]*[A-Za-z])[^./]*+\.\s*+(?:exe|vbs|pif|scr|bat|cmd|com|cpl|dll)"
            + _TAIL,
            _I,
        ),
    ),
    BannedRule(
        "Windows class ID in name",
        filename=re.compile(r"\{[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?", _I),
    ),
    BannedRule("control character in name", filename=re.compile(r"[\x00-\x1f\x7f-\x9f]")),
    BannedRule("text direction override in name", filename=re.compile(r"[\u202d\u202e]")),
    BannedRule("run of spaces hiding the end of the name", filename=re.compile(r"(?<!\s)\s{5,}+\S")),
    BannedRule("Windows program extension", filename=_extension(r"exe|vbs|pif|scr|cpl")),
    BannedRule(
        "Windows script or installer extension",
        filename=_extension(r"bat|cmd|hta|jse?|lnk|msi|msp|ps1|reg|vbe|wsf|wsh"),
    ),
)


# --- the check ----------------------------------------------------------------------------------------


def check_banned(parts: Sequence[Part], rules: Sequence[BannedRule] = DEFAULT_RULES) -> list[Finding]:
    """One BANNED finding per banned part, the outermost only when a banned container holds banned members."""
    containers = {part.path: part for part in parts if part.container}
    lineage = {part.path: _ancestors(part.path, containers) for part in parts}
    decided = ((part, _deciding_rule([*lineage[part.path], part], rules)) for part in parts)
    banned = {part.path: (part, rule) for part, rule in decided if rule is not None and not rule.allow}
    return [
        Finding(Category.BANNED, 0, _detail(part, rule), path)
        for path, (part, rule) in banned.items()
        if not any(ancestor.path in banned for ancestor in lineage[path])
    ]


def _ancestors(path: str, containers: Mapping[str, Part]) -> list[Part]:
    # Member names may hold "/" themselves ("2/a.zip/docs/x.exe"), so every prefix is a candidate; walking
    # the path from the left yields the outermost first.
    prefixes = (path[:index] for index, char in enumerate(path) if char == "/")
    return [containers[prefix] for prefix in prefixes if prefix in containers]


def _deciding_rule(candidates: Sequence[Part], rules: Sequence[BannedRule]) -> BannedRule | None:
    for rule in rules:
        if any(rule.matches(candidate) for candidate in candidates):
            return rule
    return None


def _detail(part: Part, rule: BannedRule) -> str:
    # amavisd-new's %F: "application/octet-stream,.exe-ms,invoice.pdf.exe".
    detected = f".{part.detected_type}" if part.detected_type else ""
    shown = ",".join(_printable(value) for value in (part.declared_type, detected, *part.names) if value)
    return f"{shown} ({rule.description})".lstrip()


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    # The detail goes into log lines and DSNs: a name must not break a line or reorder what follows it.
    return _UNPRINTABLE.sub(lambda match: ascii(match.group())[1:-1], text)
