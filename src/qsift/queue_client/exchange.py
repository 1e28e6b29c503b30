"""One QMQP exchange with one server over a blocking socket: connect, send the request, read the answer.

The rule that decides failover (cr.yp.to/proto/qmqp.html): a server must throw away a request whose
final byte it never got, so until that byte is written another server may be tried. Once it is written,
the server may have accepted the message even if no answer comes; sending it elsewhere then risks a
duplicate, so every failure after that point ends the run with exit 74.
"""

from __future__ import annotations

# _socket, not socket: socket.py pulls in enum and selectors, about 6 ms of qsift-queue's run for
# every message (bench/queue_startup.py); the C module has all a blocking client needs.
import _socket
import time

from qsift.errors import ProtocolError
from qsift.queue_client.message import Message
from qsift.queue_client.outcome import Attempt
from qsift.queue_client.servers import Server
from qsift.wire.qmail_queue import ExitCode
from qsift.wire.qmqp import ResponseParser

_CODES = {"K": ExitCode.QUEUED, "Z": ExitCode.TEMPORARY_REJECT, "D": ExitCode.PERMANENT_REJECT}
_NOTE_LIMIT = 400


def exchange(
    server: Server, message: Message, head: bytes, tail: bytes, *, connect_timeout: float, timeout: float
) -> Attempt:
    """Hand the request to `server`; `timeout` bounds everything after the connect."""
    try:
        sock = _connect(server.host, server.port, connect_timeout)
    except TimeoutError:
        return Attempt(
            ExitCode.CONNECT_TIMEOUT, f"connect timed out after {connect_timeout:g} s", fail_over=True
        )
    except _socket.gaierror as exc:
        return Attempt(ExitCode.NETWORK_ERROR, f"cannot resolve the name: {exc.strerror}", fail_over=True)
    except OSError as exc:
        return Attempt(ExitCode.CONNECT_REFUSED, f"cannot connect: {_reason(exc)}", fail_over=True)
    try:
        deadline = time.monotonic() + timeout
        # The request ends in a few small writes; Nagle would hold the last one for an ACK.
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        try:
            for piece in message.request_pieces(head, tail):
                _send(sock, piece, deadline)
        except OSError as exc:
            return Attempt(
                ExitCode.COMMUNICATION_FAILED,
                f"sending failed: {_reason(exc)}; trying the next",
                fail_over=True,
            )
        # Never shut down our sending side: the filter takes EOF from its client as "gone, abort".
        return _read_answer(sock, deadline, timeout)
    finally:
        sock.close()


def _connect(host: str, port: int, timeout: float) -> _socket.socket:
    """socket.create_connection's loop: each address the name has, in order, until one answers."""
    failure: OSError = OSError("no address to connect to")
    # A str name is encoded by the "idna" codec, whose import brings re, enum and stringprep: about
    # 4 ms of CPU a run here. An ASCII name (an address, or most host names) means the same as bytes.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = exc
        else:
            return sock
    raise failure


def _read_answer(sock: _socket.socket, deadline: float, timeout: float) -> Attempt:
    parser = ResponseParser()
    try:
        while True:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(4096)
            if not data:
                return _lost("connection closed without an answer")
            answer = parser.feed(data)
            if answer is not None:
                break
    except TimeoutError:
        return _lost(f"no answer within {timeout:g} s")
    except OSError as exc:
        return _lost(f"connection lost before the answer: {_reason(exc)}")
    except ProtocolError as exc:
        return _lost(f"bad answer: {exc}")
    letter, text = answer
    note = _printable(letter + text.decode("utf-8", "replace"))[:_NOTE_LIMIT]
    return Attempt(_CODES[letter], note, fail_over=letter == "Z", answer=answer)


def _lost(what: str) -> Attempt:
    return Attempt(
        ExitCode.COMMUNICATION_FAILED,
        f"{what}; not resent elsewhere, the server may have the message",
        fail_over=False,
    )


def _send(sock: _socket.socket, data: bytes, deadline: float) -> None:
    # sendall's timeout bounds the whole call (Python >= 3.5), so the deadline holds across pieces.
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def _printable(text: str) -> str:
    return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)
