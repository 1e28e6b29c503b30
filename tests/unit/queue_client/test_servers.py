from __future__ import annotations

from collections.abc import Iterator

import pytest

from qsift.queue_client.servers import (
    DEFAULT_PORT,
    Server,
    parse_address,
    parse_control_file,
    parse_env,
    try_order,
)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.0.1", ("10.0.0.1", DEFAULT_PORT)),
        ("10.0.0.1:628", ("10.0.0.1", 628)),
        ("filter.example.net:10628", ("filter.example.net", 10628)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[::1]:10629", ("::1", 10629)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("2001:db8::5", ("2001:db8::5", DEFAULT_PORT)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text", ["", "[::1", "[]:1", "[::1]x", "[::1]:", ":10", "h:", "h:0", "h:65536", "h:x", "h:+1", "h:\u0661"]
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad|empty"):
        parse_address(text)


def test_server_prints_like_it_is_written() -> None:
    assert str(Server("10.0.0.1", 628)) == "10.0.0.1:628"
    assert str(Server("::1")) == f"[::1]:{DEFAULT_PORT}"
    assert repr(Server("h", 1, 2)) == "Server('h', 1, 2)"
    assert Server("h") != "h"
    assert len({Server("h"), Server("h")}) == 1


def test_control_file() -> None:
    text = (
        "# QMQP filters\n"
        "\n"
        "10.0.0.1\n"
        "  10.0.0.2:10629   3   \n"
        "[::1]:10630 0 # backup\n"
        "filter.example.net:x\n"
        "10.0.0.3 1 2\n"
        "10.0.0.4 heavy\n"
        "10.0.0.5#not-a-comment\n"
    )
    servers, complaints = parse_control_file(text)
    assert servers == [
        Server("10.0.0.1", DEFAULT_PORT, 1),
        Server("10.0.0.2", 10629, 3),
        Server("::1", 10630, 0),
        Server("10.0.0.5#not-a-comment", DEFAULT_PORT, 1),
    ]
    assert complaints == [
        "line 6: bad port 'x'",
        "line 7: unexpected '2' after the weight",
        "line 8: bad weight 'heavy'",
    ]


def test_env_list() -> None:
    servers, complaints = parse_env(" 10.0.0.1:10628 3, 10.0.0.2,[::1]:1 0 h:bad 7 7")
    assert servers == [Server("10.0.0.1", 10628, 3), Server("10.0.0.2"), Server("::1", 1, 0)]
    assert complaints == ["bad port 'bad'", "weight '7' without an address"]


def test_env_weight_first_is_a_complaint() -> None:
    assert parse_env("5 a") == ([Server("a")], ["weight '5' without an address"])


def refuse_random(limit: int) -> int:
    raise AssertionError("no random choice needed")


def test_one_server_needs_no_randomness() -> None:
    assert try_order([Server("a")], refuse_random) == [Server("a")]


def test_weight_zero_servers_are_backups_in_listed_order() -> None:
    servers = [Server("b1", weight=0), Server("a"), Server("b2", weight=0)]
    assert try_order(servers, refuse_random) == [Server("a"), Server("b1", weight=0), Server("b2", weight=0)]


def test_all_backups_keep_the_file_order_like_qmail_qmqpc() -> None:
    servers = [Server("a", weight=0), Server("b", weight=0), Server("c", weight=0)]
    assert try_order(servers, refuse_random) == servers


def points(*values: int) -> Iterator[int]:
    yield from values


@pytest.mark.parametrize(
    ("draws", "first"),
    [((0, 0), "a"), ((2, 0), "a"), ((3, 0), "b"), ((5, 0), "b"), ((6, 0), "c")],
)
def test_weighted_choice_by_cumulative_weight(draws: tuple[int, int], first: str) -> None:
    servers = [Server("a", weight=3), Server("b", weight=3), Server("c", weight=1)]
    source = points(*draws)
    limits: list[int] = []

    def random_below(limit: int) -> int:
        limits.append(limit)
        return next(source)

    order = try_order(servers, random_below)
    assert order[0].host == first
    assert sorted(s.host for s in order) == ["a", "b", "c"]
    assert limits[0] == 7
    assert limits[1] == 7 - order[0].weight


def test_every_point_of_the_first_draw_gives_the_weights_share() -> None:
    servers = [Server("a", weight=3), Server("b", weight=1)]

    def first_for(point: int) -> str:
        return try_order(servers, lambda limit: point if limit == 4 else 0)[0].host

    firsts = [first_for(point) for point in range(4)]
    assert firsts.count("a") == 3
    assert firsts.count("b") == 1


def test_default_random_source_stays_in_range() -> None:
    for _ in range(50):
        order = try_order([Server("a", weight=1), Server("b", weight=2), Server("c", weight=0)])
        assert sorted(s.host for s in order[:2]) == ["a", "b"]
        assert order[2].host == "c"
