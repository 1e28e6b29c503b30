"""The openspf RFC 7208 test suite (release 2014.04, as shipped in pyspf 2.0.14's sdist), loaded from
tests/data/spf/rfc7208-tests.json (the suite's YAML converted to JSON, content unchanged), and a DNS
double that answers from a scenario's `zonedata` the way the suite's own driver (pyspf's testspf.py) does.

The double stands in for the DNS only for the suite's sake: its zones have records a real server refuses
to load (labels over 63 octets, a name with ":" and "/") and `TIMEOUT` markers. test_spf.py runs every
case whose answers a real server can give (`on_knot`: 190 of the 203) against a real Knot DNS too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.reversename

from qsift.auth.dns import DnsTemporaryError
from qsift.auth.spf import check_host

SUITE = Path(__file__).parents[2] / "data" / "spf" / "rfc7208-tests.json"

#: A zone entry: (type, value), or the marker "TIMEOUT".
Entry = Any


@dataclass(frozen=True)
class SuiteCase:
    scenario: str
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]  # the first preferred, any accepted
    explanation: str | None
    zone: dict[str, list[Entry]]

    def __str__(self) -> str:
        return self.name


#: Where qsift knowingly answers otherwise than the suite, and why.
DEVIATIONS = {
    # RFC 7208 §7.4's own example writes an IPv6 %{i} in lower-case nibbles; the suite wants upper case.
    # DNS names compare case-insensitively, so only the explanation text differs.
    "v-macro-ip6": "explanation case",
}


def suite_sender(case: SuiteCase) -> tuple[str, str]:
    """(sender, domain) as the suite's driver derives them (RFC 7208 §4.3: no local part is postmaster)."""
    sender = case.mailfrom or "postmaster@" + case.helo
    if sender.startswith("@"):
        sender = "postmaster" + sender
    elif "@" not in sender:
        sender = "postmaster@" + sender
    return sender, sender.rpartition("@")[2]


async def run_case(resolver: object, case: SuiteCase) -> None:
    sender, domain = suite_sender(case)
    outcome = await check_host(resolver, case.host, domain, sender, case.helo)  # type: ignore[arg-type]
    assert outcome.result in case.results, f"{case.name}: {outcome}"
    if case.explanation is not None:
        got = outcome.explanation or "DEFAULT"  # the suite's driver sets "DEFAULT" as the fallback
        if DEVIATIONS.get(case.name) == "explanation case":
            got, expected = got.lower(), case.explanation.lower()
        else:
            expected = case.explanation
        assert got == expected, case.name


def load_suite() -> list[SuiteCase]:
    cases = []
    for scenario in json.loads(SUITE.read_text()):
        zone = {name.lower().rstrip("."): _entries(rows) for name, rows in scenario["zonedata"].items()}
        for name, test in sorted(scenario["tests"].items()):
            result = test["result"]
            cases.append(
                SuiteCase(
                    scenario["description"],
                    name,
                    test["host"],
                    test["mailfrom"],
                    test["helo"],
                    tuple(result) if isinstance(result, list) else (result,),
                    test.get("explanation"),
                    zone,
                )
            )
    return cases


def _entries(rows: list[Any]) -> list[Entry]:
    """As testspf.getrdata: SPF-type records stand for TXT ones unless the name has TXT of its own."""
    entries: list[Entry] = []
    spf: list[Entry] = []
    has_txt = False
    for row in rows:
        if row == "TIMEOUT":
            entries.append("TIMEOUT")
            continue
        ((kind, value),) = row.items()
        if kind in ("TXT", "SPF") and isinstance(value, str):
            value = [value]
        if kind == "TXT":
            has_txt = True
        elif kind == "SPF":
            spf.append(("TXT", value))
        if value != ["NONE"]:
            entries.append((kind, value))
    return entries if has_txt else entries + spf


