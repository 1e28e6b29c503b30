"""Logging: one summary line per message, details behind a higher log_level, never a body.

Levels follow amavisd-new's $log_level: 0 shows the summary lines and trouble, 5 shows protocol
traces. Records go through a queue to a writer thread, so a blocked stderr (multilog stalls its writer
when the disk is full) never stalls the event loop.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys

from qsift.model import Envelope, Outcome

LOGGER_NAME = "qsift"
#: Python logging level for each amavisd-new log_level; the summary line is logged at level 0.
_LEVELS = {0: 25, 1: 20, 2: 18, 3: 15, 4: 12, 5: 10}
SUMMARY = _LEVELS[0]
_LOGGED_RECIPIENTS = 50

logger = logging.getLogger(LOGGER_NAME)


def level(log_level: int) -> int:
    """The Python logging level that amavisd-new's log_level N stands for."""
    return _LEVELS[max(0, min(5, log_level))]


#: The writer threads started in this process (one, unless setup ran again).
_writers: list[logging.handlers.QueueListener] = []


def flush() -> None:
    """Write out every record still queued and stop the writer thread: a worker calls it before
    os._exit(), which skips atexit, or the error that ended the worker would never reach the log."""
    while _writers:
        _writers.pop().stop()


def setup(log_level: int, syslog_facility: str = "", *, threaded: bool = True) -> None:
    """Send qsift's log to stderr (daemontools-friendly) or syslog, through a writer thread unless
    `threaded` is false: the parent of the workers has no thread, so that forking it is safe (a thread
    holding a lock at fork time would leave the child's copy locked for good), and waiting on a blocked
    stderr costs it nothing."""
    for existing in list(logger.handlers):
        logger.removeHandler(existing)
    if syslog_facility:
        target: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log", facility=syslog_facility)
        target.setFormatter(logging.Formatter("qsift[%(process)d]: %(message)s"))
    else:
        target = logging.StreamHandler(sys.stderr)
        target.setFormatter(logging.Formatter("qsift[%(process)d]: %(message)s"))
    if not threaded:
        logger.addHandler(target)
        logger.setLevel(level(log_level))
        logger.propagate = False
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, target)
    listener.start()
    _writers.append(listener)
    atexit.register(flush)
    logger.addHandler(logging.handlers.QueueHandler(records))
    logger.setLevel(level(log_level))
    logger.propagate = False


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def message_id(head: bytes) -> str:
    """The Message-ID from the start of a message, for the log; empty if there is none."""
    header_end = re.search(rb"\r?\n\r?\n", head)
    headers = head[: header_end.start()] if header_end else head
    match = _MESSAGE_ID.search(headers)
    if not match:
        return ""
    value = re.sub(rb"\s+", b" ", match.group(1)).strip()
    return value[:200].decode("utf-8", "replace")


def summary_line(outcome: Outcome, envelope: Envelope, *, size: int, msgid: str, elapsed_ms: float) -> str:
    """amavisd-new's one line per message: what happened, who, which message, how long."""
    addresses = envelope.addresses
    recipients = ",".join(f"<{address}>" for address in addresses[:_LOGGED_RECIPIENTS])
    if len(addresses) > _LOGGED_RECIPIENTS:
        # One line per message must stay one readable line (syslog cuts long ones), even for 10,000.
        recipients += f",... ({len(addresses) - _LOGGED_RECIPIENTS} more)"
    # The client qsift-queue vouched for, else the connection's peer; then the banks, as amavisd-new's
    # "ORIGINATING [192.0.2.7]".
    address = (
        outcome.client.ip if outcome.client is not None and outcome.client.ip else envelope.client_address
    )
    client = f"[{address}]" if address else "[-]"
    banks = "".join(f"{name} " for name in outcome.banks)
    parts = [
        f"{outcome.disposition.value} {outcome.category}",
        f"{banks}{envelope.protocol} {client} <{envelope.sender}> -> {recipients}",
    ]
    if msgid:
        parts.append(f"Message-ID: {msgid}")
    parts.append(f"mail_id: {outcome.mail_id}")
    parts.append(f"size: {size}")
    if outcome.queued_as:
        parts.append(f"queued_as: {outcome.queued_as}")
    if outcome.reply.smtp_code >= 400:
        parts.append(f"reply: {outcome.reply.smtp_line()}")
    parts.extend(outcome.notes)
    parts.append(f"{elapsed_ms:.0f} ms")
    return _printable(", ".join(parts))


def _printable(text: str) -> str:
    # Addresses come from the client: keep a log line one line, whatever they contain. Nearly every
    # line is printable already, and the check is one C call instead of a generator per character.
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
