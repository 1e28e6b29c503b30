"""qsift-queue: a drop-in for qmail-queue (and qmail-qmqpc) that hands each message to qsift over QMQP.

qmail-smtpd runs it as $QMAILQUEUE once per message: the message comes on fd 0, then the envelope
(`F<sender>\\0T<rcpt>\\0...\\0`) on fd 1, which is a pipe this program READS (qmail-queue(8)). fd 0 is
read to EOF before fd 1, as qmail.c writes them in that order. The whole envelope is checked before
anything is sent; a truncated one (qmail-smtpd's databytes overflow) sends nothing and exits 91.
It takes no arguments (`--help` prints this text, and exits 55 like any argument: 0 means "queued").

Environment (read here and nowhere else):
  QMQPSERVERS            servers separated by spaces or commas, e.g. "127.0.0.1:10628 3, [::1]"; if unset
                         or empty, $QMAILHOME/control/qmqpservers, one per line (servers.py has the syntax)
  QMAILHOME              default /var/qmail
  QSIFT_CONNECT_TIMEOUT  seconds per connect, default 10
  QSIFT_TIMEOUT          seconds for everything with one server after the connect (sending the request
                         and waiting for the answer), default 1200
  QSIFT_CUSTOM_ERROR     off | notqmail | simscan | indimail (custom_error.py), default off
  ERROR_FD               indimail's custom-error descriptor, default 2
  TMPDIR                 where a message over 1 MiB from a pipe is spooled (an unnamed file), default /tmp
  QSIFT_CLIENT_KEY       the client key file ([client_context] key_file), read once; unset: none of
                         what follows happens. With it, every message sent to a filter starts with an
                         X-Qsift-Client field signed with the key (wire/client_context.py), from which
                         the daemon learns the client qmail-smtpd saw: TCPREMOTEIP (else TCP6REMOTEIP),
                         TCPREMOTEHOST (else TCP6REMOTEHOST), whether RELAYCLIENT is set, and the SMTP
                         AUTH user in SMTPAUTHUSER (else SMTP_AUTH_USER); TCPREMOTEINFO is not taken, as
                         clients can set it. An unreadable or empty key file is noted on stderr and the
                         message goes as usual. Only qmail-smtpd's user (and qsift) can read the key:
                         run by anyone else (qmail-local, as the recipient), qsift-queue sends no field.
  QSIFT_MARK_KEY         the old name of QSIFT_CLIENT_KEY (when that is unset), with a note on stderr
  QSIFT_ORIG_QUEUE       no longer used (a note on stderr): the daemon itself passes mail it marked

Servers are tried in weighted random order. The next one is tried after a refused or timed-out
connect, a connection that broke before the final request byte was written, or a Z answer. A K or D
answer ends the run, and so does any failure after the final byte was written: the server may have
queued the message, and sending it to another would deliver it twice. As in qmail-qmqpc, the exit
code is that of the last server tried ("last error wins").

Exit codes, as qmail-queue(8) and qmail-qmqpc define them, and what qmail-smtpd then answers:
   0  a server answered K: the message is its responsibility now     250 ok
  31  a server answered D                                             554 mail server permanently rejected
  71  the last server tried answered Z                                451 mail server temporarily rejected
  72  the connect to the last server tried timed out                  451 connection to mail server timed out
  73  the last server refused the connection or was unreachable       451 connection to mail server rejected
  74  the connection broke, or no answer came                         451 communication with server failed
  51  out of memory                                                   451 qq out of memory
  53  cannot write the temp file                                      451 qq write error or disk full
  54  cannot read the message or the envelope                         451 qq read error
  55  no usable server, or a bad setting                              451 qq unable to read configuration
  56  a server's name does not resolve                                451 qq trouble making network connection
  81  internal error (a bug)                                          451 qq internal bug
  91  envelope format error; nothing was sent                         451 qq internal bug
  82  notqmail/simscan custom error: the D/Z text went to fd 6/fd 4   554/451 <the filter's own text>
  88  indimail custom error: the text went to $ERROR_FD               554/451 <the filter's own text>

Everything but a K answer is reported on stderr as `qsift-queue: <server>: <what happened>`, which
qmail-smtpd's log keeps. This program must start fast: it imports only the standard library modules
it needs and qsift's codecs (qsift.wire), never the daemon.
"""

