"""amavisd-new's lookup rules (README.lookups): which entry matches which address, and which one wins."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsift import config
from qsift.errors import ConfigError
from qsift.policy.lookup import AddressTable, lookup_keys


@dataclass(frozen=True)
class Table:
    """A table and the delimiter its policy looks it up with."""

    table: AddressTable
    delimiter: str

    def matches(self, address: str) -> bool:
        return self.table.matches(address, self.delimiter)

    def __bool__(self) -> bool:
        return bool(self.table)


def table(*entries: str, delimiter: str = "") -> Table:
    return Table(AddressTable.parse(list(entries)), delimiter)


@pytest.mark.parametrize(
    ("entry", "address", "expected"),
    [
        ("bob@example.com", "bob@example.com", True),
        ("bob@example.com", "Bob@EXAMPLE.com", True),
        ("bob@example.com", "rob@example.com", False),
        ("bob@", "bob@anywhere.org", True),
        ("bob@", "bobby@anywhere.org", False),
        ("example.com", "anyone@example.com", True),
        ("@example.com", "anyone@example.com", True),
        ("example.com", "anyone@sub.example.com", False),
        (".example.com", "anyone@sub.example.com", True),
        (".example.com", "anyone@example.com", True),
        ("@.example.com", "anyone@deep.sub.example.com", True),
        (".example.com", "anyone@notexample.com", False),
        (".", "anyone@anywhere", True),
        ("@.", "postmaster", True),
        ("/^abuse@/", "abuse@example.net", True),
        ("/^abuse@/", "ABUSE@example.net", True),
        ("/^abuse@/", "noabuse@example.net", False),
        ("postmaster@", "postmaster", True),
    ],
)
def test_one_entry(entry: str, address: str, expected: bool) -> None:
    assert table(entry).matches(address) is expected


def test_the_most_specific_entry_wins_over_the_order_written() -> None:
    lookup = table(".example.com", "!boss@example.com", "!.sales.example.com", "ann@sales.example.com")
    assert lookup.matches("joe@example.com")
    assert not lookup.matches("boss@example.com")
    assert not lookup.matches("bob@sales.example.com")
    assert lookup.matches("ann@sales.example.com")


def test_regexes_only_when_no_plain_entry_matched() -> None:
    lookup = table("!vip@example.com", "/@example\\.com$/")
    assert lookup.matches("anyone@example.com")
    assert not lookup.matches("vip@example.com")
    assert table("!/^x/", "/./").matches("yes@a") and not table("!/^x/", "/./").matches("x@a")


def test_address_extensions_with_a_delimiter() -> None:
    plus = table("bob@example.com", delimiter="+")
    assert plus.matches("bob+lists@example.com")
    assert not table("bob@example.com").matches("bob+lists@example.com")
    dash = table("!bob-spam@example.com", "bob@example.com", delimiter="-")
    assert dash.matches("bob-work@example.com") and not dash.matches("bob-spam@example.com")
    # A leading delimiter is part of the name, never an empty local part.
    assert list(lookup_keys("-x@a.b", "-"))[:2] == ["-x@a.b", "-x@"]


def test_the_key_order_is_amavisd_news() -> None:
    assert list(lookup_keys("User+foo@Sub.Example.com", "+")) == [
        "user+foo@sub.example.com",
        "user@sub.example.com",
        "user+foo@",
        "user@",
        "sub.example.com",
        ".sub.example.com",
        ".example.com",
        ".com",
        ".",
    ]


def test_an_empty_table_matches_nobody_and_is_false() -> None:
    assert not table()
    assert not table().matches("anyone@example.com")
    assert table("x@")


@pytest.mark.parametrize("bad", [["@"], ["/(/"], "bob@example.com", [1], ["!@"], ["..."]])
def test_bad_entries_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"\[policy\] spam_lovers: "):
        config.from_mapping({"policy": {"spam_lovers": bad}})


def test_the_first_recipient_table_that_sets_a_key_wins() -> None:
    recipient = [
        {"match": ["boss@example.com"], "message_size_limit": 1000},
        {"match": [".example.com"], "kill_level": 5.0},
        {"match": ["."], "kill_level": 9.0, "message_size_limit": 5},
    ]
    policy = config.from_mapping({"policy": {"recipient": recipient}}).policies.base
    boss = policy.for_recipient("boss@example.com")
    assert (boss.levels.kill_level, boss.message_size_limit) == (5.0, 1000)
    assert policy.for_recipient("x@other.org").levels.kill_level == 9.0
    assert config.from_mapping({}).policies.base.for_recipient("x@other.org").levels.kill_level == 6.9


addresses = st.from_regex(r"[A-Za-z0-9.+_-]{1,12}@[A-Za-z0-9-]{1,10}(\.[A-Za-z]{2,5}){0,3}", fullmatch=True)


@given(addresses)
def test_every_address_matches_its_own_entries(address: str) -> None:
    local, _, domain = address.rpartition("@")
    for entry in (address, f"{local}@", domain, f".{domain}", "."):
        assert table(entry).matches(address), entry
        assert not table(f"!{entry}").matches(address), entry


@given(addresses, st.text(max_size=40))
def test_lookups_never_raise(address: str, other: str) -> None:
    lookup = table(".example.com", "bob@", "/x/")
    lookup.matches(address)
    lookup.matches(other)
    list(lookup_keys(other, "+"))
