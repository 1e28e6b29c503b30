"""A byte-exact model of stock qmail-qmqpc (notqmail qmail-qmqpc.c, qmail-protocols.md §4), for tests.

What the model keeps from the C program, on purpose, warts included:
  * the whole message is held in memory; the envelope is read with getln(..., '\\0') and refused with
    exit 91 if the first record is missing, shorter than 2 bytes or not `F...`, if a later record does
    not start with `T`, or if a record is unterminated; anything after the terminating NUL is ignored;
  * the server address goes through ip_scan: a dotted-quad prefix, each part taken modulo 256, anything
    after it ignored; a host name or IPv6 address is skipped and the exit code stays 55;
  * a 10 s connect timeout: 72 if it timed out, 73 for any other connect failure;
  * the request `<len>:` + `<mlen>:` + message + `,` + sender and recipient netstrings + `,` goes out
    in 1024-byte writes (substdio), each allowed 60 s;
  * the reply is read byte by byte, each read allowed 60 s, up to the first K (0), Z (71) or D (31);
    digits, the colon and anything else before it are skipped and nothing after it is looked at;
    EOF, an error or a stall is 74. Nothing after the connect ever fails over.

Real qmail-qmqpc always uses port 628; `port` lets a test point it at a fake server.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple

SUBSTDIO_BUFFER = 1024


class QmqpcResult(NamedTuple):
    exit_code: int
    #: Every byte written to the server, b"" if no connection was made.
    sent: bytes


def run_qmail_qmqpc(
    host: str,
    port: int | None,
    message: bytes,
    envelope: bytes,
    port_default: int = 628,
    *,
    connect_timeout: float = 10.0,
    io_timeout: float = 60.0,
) -> QmqpcResult:
    """Run the model once against one `control/qmqpservers` line; (exit code, bytes sent)."""
    after = _envelope_netstrings(envelope)
    if after is None:
        return QmqpcResult(91, b"")
    ip = ip_scan(host)
    if ip is None:
        return QmqpcResult(55, b"")  # lasterror's initial value
    before = b"%d:" % len(message)
    request = b"%d:" % (len(before) + len(message) + len(after)) + before + message + after + b","
    try:
        sock = socket.create_connection((ip, port_default if port is None else port), timeout=connect_timeout)
    except TimeoutError:
        return QmqpcResult(72, b"")
    except OSError:
        return QmqpcResult(73, b"")
    with sock:
        sock.settimeout(io_timeout)
        sent = bytearray()
        try:
            for start in range(0, len(request), SUBSTDIO_BUFFER):
                chunk = request[start : start + SUBSTDIO_BUFFER]
                sock.sendall(chunk)
                sent += chunk
            return QmqpcResult(_read_answer(sock), bytes(sent))
        except OSError:
            return QmqpcResult(74, bytes(sent))


def _read_answer(sock: socket.socket) -> int:
    while True:
        data = sock.recv(SUBSTDIO_BUFFER)
        if not data:
            return 74
        for byte in data:
            if byte == ord("K"):
                return 0
            if byte == ord("Z"):
                return 71
            if byte == ord("D"):
                return 31


def _envelope_netstrings(envelope: bytes) -> bytes | None:
    """`,` + the sender and recipient netstrings, as getmess() builds `aftermessage`; None = exit 91."""
    records = _records(envelope)
    first = next(records, None)
    if first is None or len(first) < 2 or first[:1] != b"F":
        return None
    after = b",%d:%s," % (len(first) - 2, first[1:-1])
    for line in records:
        if len(line) < 2:
            return after
        if line[:1] != b"T":
            return None
        after += b"%d:%s," % (len(line) - 2, line[1:-1])
    return None  # EOF before the terminating NUL


def _records(envelope: bytes) -> Iterator[bytes]:
    """getln(&envelope, &line, &match, '\\0'): each record with its NUL; an unterminated one ends it."""
    pos = 0
    while (end := envelope.find(b"\0", pos)) >= 0:
        yield envelope[pos : end + 1]
        pos = end + 1


def ip_scan(text: str) -> str | None:
    """qmail's ip_scan: a dotted-quad prefix of `text`, each part modulo 256; None if there is none."""
    parts: list[int] = []
    pos = 0
    for index in range(4):
        digits = 0
        while pos + digits < len(text) and text[pos + digits] in "0123456789":
            digits += 1
        if not digits:
            return None
        parts.append(int(text[pos : pos + digits]) % 256)
        pos += digits
        if index < 3:
            if text[pos : pos + 1] != ".":
                return None
            pos += 1
    return ".".join(str(part) for part in parts)
