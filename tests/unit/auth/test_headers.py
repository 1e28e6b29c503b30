"""The Authentication-Results field: rendered with authres and parsed back by it; forged fields removed."""

from __future__ import annotations

import re

import authres  # type: ignore[import-untyped]
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qsift.auth.headers import (
    LINE_LIMIT,
    _PropertyValue,
    _ReasonValue,
    remove_authentication_results,
    render_authentication_results,
)
from qsift.auth.results import RESULTS, MethodResult

EXAMPLE = (
    MethodResult(
        "dkim", "pass", "", (("header.d", "example.com"), ("header.s", "s1"), ("header.b", "kix1/0wQ"))
    ),
    MethodResult(
        "dkim",
        "fail",
        "signature does not verify",
        (
            ("header.d", "a-long-domain-name.example.com"),
            ("header.s", "selector2026"),
            ("header.b", "abcdefgh"),
        ),
    ),
    MethodResult(
        "spf", "pass", "", (("smtp.mailfrom", "user@example.com"), ("smtp.helo", "mail.example.com"))
    ),
    MethodResult("dmarc", "pass", "", (("header.from", "example.com"),)),
    MethodResult("arc", "none"),
)


def parse(field: bytes) -> authres.AuthenticationResultsHeader:
    return authres.all_features().parse(re.sub(rb"\r?\n", b"", field).decode())


def test_rendered_field() -> None:
    assert render_authentication_results("mx.example.org", EXAMPLE) == (
        b"Authentication-Results: mx.example.org;\r\n"
        b' dkim=pass header.d=example.com header.s=s1 header.b="kix1/0wQ";\r\n'
        b' dkim=fail reason="signature does not verify"\r\n'
        b"  header.d=a-long-domain-name.example.com header.s=selector2026\r\n"
        b"  header.b=abcdefgh;\r\n"
        b" spf=pass smtp.mailfrom=user@example.com smtp.helo=mail.example.com;\r\n"
        b" dmarc=pass header.from=example.com;\r\n"
        b" arc=none\r\n"
    )


def test_no_results_is_none_and_lf_when_asked() -> None:
    assert render_authentication_results("mx", (), linesep=b"\n") == b"Authentication-Results: mx; none\n"
    assert parse(render_authentication_results("mx", ())).results == []


def test_authserv_id_must_be_a_token() -> None:
    with pytest.raises(ValueError, match="not an RFC 2045 token"):
        render_authentication_results("mx example", EXAMPLE)


def test_values_that_need_quotes_get_them_and_go_last() -> None:
    weird = MethodResult(
        "spf", "fail", "", (("smtp.mailfrom", "a;b@x.test"), ("smtp.helo", ""), ("smtp.x", "@y.test"))
    )
    field = render_authentication_results("mx", (weird,))
    assert field == b'Authentication-Results: mx;\r\n spf=fail smtp.mailfrom="a;b"@x.test smtp.x=@y.test\r\n'
    other = MethodResult("dkim", "pass", "", (("header.b", "a/b"), ("header.d", "x.test")))
    field = render_authentication_results("mx", (other,))
    assert field == b'Authentication-Results: mx;\r\n dkim=pass header.d=x.test header.b="a/b"\r\n'
    (result,) = parse(field).results
    assert [p.value for p in result.properties] == ["x.test", "a/b"]


keywords = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
values = st.text(st.characters(codec="utf-8"), max_size=40)
method_results = st.sampled_from(sorted(RESULTS)).flatmap(
    lambda method: st.builds(
        MethodResult,
        st.just(method),
        st.sampled_from(RESULTS[method]),
        values,
        st.lists(
            st.tuples(st.sampled_from(["header", "smtp", "policy"]), keywords, values).map(
                lambda p: (f"{p[0]}.{p[1]}", p[2])
            ),
            max_size=4,
        ).map(tuple),
    )
)


def printable(text: str) -> str:
    return "".join(char if " " <= char <= "~" else "?" for char in text)


@given(st.lists(method_results, max_size=6), st.sampled_from([b"\r\n", b"\n"]))
# A fold inside a quoted value once added a space to it.
@example([MethodResult("dmarc", "none", "0:", (("header.a", "0" * 32 + " \\"),))], b"\r\n")
def test_rendered_field_always_parses_back(results: list[MethodResult], linesep: bytes) -> None:
    field = render_authentication_results("mx.example.org", results, linesep)
    assert field.endswith(linesep) and all(line[:1] in (b" ", b"A") for line in field.split(linesep)[:-1])
    for line in field.split(linesep):
        assert len(line) <= LINE_LIMIT or b" " not in line.strip()
    parsed = parse(field)
    assert parsed.authserv_id == "mx.example.org"
    assert len(parsed.results) == len(results)
    for got, expected in zip(parsed.results, results, strict=True):
        assert (got.method, got.result) == (expected.method, expected.result)
        assert (got.reason or "") == authres_unquoted(
            _ReasonValue(printable(expected.reason)).quote_if_needed()
        )
        assert [(f"{p.type}.{p.name}", p.value) for p in got.properties] == as_parsed(expected.properties)


