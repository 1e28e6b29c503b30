"""Banned files: each default rule, ancestry (the tar exemption), places, reporting, configuration."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift import config
from qsift.checks.banned import DEFAULT_RULES, BannedRule, check_banned
from qsift.decode.parts import Part
from qsift.errors import ConfigError
from qsift.model import Category, Finding


def part(
    path: str = "2",
    *,
    filename: str = "",
    declared_type: str = "",
    detected_type: str = "",
    container: bool = False,
) -> Part:
    # depth and containers follow from the path the way the decoder builds them: the first component is
    # the MIME position, each further one a container's member.
    names = path.split("/")
    return Part(
        path=path,
        declared_type=declared_type,
        filename=filename,
        detected_type=detected_type,
        description="",
        size=1,
        digest="",
        depth=len(names) - 1,
        containers=tuple(names[1:-1]),
        container=container,
    )


def reasons(parts: list[Part], rules: tuple[BannedRule, ...] = DEFAULT_RULES) -> list[tuple[str, str]]:
    """(path, rule description) for each finding."""
    found = check_banned(parts, rules)
    return [(f.part, f.detail.rpartition(" (")[2].rstrip(")")) for f in found]


def verdict(**attributes: str) -> str | None:
    """The description of the default rule that bans a lone top-level part, or None when it passes."""
    found = reasons([part(**attributes)])  # type: ignore[arg-type]
    return found[0][1] if found else None


# --- every default rule: a positive and a negative example --------------------------------------------


_CASES: list[tuple[dict[str, str], str | None]] = [
    # Windows program by its content
    ({"detected_type": "exe-ms", "filename": "photo.jpg"}, "Windows program by its content"),
    ({"detected_type": "dll"}, "Windows program by its content"),
    ({"detected_type": "exe", "filename": "tool"}, None),
    ({"detected_type": "exe-ms-like"}, None),
    # Windows program MIME type
    ({"declared_type": "application/x-msdownload"}, "Windows program MIME type"),
    ({"declared_type": "Application/X-MSDOS-Program"}, "Windows program MIME type"),
    ({"declared_type": "application/hta"}, "Windows program MIME type"),
    ({"declared_type": "application/x-msdownload-helper"}, None),
    ({"declared_type": "application/octet-stream"}, None),
    # double extension
    ({"filename": "invoice.pdf.exe"}, "double extension"),
    ({"filename": "Invoice.PDF.Scr"}, "double extension"),
    ({"filename": "scan.jpg. com. ."}, "double extension"),
    ({"filename": "report.doc   .bat"}, "double extension"),
    ({"filename": "archive.2024.exe"}, "Windows program extension"),  # no letter in "2024"
    ({"filename": "cid:part1.pdf.exe"}, "Windows program extension"),  # a Content-ID, not a name
    ({"filename": "cid:part1.pdf.com"}, None),
    ({"filename": "invoice.pdf"}, None),
    ({"filename": "notes.txt.gz"}, None),
    # Windows class ID in name
    ({"filename": "readme.txt.{3050F4D8-98B5-11CF-BB82-00AA00BDCE0B}"}, "Windows class ID in name"),
    ({"filename": "x{00021401-0000-0000-c000-000000000046"}, "Windows class ID in name"),
    ({"filename": "{not-a-clsid}.txt"}, None),
    ({"filename": "{3050F4D8-98B5-11CF-BB82}.txt"}, None),
    # control character in name
    ({"filename": "report\x07.pdf"}, "control character in name"),
    ({"filename": "report\x85.pdf"}, "control character in name"),
    ({"filename": "report\x7f.pdf"}, "control character in name"),
    ({"filename": "r\u00e9sum\u00e9 \u00a0final.pdf"}, None),
    # text direction override in name
    ({"filename": "invoice\u202efdp.zip"}, "text direction override in name"),
    ({"filename": "a\u202db.txt"}, "text direction override in name"),
    ({"filename": "\u05d3\u05d5\u05d7\u200f.pdf"}, None),  # a right-to-left mark is ordinary Hebrew
    # run of spaces hiding the end of the name
    ({"filename": "report.pdf" + " " * 40 + ".zip"}, "run of spaces hiding the end of the name"),
    ({"filename": "a     b.txt"}, "run of spaces hiding the end of the name"),
    ({"filename": "a    b.txt"}, None),
    ({"filename": "padded.txt      "}, None),
    # Windows program extension
    ({"filename": "setup.exe"}, "Windows program extension"),
    ({"filename": "SETUP.EXE. "}, "Windows program extension"),
    ({"filename": "a.vbs"}, "Windows program extension"),
    ({"filename": "a.pif"}, "Windows program extension"),
    ({"filename": "a.scr"}, "Windows program extension"),
    ({"filename": "a.cpl"}, "Windows program extension"),
    ({"filename": ".exe"}, None),
    ({"filename": "setup.exe.txt"}, None),
    ({"filename": "exe"}, None),
    ({"filename": "example.com"}, None),
    ({"filename": "offer.example.com"}, "double extension"),  # as in the sample
    # Windows script or installer extension
    *(
        ({"filename": f"run.{ext}"}, "Windows script or installer extension")
        for ext in ["bat", "cmd", "hta", "js", "jse", "lnk", "msi", "msp", "ps1", "reg", "vbe", "wsf", "wsh"]
    ),
    ({"filename": "App.JS.."}, "Windows script or installer extension"),
    ({"filename": "app.json"}, None),
    ({"filename": "disk.iso"}, None),
    ({"filename": "disk.img"}, None),
    # nothing at all
    ({}, None),
]


@pytest.mark.parametrize(("attributes", "expected"), _CASES)
def test_default_rule(attributes: dict[str, str], expected: str | None) -> None:
    assert verdict(**attributes) == expected


def test_every_default_rule_is_exercised_above() -> None:
    # A new default rule must get its examples in _CASES too.
    descriptions = [rule.description for rule in DEFAULT_RULES]
    assert len(set(descriptions)) == len(descriptions)
    assert {expected for _, expected in _CASES} == {*descriptions, None} - {
        "inside a Unix archive (rpm, cpio, tar)"
    }
    assert [rule.description for rule in DEFAULT_RULES if rule.allow] == [
        "inside a Unix archive (rpm, cpio, tar)"
    ]


# --- the double-extension rule is the sample's regex, made linear ------------------------------------

_SAMPLE_DOUBLE = re.compile(
    r"^(?!cid:).*\.[^./]*[A-Za-z][^./]*\.\s*(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)[.\s]*$", re.IGNORECASE
)
_DOUBLE = next(rule for rule in DEFAULT_RULES if rule.description == "double extension")

_name_alphabet = st.sampled_from([".", "/", " ", "\t", "a", "Z", "1", "exe", "com", "cid:", "pdf", ".exe"])


@given(st.lists(_name_alphabet, max_size=12).map("".join))
def test_double_extension_agrees_with_the_sample(name: str) -> None:
    assert _DOUBLE.filename is not None
    assert (_DOUBLE.filename.search(name) is not None) == (_SAMPLE_DOUBLE.search(name) is not None)


def test_crafted_long_names_stay_fast() -> None:
    # These take the sample's regexes seconds (quadratic backtracking); here they must be instant.
    names = ["." + "a" * 200_000, " " * 200_000, "a" + " " * 200_000, "x." * 100_000, "a." + "a " * 100_000]
    assert check_banned([part(filename=name) for name in names]) == []
    assert len(check_banned([part(filename="a" + " " * 200_000 + ".")])) == 1


# --- the tar exemption and rules placed before it -----------------------------------------------------


def test_everything_inside_a_tar_is_allowed() -> None:
    parts = [
        part("2", filename="src.tar", detected_type="tar", container=True),
        part("2/install.bat", filename="install.bat", detected_type="txt"),
        part("2/lib/setup.exe", filename="setup.exe", detected_type="exe"),
    ]
    assert check_banned(parts) == []


def test_nested_inside_a_tar_is_allowed_at_any_depth() -> None:
    parts = [
        part("1", filename="a.zip", detected_type="zip", container=True),
        part("1/b.tar", filename="b.tar", detected_type="tar", container=True),
        part("1/b.tar/c.zip", filename="c.zip", detected_type="zip", container=True),
        part("1/b.tar/c.zip/run.js", filename="run.js", detected_type="txt"),
    ]
    assert check_banned(parts) == []


def test_a_rule_before_the_exemption_still_bans_inside_a_tar() -> None:
    parts = [
        part("2", filename="src.tar", detected_type="tar", container=True),
        part("2/setup.exe", filename="setup.exe", detected_type="exe-ms"),
    ]
    assert reasons(parts) == [("2/setup.exe", "Windows program by its content")]


def test_the_tar_exempts_only_its_own_members() -> None:
    parts = [
        part("2", filename="src.tar", detected_type="tar", container=True),
        part("2/a.exe", filename="a.exe"),
        part("3", filename="a.exe"),
        part("22/a.exe", filename="a.exe"),  # "2" is a prefix of its path, but it is no member of "2"
    ]
    assert reasons(parts) == [
        ("3", "Windows program extension"),
        ("22/a.exe", "Windows program extension"),
    ]


def test_a_zip_gives_no_exemption() -> None:
    parts = [
        part("2", filename="invoice.zip", detected_type="zip", container=True),
        part("2/invoice.pdf.exe", filename="invoice.pdf.exe", detected_type="exe"),
    ]
    assert reasons(parts) == [("2/invoice.pdf.exe", "double extension")]


def test_member_names_may_contain_slashes() -> None:
    parts = [
        part("2", filename="a.tar", detected_type="tar", container=True),
        part("2/docs/x.exe", filename="x.exe"),
    ]
    assert check_banned(parts) == []


def test_a_non_container_is_no_ancestor() -> None:
    parts = [part("2", filename="a.tar", detected_type="tar"), part("2/x.exe", filename="x.exe")]
    assert reasons(parts) == [("2/x.exe", "Windows program extension")]


# --- places --------------------------------------------------------------------------------------------

_TOP_EXE = BannedRule("exe at top", filename=re.compile(r"\.exe\Z"), place="top")
_ARCHIVED_JS = BannedRule("js in archive", filename=re.compile(r"\.js\Z"), place="archive")


def test_place_top_matches_only_the_message_s_own_parts() -> None:
    parts = [
        part("1", filename="a.exe"),
        part("2", filename="b.zip", detected_type="zip", container=True),
        part("2/c.exe", filename="c.exe"),
    ]
    assert reasons(parts, (_TOP_EXE,)) == [("1", "exe at top")]


def test_place_archive_matches_only_members() -> None:
    parts = [
        part("1", filename="a.js"),
        part("2", filename="b.zip", detected_type="zip", container=True),
        part("2/c.js", filename="c.js"),
    ]
    assert reasons(parts, (_ARCHIVED_JS,)) == [("2/c.js", "js in archive")]


def test_place_is_checked_against_the_candidate_that_matched() -> None:
    # The zip is a top-level part, so a top-only rule on it decides for its members too.
    allow_zip_at_top = BannedRule("zip at top", detected_type=re.compile("zip"), place="top", allow=True)
    parts = [
        part("2", filename="b.zip", detected_type="zip", container=True),
        part("2/c.zip", filename="c.zip", detected_type="zip", container=True),
        part("2/c.zip/d.exe", filename="d.exe"),
    ]
    assert reasons(parts, (allow_zip_at_top, *DEFAULT_RULES)) == []
    allow_zip_inside = BannedRule("zip inside", detected_type=re.compile("zip"), place="archive", allow=True)
    assert reasons([*parts[:1], part("2/d.exe", filename="d.exe")], (allow_zip_inside, *DEFAULT_RULES)) == [
        ("2/d.exe", "Windows program extension")
    ]


# --- conditions -----------------------------------------------------------------------------------------


def test_conditions_are_anded() -> None:
    rule = BannedRule(
        "renamed program",
        filename=re.compile(r"\.pdf\Z"),
        declared_type=re.compile("application/pdf"),
        detected_type=re.compile("exe"),
    )
    assert rule.matches(part(filename="a.pdf", declared_type="application/pdf", detected_type="exe"))
    assert not rule.matches(part(filename="a.pdf", declared_type="application/pdf", detected_type="pdf"))
    assert not rule.matches(part(filename="a.doc", declared_type="application/pdf", detected_type="exe"))
    assert not rule.matches(part(filename="a.pdf", declared_type="text/plain", detected_type="exe"))


def test_an_empty_field_matches_no_condition() -> None:
    anything = BannedRule("anything", filename=re.compile(""), declared_type=re.compile(".*"))
    assert not anything.matches(part(filename="", declared_type="text/plain"))
    assert not anything.matches(part(filename="a", declared_type=""))
    assert anything.matches(part(filename="a", declared_type="text/plain"))
    assert not BannedRule("typed", detected_type=re.compile(".*")).matches(part(detected_type=""))


def test_types_are_matched_whole() -> None:
    rule = BannedRule("pdf", declared_type=re.compile("application/pdf", re.IGNORECASE))
    assert rule.matches(part(declared_type="application/PDF"))
    assert not rule.matches(part(declared_type="application/pdf2"))


# --- reporting ------------------------------------------------------------------------------------------


def test_finding_fields_and_detail() -> None:
    parts = [
        part(
            "2", filename="invoice.pdf.exe", declared_type="application/octet-stream", detected_type="exe-ms"
        )
    ]
    assert check_banned(parts) == [
        Finding(
            Category.BANNED,
            0,
            "application/octet-stream,.exe-ms,invoice.pdf.exe (Windows program by its content)",
            "2",
        )
    ]


def test_detail_leaves_out_missing_fields() -> None:
    [finding] = check_banned([part("2/a.zip/x.pdf.exe", filename="x.pdf.exe")])
    assert finding.detail == "x.pdf.exe (double extension)"
    [finding] = check_banned([part(declared_type="application/hta")])
    assert finding.detail == "application/hta (Windows program MIME type)"


def test_detail_escapes_what_would_break_a_log_line() -> None:
    [finding] = check_banned([part(filename="a\r\nb\u202ec.txt\x9b")])
    assert finding.detail == "a\\r\\nb\\u202ec.txt\\x9b (control character in name)"
    assert finding.detail.isprintable()


def test_only_the_outermost_banned_part_is_reported() -> None:
    parts = [
        part("2", filename="payload.exe", detected_type="zip", container=True),
        part("2/inner.zip", filename="inner.zip", detected_type="zip", container=True),
        part("2/inner.zip/a.exe", filename="a.exe"),
        part("2/b.scr", filename="b.scr"),
        part("3", filename="c.zip", detected_type="zip", container=True),
        part("3/d.exe", filename="d.exe"),
        part("3/e.exe", filename="e.exe"),
    ]
    assert reasons(parts) == [
        ("2", "Windows program extension"),
        ("3/d.exe", "Windows program extension"),
        ("3/e.exe", "Windows program extension"),
    ]


def test_outermost_only_does_not_depend_on_list_order() -> None:
    parts = [
        part("2/a.exe", filename="a.exe"),
        part("2", filename="bad.exe", detected_type="zip", container=True),
    ]
    assert reasons(parts) == [("2", "Windows program extension")]


def test_allowed_container_passes_members_that_later_rules_would_ban() -> None:
    allow_pdf = BannedRule("signed bundle", filename=re.compile(r"\Atrusted\.zip\Z"), allow=True)
    parts = [
        part("2", filename="trusted.zip", detected_type="zip", container=True),
        part("2/setup.exe", filename="setup.exe"),
    ]
    assert check_banned(parts, (allow_pdf, *DEFAULT_RULES)) == []


def test_no_rules_no_findings() -> None:
    assert check_banned([part(filename="a.exe", detected_type="exe-ms")], ()) == []
    assert check_banned([]) == []


# --- configuration --------------------------------------------------------------------------------------


def rules_from_config(tables: list[dict[str, object]]) -> tuple[BannedRule, ...]:
    """The site's own rules, as the configuration builds them."""
    return config.from_mapping({"banned": tables, "banned_defaults": False}).banned_rules


