"""Which QMQP servers qsift-queue tries, and in what order.

Entries are qmail's `control/qmqpservers` lines extended: `host`, `host:port`, `[ipv6]`, `[ipv6]:port`
(a bare IPv6 address also works), each optionally followed by whitespace and an integer weight (default
1). Servers with a positive weight are tried in weighted random order, each try choosing among the rest
by weight; servers of weight 0 are backups, tried last in the order listed.

In $QMQPSERVERS the entries are separated by spaces or commas, so a weight is the digits-only token
right after its address: `QMQPSERVERS="10.0.0.1:10628 3, 10.0.0.2 1"`.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

DEFAULT_PORT = 10628
DEFAULT_WEIGHT = 1


class Server:
    """One QMQP server: where it is and its share of the load."""

    __slots__ = ("host", "port", "weight")

    def __init__(self, host: str, port: int = DEFAULT_PORT, weight: int = DEFAULT_WEIGHT) -> None:
        self.host = host
        self.port = port
        self.weight = weight

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Server({self.host!r}, {self.port}, {self.weight})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Server):
            return NotImplemented
        return (self.host, self.port, self.weight) == (other.host, other.port, other.weight)

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.weight))


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) from `host`, `host:port`, `[ipv6]`, `[ipv6]:port` or a bare IPv6 address."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"bad address {text!r}")
        if not rest:
            return host, DEFAULT_PORT
        if not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        return host, _port(rest[1:])
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not host:
            raise ValueError(f"bad address {text!r}")
        return host, _port(port)
    if not text:
        raise ValueError("empty address")
    return text, DEFAULT_PORT


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _weight(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"bad weight {text!r}")
    return int(text)


def parse_entry(address: str, weight: str | None = None) -> Server:
    host, port = parse_address(address)
    return Server(host, port, DEFAULT_WEIGHT if weight is None else _weight(weight))


def parse_control_file(text: str) -> tuple[list[Server], list[str]]:
    """Servers from a qmqpservers file, and a complaint per line that could not be used."""
    servers: list[Server] = []
    complaints: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _without_comment(raw).strip()
        if not line:
            continue
        try:
            servers.append(_parse_line(line))
        except ValueError as exc:
            complaints.append(f"line {number}: {exc}")
    return servers, complaints


def _parse_line(line: str) -> Server:
    fields = line.split()
    if len(fields) > 2:
        raise ValueError(f"unexpected {fields[2]!r} after the weight")
    return parse_entry(*fields)


def _without_comment(line: str) -> str:
    # qmail's control_readfile skips lines starting with '#'; a comment after an entry is ours.
    if line.lstrip().startswith("#"):
        return ""
    for index, char in enumerate(line):
        if char == "#" and index > 0 and line[index - 1] in " \t":
            return line[:index]
    return line


def parse_env(text: str) -> tuple[list[Server], list[str]]:
    """Servers from $QMQPSERVERS, and a complaint per entry that could not be used."""
    servers: list[Server] = []
    complaints: list[str] = []
    tokens = text.replace(",", " ").split()
    for index, token in enumerate(tokens):
        if _is_weight(token):
            if index == 0 or _is_weight(tokens[index - 1]):
                complaints.append(f"weight {token!r} without an address")
            continue
        weight = tokens[index + 1] if index + 1 < len(tokens) and _is_weight(tokens[index + 1]) else None
        try:
            servers.append(parse_entry(token, weight))
        except ValueError as exc:
            complaints.append(str(exc))
    return servers, complaints


def _is_weight(token: str) -> bool:
    return token.isascii() and token.isdigit()


def _random_below(limit: int) -> int:
    # os.urandom rather than the random module: importing random costs every run; this costs one syscall.
    return int.from_bytes(os.urandom(8), "big") % limit


def try_order(servers: Sequence[Server], random_below: Callable[[int], int] = _random_below) -> list[Server]:
    """The order to try `servers` in: weighted random among positive weights, then the weight-0 backups."""
    pool = [server for server in servers if server.weight > 0]
    order: list[Server] = []
    while len(pool) > 1:
        point = random_below(sum(server.weight for server in pool))
        order.append(pool.pop(_index_at(pool, point)))
    order += pool
    order += (server for server in servers if server.weight == 0)
    return order


def _index_at(pool: Iterable[Server], point: int) -> int:
    for index, server in enumerate(pool):
        point -= server.weight
        if point < 0:
            return index
    raise ValueError("point beyond the total weight")
