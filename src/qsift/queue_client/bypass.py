"""Mail this site already scanned goes straight to the real qmail-queue, scanned once only.

Set up by two variables in qmail's environment for qsift-queue: `QSIFT_ORIG_QUEUE` (the real queue
program, e.g. /var/qmail/bin/qmail-queue.orig) and `QSIFT_MARK_KEY` (the file with the daemon's mark key,
readable by the qmail users that run qsift-queue; main.py reads it once, for this and for the X-Qsift-Client
field). A message whose X-Qsift-Scanned mark is this site's and fresh (wire/mark.py) is handed to that
program in qsift-queue's place, envelope and all; anything else (no mark, a forged or stale one, an
unreadable key) is sent to the filter as usual.
"""

from __future__ import annotations

import os
import time

from qsift.queue_client.message import Message, _open_spool, _write
from qsift.queue_client.outcome import Fatal
from qsift.wire.qmail_queue import ExitCode, encode_envelope

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_HEAD_LIMIT = 256 * 1024


def bypass_if_marked(
    env: Mapping[str, str],
    key: bytes | None,
    message: Message,
    sender: bytes,
    recipients: Sequence[bytes],
    tmpdir: str,
) -> None:
    """Exec the real qmail-queue for a marked message (never returns then); return for any other.

    `key` is the mark key, None when $QSIFT_MARK_KEY is unset or unreadable (main.py noted why).
    """
    program = env.get("QSIFT_ORIG_QUEUE", "")
    if not program or key is None:
        return
    from qsift.wire import mark  # only here: hmac and hashlib cost start-up time on every other run

    digest = mark.BodyDigest()
    head = bytearray()
    for piece in message.request_pieces(b"", b""):
        if len(head) < _HEAD_LIMIT:
            head += piece[: _HEAD_LIMIT - len(head)]
        digest.update(piece)
    end = head.find(b"\n\n")
    value = mark.find_value(bytes(head[: end if end >= 0 else len(head)]))
    if value is None or not mark.verify(key, value, digest.hexdigest(), int(time.time())):
        return
    _exec(program, message, sender, recipients, tmpdir)


def _exec(program: str, message: Message, sender: bytes, recipients: Sequence[bytes], tmpdir: str) -> None:
    envelope_fd = _open_spool(tmpdir)
    _write(envelope_fd, encode_envelope(sender, recipients))
    os.lseek(envelope_fd, 0, os.SEEK_SET)
    message_fd = message.readable_fd(tmpdir)
    os.dup2(message_fd, 0)
    os.dup2(envelope_fd, 1)
    try:
        os.execv(program, [program])  # noqa: S606 - the site's own qmail-queue, no shell wanted
    except OSError as exc:
        raise Fatal(ExitCode.EXEC_FAILED, f"cannot run {program}: {exc.strerror}") from None
