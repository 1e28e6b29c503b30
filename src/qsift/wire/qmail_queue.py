"""The qmail-queue interface (qmail-queue(8), qmail.c): the fd 1 envelope, exit codes, custom errors.

The envelope is `F<sender>\\0`, then `T<recipient>\\0` per recipient, then one more `\\0`. Exit code 0
means queued; 11-40 are permanent failures and every other code is temporary, as in qmail.c's default
branch (which also lists 115 beside 11, so 115 is permanent too). The texts are qmail.c's own, which
qmail-smtpd puts after 451/554.
"""

from __future__ import annotations

from qsift.errors import BadAddress, ProtocolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (qsift-queue's start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterable

#: qmail.c reads at most this many bytes of a custom error (notqmail `qmail_errstr`).
MAX_CUSTOM_ERROR = 255


class ExitCode:
    """Every exit code qmail-queue(8) and qmail.c give a meaning to.

    Plain int constants rather than an IntEnum: qsift-queue imports this for every message, and
    importing enum cost it about 3 ms of a 20 ms run (bench/queue_startup.py).
    """

    QUEUED = 0
    ADDRESS_TOO_LONG = 11
    PERMANENT_REJECT = 31
    OUT_OF_MEMORY = 51
    TIMEOUT = 52
    WRITE_ERROR = 53
    READ_ERROR = 54
    CONFIG_ERROR = 55
    NETWORK_ERROR = 56
    HOME_DIR_ERROR = 61
    QUEUE_DIR_ERROR = 62
    QUEUE_PID_ERROR = 63
    QUEUE_MESS_ERROR = 64
    QUEUE_INTD_ERROR = 65
    QUEUE_TODO_ERROR = 66
    TEMPORARY_REJECT = 71
    CONNECT_TIMEOUT = 72
    CONNECT_REFUSED = 73
    COMMUNICATION_FAILED = 74
    INTERNAL_BUG = 81
    CUSTOM_ERROR = 82
    ENVELOPE_FORMAT = 91
    ADDRESS_TOO_LONG_COMPAT = 115
    EXEC_FAILED = 120


ALL_EXIT_CODES = tuple(sorted(v for k, v in vars(ExitCode).items() if k.isupper()))

# qmail.c's qmail_close() strings, without the leading D/Z.
_TEXTS = {
    0: "queued",
    11: "envelope address too long for qq (#5.1.3)",
    31: "mail server permanently rejected message (#5.3.0)",
    51: "qq out of memory (#4.3.0)",
    52: "qq timeout (#4.3.0)",
    53: "qq write error or disk full (#4.3.0)",
    54: "qq read error (#4.3.0)",
    55: "qq unable to read configuration (#4.3.0)",
    56: "qq trouble making network connection (#4.3.0)",
    61: "qq trouble in home directory (#4.3.0)",
    62: "qq trouble creating files in queue (#4.3.0)",
    63: "qq trouble creating files in queue (#4.3.0)",
    64: "qq trouble creating files in queue (#4.3.0)",
    65: "qq trouble creating files in queue (#4.3.0)",
    66: "qq trouble creating files in queue (#4.3.0)",
    71: "mail server temporarily rejected message (#4.3.0)",
    72: "connection to mail server timed out (#4.4.1)",
    73: "connection to mail server rejected (#4.4.1)",
    74: "communication with mail server failed (#4.4.2)",
    81: "qq internal bug (#4.3.0)",
    91: "qq internal bug (#4.3.0)",
    115: "envelope address too long for qq (#5.1.3)",
    120: "unable to exec qq (#4.3.0)",
}
_PERMANENT_DEFAULT = "qq permanent problem (#5.3.0)"
_TEMPORARY_DEFAULT = "qq temporary problem (#4.3.0)"


def is_permanent(code: int) -> bool:
    """True if qmail.c turns this exit code into a D (permanent) answer."""
    return 11 <= code <= 40 or code == ExitCode.ADDRESS_TOO_LONG_COMPAT


def describe(code: int) -> str:
    """qmail.c's text for an exit code, without the D/Z letter; 82 without a custom text included."""
    text = _TEXTS.get(code)
    if text is not None:
        return text
    return _PERMANENT_DEFAULT if is_permanent(code) else _TEMPORARY_DEFAULT


def answer_for_exit(code: int, custom: bytes | None) -> tuple[str, str]:
    """The QMQP letter and text for a qmail-queue program's exit code (and fd 6 text, if any)."""
    if code == ExitCode.QUEUED:
        return "K", describe(code)
    if (
        code == ExitCode.CUSTOM_ERROR
        and custom is not None
        and len(custom) > 2
        and custom[:1] in (b"D", b"Z")
    ):
        text = _printable(custom[1:MAX_CUSTOM_ERROR].decode("utf-8", "replace")).strip()
        return chr(custom[0]), text
    return ("D" if is_permanent(code) else "Z"), describe(code)


def custom_error_text(letter: str, text: str, enhanced_status: str) -> bytes:
    """What a queue program writes on the custom-error descriptor: `Dtext (#5.x.y)`, at most 255 bytes.

    qmail-smtpd copies it into its reply line verbatim, so control characters are removed; the text is
    shortened (never the status) to fit what qmail.c reads.
    """
    if letter not in ("D", "Z"):
        raise ValueError(f"custom error letter must be D or Z, not {letter!r}")
    suffix = f" (#{_printable(enhanced_status)})".encode()
    room = MAX_CUSTOM_ERROR - 1 - len(suffix)
    body = _printable(text).encode("utf-8", "replace")
    if len(body) > room:
        body = body[:room].decode("utf-8", "ignore").encode()
    return letter.encode("ascii") + body + suffix


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")


# --- the envelope on fd 1 ---------------------------------------------------------------------------------


def encode_envelope(sender: bytes, recipients: Iterable[bytes]) -> bytes:
    """`F<sender>\\0T<recipient>\\0...\\0`, as qmail.c writes it to fd 1."""
    parts = [b"F", _no_nul(sender), b"\0"]
    for recipient in recipients:
        parts += (b"T", _no_nul(recipient), b"\0")
    parts.append(b"\0")
    return b"".join(parts)


def _no_nul(address: bytes) -> bytes:
    if b"\0" in address:
        raise BadAddress("address contains NUL")
    return address


def parse_envelope(data: bytes) -> tuple[bytes, list[bytes]]:
    """(sender, recipients) from the bytes a caller wrote to fd 1, all of them.

    Raises ProtocolError, which a queue program turns into exit 91, for everything qmail-qmqpc refuses
    (no F record, a record not starting with T, an unterminated record, no final NUL) and for bytes after
    the final NUL, which no qmail caller writes.
    """
    records = data.split(b"\0")
    # split() leaves the bytes after the last NUL as the final element: b"" when data ends with NUL.
    if records[-1]:
        raise ProtocolError("envelope format error: unterminated record")
    records.pop()
    if not records or not records[0].startswith(b"F"):
        raise ProtocolError("envelope format error: no F record first")
    try:
        end = records.index(b"", 1)
    except ValueError:
        raise ProtocolError("envelope format error: no final NUL") from None
    if end != len(records) - 1:
        raise ProtocolError("envelope format error: bytes after the final NUL")
    recipients = records[1:end]
    for record in recipients:
        if not record.startswith(b"T"):
            raise ProtocolError("envelope format error: record does not start with T")
    return records[0][1:], [record[1:] for record in recipients]