from __future__ import annotations

import os
import sys
import time  # already loaded by exchange.py: free here

from qsift.errors import ProtocolError
from qsift.queue_client import custom_error
from qsift.queue_client.exchange import exchange
from qsift.queue_client.message import read_message
from qsift.queue_client.outcome import Attempt, Fatal
from qsift.queue_client.servers import Server, parse_control_file, parse_env, try_order
from qsift.wire.qmail_queue import ExitCode, parse_envelope
from qsift.wire.qmqp import request_frame

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

PROGRAM = "qsift-queue"
MESSAGE_FD = 0
ENVELOPE_FD = 1
STDERR_FD = 2


class Settings:
    """Everything qsift-queue takes from its environment, checked before fd 0 is read."""

    __slots__ = ("connect_timeout", "convention", "servers", "timeout", "tmpdir")

    def __init__(self, env: Mapping[str, str], notes: list[str]) -> None:
        self.servers = _servers(env, notes)
        self.connect_timeout = _seconds(env, "QSIFT_CONNECT_TIMEOUT", 10.0)
        self.timeout = _seconds(env, "QSIFT_TIMEOUT", 1200.0)
        self.convention = custom_error.convention_from_env(env)
        # The spool file is unnamed (O_TMPFILE, or unlinked at once), so a shared /tmp is no risk.
        self.tmpdir = env.get("TMPDIR") or "/tmp"  # noqa: S108


