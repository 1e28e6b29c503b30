"""The per-client connection cap as a case table: who is counted, under which key, and up to where."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest

from qsift.errors import TooManyConnections
from qsift.listen.admission import ConnectionsPerClient

LOOPBACK_MTA = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))

# (limit, connections already open, newcomer, admitted?)
CASES = [
    (2, ["192.0.2.1"], "192.0.2.1", True),
    (2, ["192.0.2.1", "192.0.2.1"], "192.0.2.1", False),
    (2, ["192.0.2.1", "192.0.2.1"], "192.0.2.2", True),  # another address has its own count
    (2, ["192.0.2.1", "192.0.2.1"], "::ffff:192.0.2.1", False),  # IPv4-mapped: the same client
    (1, ["2001:db8::1"], "2001:db8::1%eth0", False),  # a zone index does not make a new client
    (1, ["127.0.0.1"] * 5, "127.0.0.1", True),  # the site's own MTA is not counted
    (1, ["::1"] * 5, "::1", True),
    (1, ["127.0.0.2"], "127.0.0.2", False),  # other loopback addresses are
    (1, [None] * 5, None, True),  # unix-socket peers are not counted
    (0, ["192.0.2.1"] * 50, "192.0.2.1", True),  # 0: no cap
]


@pytest.mark.parametrize(("limit", "open_", "newcomer", "admitted"), CASES)
def test_cap(limit: int, open_: list[str | None], newcomer: str | None, admitted: bool) -> None:
    cap = ConnectionsPerClient(limit, LOOPBACK_MTA)
    with contextlib.ExitStack() as held:
        for peer in open_:
            held.enter_context(cap.connection(peer))
        if admitted:
            with cap.connection(newcomer):
                pass
        else:
            with pytest.raises(TooManyConnections), cap.connection(newcomer):
                pass


def test_a_closed_connection_gives_its_place_back() -> None:
    cap = ConnectionsPerClient(1, ())
    with cap.connection("192.0.2.1"):
        pass
    with (
        cap.connection("192.0.2.1"),
        pytest.raises(TooManyConnections, match=r"too many connections from \[192.0.2.1\]"),
        cap.connection("192.0.2.1"),
    ):
        pass
