"""rspamd's HTTP protocol (`POST /checkv2`, docs.rspamd.com protocol.md), sans-IO.

Three pieces: the request head (the envelope travels in rspamd's own HTTP headers), a small HTTP/1.x
response reader, and the JSON reply. The reader handles what an HTTP/1.1 server may legally send back
to one request with `Connection: close`: a body framed by Content-Length, by chunked transfer coding,
or by the end of the connection. It is not a general HTTP client; rspamd is the only peer, on loopback
or a trusted network, and a dependency (aiohttp, h11) would cost more than these hundred lines.

Malformed input raises ProtocolError: a reply that cannot be read is a scanner error, never a score.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qsift.errors import ProtocolError

#: The actions rspamd documents; custom actions exist too, so others are accepted as given.
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")

_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f]")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HEADER = re.compile(rb"([!#-'*+.0-9A-Z^-z|~-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_LONGEST_CHUNK_LINE = 1024


def request_head(
    content_length: int,
    *,
    ip: str | None = None,
    helo: str | None = None,
    sender: str | None = None,
    recipients: Sequence[str] = (),
    queue_id: str | None = None,
    user: str | None = None,
    host: str | None = None,
    http_host: str = "localhost",
) -> bytes:
    """The request line and headers for one message of `content_length` bytes.

    `sender` "" is the null sender, sent as `<>`; `host` is the client's resolved host name (rspamd's
    `Hostname`), `http_host` the HTTP `Host` header HTTP/1.1 requires. Raises ValueError for a value
    that could end its header line (CR, LF, NUL or any other control character).
    """
    if content_length < 0:
        raise ValueError("content length must not be negative")
    fields: list[tuple[str, str]] = [
        ("Host", http_host),
        ("Connection", "close"),
        ("Content-Length", str(content_length)),
    ]
    optional = {"IP": ip, "Helo": helo, "Hostname": host, "Queue-Id": queue_id, "User": user}
    fields += [(name, value) for name, value in optional.items() if value is not None]
    if sender is not None:
        fields.append(("From", sender or "<>"))
    fields += [("Rcpt", recipient) for recipient in recipients]
    lines = ["POST /checkv2 HTTP/1.1"]
    for name, value in fields:
        if _BAD_VALUE.search(value):
            raise ValueError(f"rspamd {name} header {value!r} holds a control character")
        lines.append(f"{name}: {value}")
    # surrogateescape: envelope addresses keep the exact bytes they came as (qsift.model.address_bytes).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


# --- the HTTP response --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    #: Header names in lower case, in the order received.
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


class _Phase(enum.Enum):
    HEAD = enum.auto()
    BODY_LENGTH = enum.auto()
    BODY_TO_EOF = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()
    TRAILER = enum.auto()
    DONE = enum.auto()


class HttpResponseParser:
    """Reads one HTTP/1.x response, holding at most `max_head` bytes of head and `max_body` of body."""

    def __init__(self, *, max_head: int = 16 * 1024, max_body: int = 4 * 1024 * 1024) -> None:
        self._max_head = max_head
        self._max_body = max_body
        self._phase = _Phase.HEAD
        self._buffer = bytearray()
        self._head_size = 0
        self._status: tuple[int, str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._left = 0  # body or chunk bytes still to come
        self._body = bytearray()

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once the response is complete (the caller may stop reading)."""
        self._buffer += data
        while self._step():
            pass
        if self._phase is _Phase.DONE and self._buffer:
            raise ProtocolError("HTTP response followed by further bytes")
        return self._phase is _Phase.DONE

    def finish(self) -> HttpResponse:
        """The connection closed: the response, or ProtocolError if it was cut short."""
        if self._phase is _Phase.BODY_TO_EOF:
            self._phase = _Phase.DONE
        if self._phase is not _Phase.DONE or self._status is None:
            raise ProtocolError("HTTP response ended early")
        status, reason = self._status
        return HttpResponse(status, reason, tuple(self._headers), bytes(self._body))

    # One step each: consume what the phase needs and return True, or return False to wait for bytes.

    def _step(self) -> bool:
        phase = self._phase
        if phase is _Phase.HEAD or phase is _Phase.TRAILER:
            return self._head_line(self._max_head)
        if phase is _Phase.BODY_LENGTH or phase is _Phase.CHUNK_DATA:
            return self._counted_body()
        if phase is _Phase.BODY_TO_EOF:
            self._add_body(bytes(self._buffer))
            self._buffer.clear()
            return False
        if phase is _Phase.CHUNK_SIZE:
            return self._chunk_size()
        if phase is _Phase.CHUNK_END:
            return self._chunk_end()
        return False  # DONE

    def _line(self, limit: int) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > limit:
                raise ProtocolError(f"HTTP response line longer than {limit} bytes")
            return None
        if end >= limit:
            raise ProtocolError(f"HTTP response line longer than {limit} bytes")
        line = bytes(self._buffer[:end]).removesuffix(b"\r")
        del self._buffer[: end + 1]
        return line

    def _head_line(self, limit: int) -> bool:
        line = self._line(limit - self._head_size)
        if line is None:
            return False
        self._head_size += len(line) + 1
        if self._phase is _Phase.TRAILER:
            # Trailer fields are read and dropped: nothing rspamd sends is needed from them.
            if not line:
                self._phase = _Phase.DONE
        elif self._status is None:
            self._status = _parse_status(line)
        elif line:
            self._headers.append(_parse_header(line))
        else:
            self._end_of_head()
        return True

    def _end_of_head(self) -> None:
        assert self._status is not None
        if 100 <= self._status[0] < 200:
            # An interim response (100 Continue): the real one follows.
            self._status, self._head_size = None, 0
            self._headers.clear()
            return
        encoding = self._single("content-encoding")
        if encoding not in (None, "identity"):
            raise ProtocolError(f"HTTP response has a Content-Encoding qsift did not ask for: {encoding!r}")
        transfer = self._single("transfer-encoding")
        length = self._single("content-length")
        if transfer is not None:
            if transfer.lower() != "chunked":
                raise ProtocolError(f"HTTP response has an unsupported Transfer-Encoding: {transfer!r}")
            self._phase = _Phase.CHUNK_SIZE
        elif self._status[0] in (204, 304):
            self._phase = _Phase.DONE
        elif length is not None:
            if not length.isdigit() or len(length) > 12 or int(length) > self._max_body:
                raise ProtocolError(f"HTTP response has a bad or too large Content-Length: {length!r}")
            self._left = int(length)
            self._phase = _Phase.BODY_LENGTH if self._left else _Phase.DONE
        else:
            self._phase = _Phase.BODY_TO_EOF
        self._head_size = 0  # the trailer gets its own allowance

    def _single(self, name: str) -> str | None:
        """A header that must not be given twice with different values (request smuggling's material)."""
        values = {value for key, value in self._headers if key == name}
        if len(values) > 1:
            raise ProtocolError(f"HTTP response has conflicting {name} headers")
        return values.pop() if values else None

    def _counted_body(self) -> bool:
        if not self._buffer:
            return False
        taken = bytes(self._buffer[: self._left])
        del self._buffer[: len(taken)]
        self._add_body(taken)
        self._left -= len(taken)
        if self._left == 0:
            self._phase = _Phase.DONE if self._phase is _Phase.BODY_LENGTH else _Phase.CHUNK_END
        return True

    def _chunk_size(self) -> bool:
        line = self._line(_LONGEST_CHUNK_LINE)
        if line is None:
            return False
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"HTTP response has a bad chunk size line: {line[:40]!r}")
        self._left = int(match[1], 16)
        if len(self._body) + self._left > self._max_body:
            raise ProtocolError(f"HTTP response body longer than {self._max_body} bytes")
        self._phase = _Phase.CHUNK_DATA if self._left else _Phase.TRAILER
        return True

    def _chunk_end(self) -> bool:
        line = self._line(_LONGEST_CHUNK_LINE)
        if line is None:
            return False
        if line:
            raise ProtocolError("HTTP response chunk not followed by CR LF")
        self._phase = _Phase.CHUNK_SIZE
        return True

    def _add_body(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > self._max_body:
            raise ProtocolError(f"HTTP response body longer than {self._max_body} bytes")


def _parse_status(line: bytes) -> tuple[int, str]:
    match = _STATUS.fullmatch(line)
    if match is None:
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(match[1]), (match[2] or b"").decode("latin-1")


def _parse_header(line: bytes) -> tuple[str, str]:
    match = _HEADER.fullmatch(line)
    if match is None:
        raise ProtocolError(f"HTTP response header is not 'Name: value': {line[:80]!r}")
    return match[1].decode("ascii").lower(), match[2].decode("latin-1")


# --- the JSON reply -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RspamdReply:
    score: float
    required_score: float
    #: One of ACTIONS, or a custom action's name.
    action: str
    #: The names of the symbols that hit, in the order rspamd listed them.
    symbols: tuple[str, ...]
    #: `messages.smtp_message`: text meant for the SMTP reply, control characters made spaces; "" if none.
    smtp_message: str = ""
    #: rspamd stopped before running every rule: a pre-result (GTUBE, a ratelimit, `Flags: skip`) decided.
    skipped: bool = False
    #: The header fields rspamd asks the MTA to add: `DKIM-Signature` (its `dkim-signature`) and the names
    #: in `milter.add_headers` (Authentication-Results, X-Spamd-Result, ...). qsift adds none of them: it
    #: signs and writes Authentication-Results itself (docs/dkim.md says why); they are logged, not lost.
    header_fields: tuple[str, ...] = ()


def parse_reply(status_code: int, body: bytes) -> RspamdReply:
    """The /checkv2 reply from its HTTP status and body; ProtocolError for anything else."""
    if status_code != 200:
        raise ProtocolError(f"rspamd answered HTTP {status_code}: {_error_text(body)}")
    document = _load_json(body)
    if not isinstance(document, dict):
        raise ProtocolError("rspamd reply is not a JSON object")
    skipped = document.get("is_skipped", False)
    action = document.get("action")
    symbols = document.get("symbols", {})
    messages = document.get("messages", {})
    if not isinstance(skipped, bool):
        raise ProtocolError(f"rspamd reply has a bad is_skipped: {skipped!r}")
    if not isinstance(action, str) or not action:
        raise ProtocolError(f"rspamd reply has a bad action: {action!r}")
    if not isinstance(symbols, dict):
        raise ProtocolError("rspamd reply has symbols that are not an object")
    if not isinstance(messages, dict) or not isinstance(messages.get("smtp_message", ""), str):
        raise ProtocolError("rspamd reply has a bad messages object")
    return RspamdReply(
        score=_number(document, "score"),
        required_score=_number(document, "required_score"),
        action=action,
        symbols=tuple(symbols),
        smtp_message=_clean(messages.get("smtp_message", "")),
        skipped=skipped,
        header_fields=_asked_fields(document),
    )


def _asked_fields(document: dict[str, object]) -> tuple[str, ...]:
    names = ["DKIM-Signature"] if document.get("dkim-signature") else []
    milter = document.get("milter")
    added = milter.get("add_headers") if isinstance(milter, dict) else None
    if isinstance(added, dict):
        names += [_clean(str(name)) for name in added]
    return tuple(names)


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting such as [[[[...]]]]
        raise ProtocolError(f"rspamd reply is not JSON: {str(exc)[:100]}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number rspamd sends")


def _error_text(body: bytes) -> str:
    """rspamd's `{"error": "..."}`, or the start of whatever else came (a proxy's HTML page)."""
    try:
        document = _load_json(body)
    except ProtocolError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return _clean(document["error"])
    return _clean(body[:200].decode("utf-8", "replace"))


def _number(document: dict[str, object], key: str) -> float:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"rspamd reply has a bad {key}: {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(f"rspamd reply has a {key} out of range")
    return number


def _clean(text: str) -> str:
    return _BAD_VALUE.sub(" ", text)[:500]