def test_rules_from_config_builds_rules_in_order() -> None:
    rules = rules_from_config(
        [
            {"description": "office macros", "filename": r"\.docm$", "place": "archive"},
            {"declared_type": "application/x-tar", "detected_type": "tar", "allow": True},
            {"filename": "x", "place": "top", "allow": False},
        ]
    )
    first, second, third = rules
    assert first == BannedRule(
        "office macros", filename=re.compile(r"\.docm$", re.IGNORECASE), place="archive"
    )
    assert second.description == "[[banned]] #2"
    assert second.declared_type == re.compile("application/x-tar", re.IGNORECASE)
    assert second.detected_type == re.compile("tar")
    assert second.allow
    assert second.place == "any"
    assert third.place == "top"
    assert not third.allow
    assert rules_from_config([]) == ()


def test_config_patterns_follow_the_field_s_case_rule() -> None:
    [rule] = rules_from_config([{"filename": r"\.EXE$", "declared_type": "Application/X-Foo"}])
    assert rule.matches(part(filename="a.exe", declared_type="application/x-foo"))
    [typed] = rules_from_config([{"detected_type": "exe-ms"}])
    assert typed.matches(part(detected_type="exe-ms"))
    assert not typed.matches(part(detected_type="EXE-MS"))


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            [{"filename": "a"}, {"filename": "b", "filname": "c"}],
            "[[banned]] #2 filname: unknown key "
            "(allowed: allow, declared_type, description, detected_type, filename, place)",
        ),
        ([{"description": 3, "filename": "a"}], "[[banned]] #1 description: must be a string, not 3"),
        ([{"filename": ["a"]}], '[[banned]] #1 filename: must be a string, not ["a"]'),
        ([{"declared_type": 1}], "[[banned]] #1 declared_type: must be a string, not 1"),
        ([{"detected_type": True}], "[[banned]] #1 detected_type: must be a string, not true"),
        (
            [{"filename": "(a"}],
            "[[banned]] #1 filename: bad regex: missing ), unterminated subpattern at position 0",
        ),
        (
            [{"filename": "a"}, {"detected_type": "exe(?"}],
            "[[banned]] #2 detected_type: bad regex: unexpected end of pattern at position 5",
        ),
        (
            [{"filename": "a", "place": "inside"}],
            '[[banned]] #1 place: must be one of any, top, archive, not "inside"',
        ),
        ([{"filename": "a", "place": 0}], "[[banned]] #1 place: must be a string, not 0"),
        ([{"filename": "a", "allow": "yes"}], '[[banned]] #1 allow: must be true or false, not "yes"'),
        (
            [{"description": "empty", "place": "top", "allow": True}],
            "[[banned]] #1 filename: a [[banned]] table needs at least one of filename, declared_type, "
            "detected_type",
        ),
        ([["filename", "a"]], "[[banned]] #1: must be a table"),
    ],
)
def test_rules_from_config_errors(tables: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from_config(tables)  # type: ignore[arg-type]
    assert str(caught.value) == f"<config>: {message}"


# --- properties ---------------------------------------------------------------------------------------

_text = st.text(max_size=40)
_member = st.tuples(
    _text,
    _text,
    st.sampled_from(["", "exe", "exe-ms", "dll", "zip", "tar", "rpm", "pdf", "txt"]) | _text,
    st.booleans(),
)


@st.composite
def _messages(draw: st.DrawFn) -> list[Part]:
    parts: list[Part] = []
    for name, declared, detected, container in draw(st.lists(_member, max_size=12)):
        holders = [p.path for p in parts if p.container]
        parent = draw(st.sampled_from(["", *holders]))
        path = f"{parent}/{name}" if parent else str(len(parts) + 1)
        parts.append(
            Part(
                path=path,
                declared_type="" if parent else declared,
                filename=name,
                detected_type=detected,
                description="",
                size=1,
                digest="",
                depth=path.count("/"),
                containers=(),
                container=container,
            )
        )
    return draw(st.permutations(parts))


@given(_messages())
def test_check_banned_never_raises_and_reports_outermost_only(parts: list[Part]) -> None:
    findings = check_banned(parts)
    reported = {f.part for f in findings}
    containers = {p.path for p in parts if p.container}
    for finding in findings:
        assert finding.category is Category.BANNED
        assert finding.minor == 0
        assert finding.detail.endswith(")")
        assert "\n" not in finding.detail
        assert not any(finding.part.startswith(other + "/") for other in reported & containers)


@given(_text, _text, _text)
def test_any_name_or_type_is_judged_without_error(filename: str, declared: str, detected: str) -> None:
    found = check_banned([part(filename=filename, declared_type=declared, detected_type=detected)])
    assert len(found) <= 1


# --- every name a part declares -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        # Content-Type's name beside Content-Disposition's filename: readers differ in which they show.
        b'Content-Type: text/plain; name="run.vbs"\nContent-Disposition: attachment; filename="notes.txt"\n',
        # A repeated parameter: readers differ in which one counts.
        b"Content-Type: text/plain\n"
        b'Content-Disposition: attachment; filename="notes.txt"; filename="run.vbs"\n',
        b"Content-Type: text/plain\nContent-Disposition: attachment; filename=notes.txt;"
        b" filename*=utf-8''run%2Evbs\n",
    ],
)
def test_each_declared_name_of_a_part_is_checked(fields: bytes) -> None:
    from qsift.decode.walk import decode_message

    message = b"From: a@x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n--B\n"
    message += fields + b"\nMsgBox 1\n--B--\n"
    parts = decode_message(message).parts
    [finding] = check_banned(parts)
    assert finding.category is Category.BANNED
    assert "run.vbs" in finding.detail and "notes.txt" in finding.detail


def test_an_allowed_name_beside_a_banned_one_exempts_nothing() -> None:
    rules = (
        BannedRule("text is fine", filename=re.compile(r"\.txt$"), allow=True),
        BannedRule("script", filename=re.compile(r"\.vbs$")),
    )
    both = Part("2", "text/plain", "notes.txt", "txt", "", 1, "", 0, other_names=("run.vbs",))
    [finding] = check_banned([both], rules)
    assert "script" in finding.detail
    assert check_banned([Part("2", "text/plain", "notes.txt", "txt", "", 1, "", 0)], rules) == []
