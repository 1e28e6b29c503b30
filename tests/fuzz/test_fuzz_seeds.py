"""Every committed seed goes through its entry: a seed is a real input, and one that breaks is seen here."""

from __future__ import annotations

import importlib

import pytest

from tests.fuzz import campaign, seeds

CASES = [(entry, data) for entry in seeds.COMMITTED for data in seeds.seeds(entry)]


@pytest.mark.parametrize(("entry", "data"), CASES, ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES)])
def test_seed_passes_its_entry(entry: str, data: bytes) -> None:
    assert len(data) <= campaign.MAX_LEN[entry]
    importlib.import_module(f"tests.fuzz.fuzz_{entry}").TestOneInput(data)


def test_every_entry_has_seeds() -> None:
    entries = {path.stem.removeprefix("fuzz_") for path in campaign.ROOT.glob("tests/fuzz/fuzz_*.py")}
    assert entries == set(seeds.COMMITTED)
    assert all(seeds.seeds(entry) for entry in entries)


def test_figures_from_a_libfuzzer_log() -> None:
    log = (
        b"#2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 42Mb\n"
        b"#200000\tDONE   cov: 158 ft: 612 corp: 137/3638b lim: 1170 exec/s: 10000 rss: 42Mb\n"
        b"stat::number_of_executed_units: 200001\n"
    )
    figures = campaign._figures("qmqp", 8, 20, log, b"")
    assert figures.row() == "| qmqp | 8 | 20 | 200,001 | 10,000 | 158 | 612 | 137 (3638b) | - | nothing |"
    crashed = campaign._figures("qmqp", 8, 20, log + b"Test unit written to /w/crash-0a1b\n", b"")
    assert crashed.found == "/w/crash-0a1b"
