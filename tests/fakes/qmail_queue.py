#!/usr/bin/env python3
"""A stand-in for qmail's qmail-queue, following qmail-queue(8) to the byte.

qmail itself cannot be installed here. This program keeps its documented interface: it reads the
message from fd 0 to EOF, then the envelope from fd 1 (`F sender\\0`, `T rcpt\\0`..., `\\0`), refuses an
incomplete envelope with exit 91 (queueing nothing), and exits 0 once the message is stored.
Test knobs come from the environment:
  FAKE_QQ_DIR    where each accepted message goes (message file + envelope file)
  FAKE_QQ_EXIT   exit with this code instead of queueing
  FAKE_QQ_CUSTOM write this text to fd 6 (notqmail's custom error) before exiting
  FAKE_QQ_SLEEP  sleep this many seconds after reading, to test timeouts
  FAKE_QQ_SLOW   sleep this many seconds before each read of the message (a qmail-queue on a busy disk)
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    message = _read_all(0, float(os.environ.get("FAKE_QQ_SLOW") or 0))
    envelope = _read_all(1)
    if not _envelope_complete(envelope):
        return 91
    if os.environ.get("FAKE_QQ_SLEEP"):
        time.sleep(float(os.environ["FAKE_QQ_SLEEP"]))
    custom = os.environ.get("FAKE_QQ_CUSTOM")
    if custom:
        os.write(6, custom.encode())
    if os.environ.get("FAKE_QQ_EXIT"):
        return int(os.environ["FAKE_QQ_EXIT"])
    target = os.environ["FAKE_QQ_DIR"]
    name = f"{time.time_ns()}.{os.getpid()}"
    with open(os.path.join(target, name + ".env"), "wb") as handle:
        handle.write(envelope)
    with open(os.path.join(target, name + ".msg"), "wb") as handle:
        handle.write(message)
    return 0


def _read_all(fd: int, pause: float = 0.0) -> bytes:
    chunks: list[bytes] = []
    while True:
        time.sleep(pause)
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _envelope_complete(envelope: bytes) -> bool:
    if not envelope.startswith(b"F") or not envelope.endswith(b"\0\0"):
        return False
    records = envelope[:-1].split(b"\0")[:-1]
    return len(records) >= 2 and all(r.startswith(b"T") for r in records[1:])


if __name__ == "__main__":
    sys.exit(main())