class ZoneDouble:
    """A resolver answering from a suite zone: unknown names are NXDOMAIN, except error.* (a timeout)."""

    def __init__(self, zone: dict[str, list[Entry]]) -> None:
        self.zone = zone
        self.questions: list[tuple[str, str]] = []

    async def txt(self, name: str) -> tuple[str, ...]:
        return tuple("".join(value) for value in self._lookup(name, "TXT"))

    async def addresses(self, name: str, family: int) -> tuple[str, ...]:
        return tuple(self._lookup(name, "A" if family == 4 else "AAAA"))

    async def mx(self, name: str) -> tuple[str, ...]:
        found = sorted(self._lookup(name, "MX"))
        return tuple(exchange.lower().rstrip(".") for _, exchange in found)

    async def ptr(self, address: str) -> tuple[str, ...]:
        name = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        return tuple(value.lower().rstrip(".") for value in self._lookup(name, "PTR"))

    def _lookup(self, name: str, kind: str, follow: bool = True) -> Iterator[Any]:
        self.questions.append((name, kind))
        labels = name.rstrip(".").split(".")
        if any(len(label) > 63 for label in labels) or "" in labels:
            raise DnsTemporaryError(f"{name}: not a valid DNS name")  # as dnspython refuses to ask
        key = name.lower().rstrip(".")
        if key not in self.zone:
            if key.startswith("error."):
                raise DnsTemporaryError(f"{kind} {name}: timeout")
            return iter(())
        return iter(list(self._answers(key, kind, follow)))

    def _answers(self, key: str, kind: str, follow: bool) -> Iterator[Any]:
        found = False
        for entry in self.zone[key]:
            if entry == "TIMEOUT":
                if not found:
                    raise DnsTemporaryError(f"{kind} {key}: timeout")
                return
            entry_kind, value = entry
            if entry_kind == kind:
                found = True
            if value == "TIMEOUT":
                if entry_kind == kind:
                    raise DnsTemporaryError(f"{kind} {key}: timeout")
                continue
            if entry_kind == kind:
                yield value
            elif entry_kind == "CNAME" and follow:
                yield from self._lookup(value, kind, follow=False)


def knot_zones(cases: list[SuiteCase]) -> dict[str, str]:
    """The servable part of the cases' zone as one Knot zone per top-level domain (an empty one for a
    top-level domain only asked about, so that the answer is NXDOMAIN and not REFUSED)."""
    zones: dict[str, list[str]] = {}
    for name, entries in cases[0].zone.items():
        labels = name.split(".")
        if _servable(name, labels, entries):
            for kind, value in entries:  # no "TIMEOUT" left: _servable said so
                if kind == "SPF":
                    continue  # the RR type 99 that RFC 7208 retired; its text is in a TXT record too
                zones.setdefault(labels[-1], []).append(f"{name}. {kind} {_rdata(kind, value)}")
    for case in cases:
        for name in asked(case):
            zones.setdefault(name.rpartition(".")[2], [])
    return {origin: "\n".join(lines) for origin, lines in zones.items()}


def asked(case: SuiteCase) -> set[str]:
    """The names the case's evaluation asks about, run against the double."""
    double = ZoneDouble(case.zone)
    asyncio.run(run_case(double, case))
    return {name.lower().rstrip(".") for name, _ in double.questions}


def on_knot(case: SuiteCase) -> bool:
    """Whether a real server can give every answer the case needs: each name it asks is servable or
    absent (NXDOMAIN), none is one of the double's timeouts or a name DNS cannot carry."""
    for name in asked(case):
        labels = name.split(".")
        entries = case.zone.get(name, [])
        if not _servable(name, labels, entries):
            return False
    return True


def _servable(name: str, labels: list[str], entries: list[Entry]) -> bool:
    kinds = [entry[0] for entry in entries if entry != "TIMEOUT"]
    return (
        "TIMEOUT" not in entries
        and all(entry[1] != "TIMEOUT" for entry in entries if entry != "TIMEOUT")
        and all(
            0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels
        )
        and len(labels) > 1
        and not name.startswith("error.")
        and ("CNAME" not in kinds or len(kinds) == 1)
    )


def _rdata(kind: str, value: Any) -> str:
    if kind == "TXT":
        return " ".join(_character_string(text) for text in value) or '""'
    if kind == "MX":
        preference, exchange = value
        return f"{preference} {exchange.rstrip('.') + '.' if exchange else '.'}"
    if kind in ("PTR", "CNAME"):
        return str(value).rstrip(".") + "."
    return str(value)


def _character_string(text: str) -> str:
    """A zone-file character-string: printable ASCII as is, anything else as \\DDD octets."""
    out = []
    for octet in text.encode():
        char = chr(octet)
        out.append(char if 0x20 <= octet < 0x7F and char not in '"\\' else f"\\{octet:03d}")
    return '"' + "".join(out) + '"'
