"""A QMQP server for tests, on 127.0.0.1, that records each request and misbehaves on request.

The request parser here is written independently of qsift.wire on purpose, so a bug shared by the codec
and its tests cannot hide. Each connection runs in its own thread; every wait is bounded and `close()`
ends them all.

Modes (set `mode` before or between connections):
  answer               read the whole request, answer `answer` (a payload such as b"Kok"), close
  raw                  read the whole request, send `answer` as it is (not a netstring), close
  close_early          read `close_after` bytes, then close without reading the rest (the client's send
                       breaks before its final byte)
  close_after_request  read the whole request, then close without answering
  hang                 read the whole request, then say nothing until the test ends
  no_read              read nothing; the client's send stalls once the socket buffers are full

Run by hand for benchmarks: `python -m tests.fakes.qmqp_server 127.0.0.1:10628` answers K until killed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

_WAIT_LIMIT = 60.0


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it."""

    raw: bytes
    #: True when the outer netstring and its final comma arrived.
    complete: bool

    def fields(self) -> tuple[bytes, bytes, list[bytes]]:
        """(message, sender, recipients) of a complete request."""
        assert self.complete
        inner, rest = split_netstring(self.raw)
        assert rest == b""
        parts: list[bytes] = []
        while inner:
            part, inner = split_netstring(inner)
            parts.append(part)
        return parts[0], parts[1], parts[2:]


def split_netstring(data: bytes) -> tuple[bytes, bytes]:
    length, colon, rest = data.partition(b":")
    assert colon, data[:40]
    assert length.isdigit(), data[:40]
    size = int(length)
    assert rest[size : size + 1] == b",", data[:40]
    return rest[:size], rest[size + 1 :]


@dataclass
class FakeQmqpServer:
    answer: bytes = b"Kok"
    mode: str = "answer"
    close_after: int = 1024
    requests: list[ReceivedRequest] = field(default_factory=list)
    #: Peer ports of every connection accepted, probes excluded.
    peers: list[int] = field(default_factory=list)
    bind: tuple[str, int] = ("127.0.0.1", 0)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(self.bind, backlog=128)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._accepted: list[int] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settle(self) -> int:
        """Connections accepted so far, counting every connect made before this call.

        Connections are accepted in arrival order, so once a probe made now is accepted, every earlier
        connect has been seen: no sleeping and guessing.
        """
        with self._lock:
            start = len(self._accepted)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
            probe_port = probe.getsockname()[1]
            deadline = time.monotonic() + 10
            while probe_port not in self._accepted_since(start):
                assert time.monotonic() < deadline, "fake QMQP server did not accept a probe in 10 s"
                time.sleep(0.005)
        with self._lock:
            del self.peers[len(self.peers) - 1 - self.peers[::-1].index(probe_port)]
            return len(self.peers)

    def _accepted_since(self, start: int) -> list[int]:
        with self._lock:
            return self._accepted[start:]

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> FakeQmqpServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._accepted.append(peer[1])
                self.peers.append(peer[1])
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(_WAIT_LIMIT)
            mode = self.mode
            if mode == "no_read":
                self._stop.wait(_WAIT_LIMIT)
                return
            if mode == "close_early":
                _read_exactly(conn, self.close_after)
                return
            request = _read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            if mode == "answer" and request.complete:
                conn.sendall(b"%d:%s," % (len(self.answer), self.answer))
            elif mode == "raw" and request.complete:
                conn.sendall(self.answer)
            elif mode == "hang":
                self._stop.wait(_WAIT_LIMIT)


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = conn.recv(min(1 << 20, count - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_request(conn: socket.socket) -> ReceivedRequest | None:
    prefix = bytearray()
    while not prefix.endswith(b":"):
        byte = conn.recv(1)
        if not byte:
            return ReceivedRequest(bytes(prefix), complete=False) if prefix else None
        prefix += byte
        if len(prefix) > 12 or not (byte.isdigit() or byte == b":"):
            return ReceivedRequest(bytes(prefix), complete=False)
    body = _read_exactly(conn, int(prefix[:-1]) + 1)
    raw = bytes(prefix) + body
    return ReceivedRequest(raw, complete=len(body) == int(prefix[:-1]) + 1 and body.endswith(b","))


@contextlib.contextmanager
def unresponsive_port() -> Iterator[int]:
    """A loopback port whose connects hang: its listen queue is full, so Linux drops further SYNs."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        # backlog 0 still queues a connection or two; fill the queue until a connect stalls.
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                filler.close()
                break
            fillers.append(filler)
        else:
            raise RuntimeError("could not fill the listen queue of a loopback socket")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_port() -> int:
    """A loopback port with nothing listening: connects are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: list[str]) -> int:
    host, _, port = (argv[0] if argv else "127.0.0.1:10628").rpartition(":")
    server = FakeQmqpServer(bind=(host, int(port)))
    print(f"fake QMQP server answering K on {host}:{port}; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
