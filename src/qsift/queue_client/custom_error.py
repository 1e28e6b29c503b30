"""Passing the filter's own refusal text back to qmail-smtpd, in the convention the MTA understands.

Stock qmail has none: qmail-smtpd can only say "mail server permanently rejected message". Three
patches let a queue program supply the text (qmail-protocols.md §3.4); $QSIFT_CUSTOM_ERROR picks one:

  off       stderr only (default; stock qmail 1.03, netqmail without the patch)
  notqmail  write `Dtext (#5.x.y)` to fd 6 and exit 82 (notqmail >= 1.09, netqmail + custom-error-v2)
  simscan   fd 4, exit 82 (netqmail + the original patch shipped with simscan)
  indimail  fd $ERROR_FD (default 2, -1 disables), exit 88; 82 means "unable to exec qq" there

The text is written only to an error pipe the caller made for this run: a pipe that the caller does
not itself hold, writable, at the same number. Under a caller without the convention the descriptor is
closed, or something else (tcpserver's socket), or the caller's own descriptor passed down: fd 2 is
qmail-smtpd's stderr, its log pipe, under any qmail but indimail-mta. The plain exit code must then
stand, and the text must not land in qmail-smtpd's log. The caller's descriptors are read in
/proc/PPID; without /proc, a pipe is taken as the error pipe.
"""

from __future__ import annotations

import os
import stat

from qsift.queue_client.outcome import Fatal
from qsift.wire.qmail_queue import ExitCode, custom_error_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Mapping

INDIMAIL_CUSTOM_ERROR = 88
_DEFAULT_STATUS = {"D": "5.3.0", "Z": "4.3.0"}


class Convention:
    """Where the text goes and which exit code tells the caller to read it."""

    __slots__ = ("exit_code", "fd")

    def __init__(self, fd: int, exit_code: int) -> None:
        self.fd = fd
        self.exit_code = exit_code


def convention_from_env(env: Mapping[str, str]) -> Convention | None:
    """The convention $QSIFT_CUSTOM_ERROR names, or None for `off`."""
    mode = (env.get("QSIFT_CUSTOM_ERROR") or "off").strip().lower()
    if mode == "off":
        return None
    if mode == "notqmail":
        return Convention(6, ExitCode.CUSTOM_ERROR)
    if mode == "simscan":
        return Convention(4, ExitCode.CUSTOM_ERROR)
    if mode == "indimail":
        raw = (env.get("ERROR_FD") or "2").strip()
        if not raw.lstrip("-").isdigit() or int(raw) < -1:
            raise Fatal(ExitCode.CONFIG_ERROR, f"ERROR_FD={raw!r} is not a descriptor number")
        return None if int(raw) == -1 else Convention(int(raw), INDIMAIL_CUSTOM_ERROR)
    raise Fatal(ExitCode.CONFIG_ERROR, f"QSIFT_CUSTOM_ERROR={mode!r}: use off, notqmail, simscan or indimail")


def text_for_answer(letter: str, reply: bytes) -> bytes:
    """The custom-error text for a server's D or Z answer.

    qsift answers `D554 5.7.0 rejected: ...`; qmail-smtpd puts its own 554/451 in front, so the SMTP
    code goes and the enhanced status moves to qmail's `(#5.7.0)` place. A text already ending in
    `(#x.y.z)` (qmail-qmqpd's style) keeps its code.
    """
    status, text = split_status(letter, reply.decode("utf-8", "replace").strip())
    return custom_error_text(letter, text, status)


def split_status(letter: str, text: str) -> tuple[str, str]:
    """(enhanced status, text without it) from a reply text; a default status if it names none."""
    if len(text) >= 4 and text[:3].isdigit() and text[3] == " ":
        text = text[4:].lstrip()
    first, _, rest = text.partition(" ")
    if _is_status(first, letter):
        return first, rest.strip()
    body, mark, end = text.rpartition("(#")
    if mark and end.endswith(")") and _is_status(end[:-1], letter):
        return end[:-1], body.rstrip()
    return _DEFAULT_STATUS[letter], text


def _is_status(word: str, letter: str) -> bool:
    parts = word.split(".")
    return (
        len(parts) == 3
        and all(part.isascii() and part.isdigit() and len(part) <= 3 for part in parts)
        and parts[0] == _DEFAULT_STATUS[letter][0]
    )


def write_text(fd: int, text: bytes) -> bool:
    """Write the text if `fd` is an error pipe made for this run; False if not, or the write failed."""
    try:
        mine = os.fstat(fd)
        if not stat.S_ISFIFO(mine.st_mode) or _passed_down(fd, mine):
            return False
        # At most 255 bytes, under PIPE_BUF: one write, never split.
        return os.write(fd, text) == len(text)
    except OSError:
        return False


def _passed_down(fd: int, mine: os.stat_result) -> bool:
    """Whether the caller writes to this same pipe at the same number: its own descriptor, inherited."""
    caller = f"/proc/{os.getppid()}"
    try:
        theirs = os.stat(f"{caller}/fd/{fd}")
        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            return False
        with open(f"{caller}/fdinfo/{fd}", encoding="ascii") as info:
            flags = next(line for line in info if line.startswith("flags:")).split()[1]
    except (OSError, StopIteration, IndexError):
        # The caller has no such descriptor (the usual case for an error pipe), or there is no /proc.
        return False
    # The read end of the error pipe, kept by indimail's caller, may sit at the number of our write end.
    return int(flags, 8) & os.O_ACCMODE != os.O_RDONLY