def as_parsed(properties: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """What authres reads back: empty values are left out, quoted ones come last, and authres keeps only
    the last of those (its pvalue parser wants ";" or the end after a quoted-string)."""
    items = [(key, _PropertyValue(printable(value)).quote_if_needed()) for key, value in properties if value]
    bare = [(key, value) for key, value in items if not value.endswith('"')]
    quoted = [(key, authres_unquoted(value)) for key, value in items if value.endswith('"')]
    return bare + quoted[-1:]


def authres_unquoted(text: str) -> str:
    """authres takes the quotes off a quoted-string but leaves its quoted-pairs escaped."""
    return text[1:-1] if text.startswith('"') else text


OURS = "mx.example.org"
HEAD = (
    b"Authentication-Results: MX.Example.Org; spf=fail smtp.mailfrom=a@b.test\r\n"
    b"Received: from a by b\r\n"
    b"Authentication-Results: other.example; dkim=pass\r\n"
    b"  header.d=b.test\r\n"
    b"Authentication-Results: (comment) mx.example.org (forged) ;;; garbage ==\r\n"
    b'Authentication-Results: "mx.example.org"; dkim=pass\r\n'
    b"ARC-Authentication-Results: i=1; mx.example.org; dkim=pass\r\n"
    b"Authentication-Results: mx.example.org.evil.test; dkim=pass\r\n"
    b"authentication-results : mx.example.org;\r\n\tdkim=pass header.d=x.test\r\n"
    b"Authentication-Results: other.example garbage ==\r\n"
    b"Authentication-Results:\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.org; in the body\r\n"
)


def test_removes_ours_keeps_the_rest_byte_for_byte() -> None:
    assert remove_authentication_results(HEAD, OURS) == (
        b"Received: from a by b\r\n"
        b"Authentication-Results: other.example; dkim=pass\r\n"
        b"  header.d=b.test\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.org; dkim=pass\r\n"
        b"Authentication-Results: mx.example.org.evil.test; dkim=pass\r\n"
        b"Authentication-Results: other.example garbage ==\r\n"
        b"Authentication-Results:\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; in the body\r\n"
    )
    lf = HEAD.replace(b"\r\n", b"\n")
    assert remove_authentication_results(lf, OURS) == remove_authentication_results(HEAD, OURS).replace(
        b"\r\n", b"\n"
    )


def test_a_header_block_without_end_or_fields() -> None:
    assert remove_authentication_results(b"", OURS) == b""
    assert remove_authentication_results(b"X: 1\r\n Authentication-Results: mx.example.org", OURS) == (
        b"X: 1\r\n Authentication-Results: mx.example.org"
    )
    assert remove_authentication_results(b"Authentication-Results: mx.example.org; none", OURS) == b""


ids = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
random_case = st.builds(
    lambda text, flips: "".join(c.upper() if f else c for c, f in zip(text, flips, strict=False)),
    st.just(OURS),
    st.lists(st.booleans(), min_size=len(OURS), max_size=len(OURS)),
)
payloads = st.sampled_from(
    ["; spf=pass smtp.mailfrom=a@b.test", "; none", " ;; garbage ==", "", " (c); dkim=fail"]
)
folds = st.sampled_from(["", "{eol} ", "{eol}\t"])


@st.composite
def fields(draw: st.DrawFn) -> tuple[bool, str]:
    """(ours, text with {eol} for line ends)."""
    kind = draw(st.sampled_from(["ours", "other", "field"]))
    fold = draw(folds)
    if kind == "field":
        name = draw(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True))
        value = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
        return name.lower() == "authentication-results" and value.strip().lower().startswith(OURS), (
            f"{name}: {value}{fold}x{{eol}}"
        )
    name = draw(
        st.sampled_from(["Authentication-Results", "authentication-results", "AUTHENTICATION-RESULTS"])
    )
    authserv_id = draw(random_case) if kind == "ours" else draw(ids.filter(lambda i: i != OURS))
    return kind == "ours", f"{name}:{fold} {authserv_id}{draw(payloads)}{{eol}}"


@given(st.lists(fields(), max_size=8), st.sampled_from(["\r\n", "\n"]), st.booleans())
def test_remover_takes_exactly_ours(found: list[tuple[bool, str]], eol: str, with_body: bool) -> None:
    body = f"{eol}Authentication-Results: {OURS}; body{eol}" if with_body else ""
    block = "".join(text for _, text in found).replace("{eol}", eol) + body
    expected = "".join(text for ours, text in found if not ours).replace("{eol}", eol) + body
    assert remove_authentication_results(block.encode(), OURS) == expected.encode()


@given(
    st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=80), st.sampled_from(["\r\n", "\n"])
)
def test_remover_survives_any_value(value: str, eol: str) -> None:
    block = f"Subject: s{eol}Authentication-Results:{value}{eol}To: t{eol}".encode()
    left = remove_authentication_results(block, OURS)
    assert left.startswith(f"Subject: s{eol}".encode()) and left.endswith(f"To: t{eol}".encode())
