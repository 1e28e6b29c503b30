"""The openspf RFC 7208 test suite (release 2014.04, as shipped in pyspf 2.0.14's sdist), loaded from
tests/data/spf/rfc7208-tests.json (the suite's YAML converted to JSON, content unchanged), and a DNS
double that answers from a scenario's `zonedata` the way the suite's own driver (pyspf's testspf.py) does.

The double stands in for the DNS only for the suite's sake: its zones have records a real server refuses
to load (labels over 63 octets, a name with ":" and "/") and `TIMEOUT` markers. test_spf.py runs a
representative set of the same cases against a real Knot DNS too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.reversename

from qsift.auth.dns import DnsTemporaryError

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


def knot_zones(zone: dict[str, list[Entry]]) -> dict[str, str] | None:
    """The zone as one Knot zone per top-level domain, or None when a real server cannot serve it
    (timeouts, names DNS cannot carry, a CNAME beside other data)."""
    zones: dict[str, list[str]] = {}
    for name, entries in zone.items():
        labels = name.split(".")
        if not _servable(name, labels, entries):
            return None
        for kind, value in entries:  # no "TIMEOUT" left: _servable said so
            zones.setdefault(labels[-1], []).append(f"{name}. {kind} {_rdata(kind, value)}")
    return {origin: "\n".join(lines) for origin, lines in zones.items()}


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
        return " ".join(_character_string(text) for text in value)
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