def main(argv: Sequence[str] | None = None) -> int:
    """Run once, as qmail-smtpd runs qmail-queue; return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args:
        # Even for --help: exit 0 means "queued" to every caller, so it is never given without a K.
        if args[0] in ("-h", "--help"):
            _write_raw(__doc__ or "")
        _write_stderr([f"takes no arguments, got {args[0]!r}; see {PROGRAM} --help"])
        return ExitCode.CONFIG_ERROR
    notes: list[str] = []
    try:
        code, quiet = _run(os.environ, notes)
    except MemoryError:
        code, quiet = ExitCode.OUT_OF_MEMORY, False
        notes.append("out of memory")
    except Exception as exc:
        # A bug must still end in a temporary failure qmail-smtpd can report, never a lost message.
        code, quiet = ExitCode.INTERNAL_BUG, False
        notes.append(f"internal error: {type(exc).__name__}: {exc}")
    if not quiet:
        _write_stderr(notes)
    return int(code)


def run() -> NoReturn:
    """The `qsift-queue` command: `main()`, then out at once, skipping the interpreter's clean-up.

    Nothing is left to flush (every write is an os.write, unbuffered, and the spool file is unnamed), and
    the clean-up, freeing every module and object, cost about 2 ms of CPU a run here (a fifth of
    `python3 -c pass`), which qmail-smtpd pays once per message (docs/benchmarks.md).
    """
    os._exit(main())


def _run(env: Mapping[str, str], notes: list[str]) -> tuple[int, bool]:
    """(exit code, whether stderr must stay silent because it carries the custom error)."""
    try:
        settings = Settings(env, notes)
        message = read_message(MESSAGE_FD, settings.tmpdir)
        sender, recipients = _read_envelope(ENVELOPE_FD)
        key = _client_key(env, notes)
        if key is not None:
            message = message.with_prefix(_client_field(env, key, sender, recipients))
        head, tail = request_frame(message.size, sender, recipients)
        last: Attempt | None = None
        for server in try_order(settings.servers):
            last = exchange(
                server,
                message,
                head,
                tail,
                connect_timeout=settings.connect_timeout,
                timeout=settings.timeout,
            )
            if last.code != ExitCode.QUEUED:
                notes.append(f"{server}: {last.note}")
            if not last.fail_over:
                break
    except Fatal as exc:
        notes.append(exc.text)
        return exc.code, False
    assert last is not None  # Settings refuses an empty server list
    return _final_code(last, settings.convention)


def _final_code(last: Attempt, convention: custom_error.Convention | None) -> tuple[int, bool]:
    if convention is None or last.answer is None or last.answer[0] == "K":
        return last.code, False
    letter, text = last.answer
    if not custom_error.write_text(convention.fd, custom_error.text_for_answer(letter, text)):
        return last.code, False
    return convention.exit_code, convention.fd == STDERR_FD


def _servers(env: Mapping[str, str], notes: list[str]) -> list[Server]:
    listed = env.get("QMQPSERVERS", "")
    if listed.strip():
        source = "$QMQPSERVERS"
        servers, complaints = parse_env(listed)
    else:
        source = os.path.join(env.get("QMAILHOME") or "/var/qmail", "control", "qmqpservers")
        try:
            with open(source, "rb") as handle:
                content = handle.read().decode("utf-8", "replace")
        except OSError as exc:
            raise Fatal(ExitCode.CONFIG_ERROR, f"cannot read {source}: {exc.strerror}") from None
        servers, complaints = parse_control_file(content)
    notes.extend(f"{source}: {complaint}; skipped" for complaint in complaints)
    if not servers:
        raise Fatal(ExitCode.CONFIG_ERROR, f"no usable QMQP server in {source}")
    return servers


def _client_key(env: Mapping[str, str], notes: list[str]) -> bytes | None:
    """The client key named by $QSIFT_CLIENT_KEY (or its old name); None: no X-Qsift-Client field."""
    if env.get("QSIFT_ORIG_QUEUE"):
        notes.append("QSIFT_ORIG_QUEUE is no longer used: qsift itself passes mail it marked unscanned")
    path = env.get("QSIFT_CLIENT_KEY", "")
    if not path and env.get("QSIFT_MARK_KEY"):
        path = env["QSIFT_MARK_KEY"]
        notes.append(f"QSIFT_MARK_KEY is read as QSIFT_CLIENT_KEY, its new name ({path}): rename it")
    if not path:
        return None
    try:
        with open(path, "rb") as stream:
            key = stream.read()
    except OSError as exc:
        notes.append(f"cannot read the client key {path}: {exc.strerror}; sent without the client context")
        return None
    if not key:
        # An HMAC under an empty key is one anybody can make: a forged field would pass for ours.
        notes.append(f"the client key {path} is empty; sent without the client context")
        return None
    return key


def _client_field(env: Mapping[str, str], key: bytes, sender: bytes, recipients: Sequence[bytes]) -> bytes:
    """The signed X-Qsift-Client line: what qmail-smtpd's environment says about the client."""
    # Imported here only: hmac and hashlib cost about 3 ms, paid only where the key is set up.
    from qsift.wire import client_context

    context = client_context.context_from_env(env)
    return client_context.make_field(key, context, sender, recipients, int(time.time()))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    # Also refuses nan and inf: every wait must end.
    if not 0 < value < float("inf"):
        raise Fatal(ExitCode.CONFIG_ERROR, f"{name}={raw!r} is not a positive number of seconds")
    return value


def _read_envelope(fd: int) -> tuple[bytes, list[bytes]]:
    chunks: list[bytes] = []
    try:
        while data := os.read(fd, 65536):
            chunks.append(data)
    except OSError as exc:
        raise Fatal(ExitCode.READ_ERROR, f"cannot read the envelope on fd {fd}: {exc.strerror}") from None
    try:
        return parse_envelope(b"".join(chunks))
    except ProtocolError as exc:
        raise Fatal(ExitCode.ENVELOPE_FORMAT, f"{exc}; nothing sent") from None


def _write_stderr(lines: list[str]) -> None:
    if lines:
        _write_raw("".join(f"{PROGRAM}: {line}\n" for line in lines))


def _write_raw(text: str) -> None:
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(STDERR_FD, data) :]
    except OSError:
        return  # stderr is closed: there is nowhere left to report to


if __name__ == "__main__":
    run()
