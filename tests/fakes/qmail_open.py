#!/usr/bin/env python3
"""qmail-smtpd's side of $QMAILQUEUE: qmail.c's qmail_open() and qmail_close(), as each qmail runs them.

qmail itself cannot be installed here. This program runs the queue program exactly as the caller's
qmail.c does (qmail-protocols.md §3.1-3.4) and prints on stdout the string qmail_close() returns, the
one qmail-smtpd turns into its reply (`D...` into 554, `Z...` into 451, "" into 250). Its own stderr is
the caller's, qmail-smtpd's log, which the child inherits as qmail-smtpd's children do.

  qmail_open.py CALLER MESSAGE-FILE ENVELOPE-FILE   (program: $QMAILQUEUE)

CALLER is
  stock     qmail 1.03, netqmail: fd 0 message pipe, fd 1 envelope pipe, nothing else;
  notqmail  notqmail 1.09: also fd 6, the write end of the error pipe; exit 82 means "read it";
  indimail  indimail-mta: the error pipe on $ERROR_FD (default 2: the child's stderr is that pipe,
            not the log), exit 88 means "read it" and 82 "unable to exec qq".

FAKE_READ_END_AT=N keeps the error pipe's read end at descriptor N in this process (a caller whose read
end happens to have the number of the child's write end, which indimail's pipe() calls can give).
"""

from __future__ import annotations

import os
import sys

#: notqmail qmail.c: qmail_errstr reads at most 255 bytes; indimail-mta: 1023.
ERROR_TEXT_LIMIT = {"notqmail": 255, "indimail": 1023}
CUSTOM_ERROR_EXIT = {"notqmail": 82, "indimail": 88}
#: The strings of qmail_close() for the codes qsift-queue uses (notqmail qmail.c; indimail-mta puts
#: "qq " before some and has 82 mean "unable to exec qq").
PLAIN = {
    0: "",
    31: "Dmail server permanently rejected message (#5.3.0)",
    71: "Zmail server temporarily rejected message (#4.3.0)",
    73: "Zconnection to mail server rejected (#4.4.1)",
}
INDIMAIL_PLAIN = {
    0: "",
    31: "Dqq mail server permanently rejected message (#5.3.0)",
    71: "Zqq mail server temporarily rejected message (#4.3.0)",
    73: "Zqq connection to mail server rejected (#4.4.1)",
    82: "Zqq unable to exec qq (#4.3.0)",
}


def main(caller: str, message_file: str, envelope_file: str) -> int:
    program = os.environ["QMAILQUEUE"]
    message_read, message_write = os.pipe()
    envelope_read, envelope_write = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, message_read, 0), (os.POSIX_SPAWN_DUP2, envelope_read, 1)]
    error_fd = _error_fd(caller)
    error_read = None
    if error_fd is not None:
        error_read, error_write = os.pipe()
        if os.environ.get("FAKE_READ_END_AT"):
            wanted = int(os.environ["FAKE_READ_END_AT"])
            os.dup2(error_read, wanted, inheritable=False)
            os.close(error_read)
            error_read = wanted
        actions.append((os.POSIX_SPAWN_DUP2, error_write, error_fd))
    # Every other descriptor of ours is close-on-exec (Python's default), as qmail.c closes them.
    pid = os.posix_spawn(program, [program], dict(os.environ), file_actions=actions)
    os.close(message_read)
    os.close(envelope_read)
    if error_read is not None:
        os.close(error_write)
    # qmail.c's order: the whole message, close it, then the envelope (qmail_from).
    _write_all(message_write, _read_file(message_file))
    _write_all(envelope_write, _read_file(envelope_file))
    text = b""
    if error_read is not None:
        text = _read_upto(error_read, ERROR_TEXT_LIMIT[caller])
    _, status = os.waitpid(pid, 0)
    print(close_string(caller, os.waitstatus_to_exitcode(status), text))
    return 0


def _error_fd(caller: str) -> int | None:
    if caller == "notqmail":
        return 6
    if caller == "indimail":
        fd = int(os.environ.get("ERROR_FD") or 2)
        return None if fd == -1 else fd
    return None


def close_string(caller: str, code: int, text: bytes) -> str:
    """What qmail_close() returns for the child's exit code and what it wrote on the error pipe."""
    if code < 0:
        return "Zqq crashed (#4.3.0)"
    if code == CUSTOM_ERROR_EXIT.get(caller):
        return text.decode("latin-1") if len(text) > 2 else "Zqq temporary problem (#4.3.0)"
    table = INDIMAIL_PLAIN if caller == "indimail" else PLAIN
    if code in table:
        return table[code]
    permanent = 11 <= code <= 40
    return "Dqq permanent problem (#5.3.0)" if permanent else "Zqq temporary problem (#4.3.0)"


def _read_file(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except BrokenPipeError:
        pass
    os.close(fd)


def _read_upto(fd: int, limit: int) -> bytes:
    data = b""
    while len(data) < limit and (chunk := os.read(fd, limit - len(data))):
        data += chunk
    os.close(fd)
    return data


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
