"""A streaming MIME walk: entities read line by line from a file, bodies decoded as they pass.

The standard `email` package parses a whole message into memory, several times over (the raw bytes,
the lines, the joined payload, the decoded payload): a 40 MB message peaked at 375 MB. Here the file is
read a block at a time and a body is handed on in pieces of at most `LINE_CHUNK` bytes; each leaf's
decoded bytes go to a sink that counts them against the decoder's bounds and spills them to disk.
Headers of each entity, which are small, are still parsed by the `email` package, so content types,
parameters (RFC 2231) and file names mean exactly what they mean there.

Boundaries follow RFC 2046 §5.1.1: a delimiter is `--boundary` at the start of a line, possibly
followed by white space; the line break before it belongs to the delimiter. Any enclosing boundary also
ends a part (a missing close delimiter must not swallow the rest of the message).
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.policy
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

#: Longest piece of a line handled at once; longer lines come in pieces (never a boundary).
LINE_CHUNK = 64 * 1024
#: Multiparts inside multiparts; deeper ones are read as one leaf (and the walker calls that unchecked).
MAX_NESTING = 64
_HEADER_LIMIT = 1024 * 1024
_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_PREAMBLE_KEEP = 4 * 1024 * 1024
#: A line with its end: CR LF, LF, or a bare CR (which the forward sends as CR LF); or a last one without.
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_BARE_CR = re.compile(rb"\r(?!\n)")
#: How much of the file is read at once.
_BLOCK = 256 * 1024


@dataclass(frozen=True)
class Entity:
    """One MIME entity's header, parsed; the body is streamed separately."""

    header: email.message.Message
    path: str
    #: Structural problems seen while reading this entity (names of `email.errors` defect classes).
    defects: tuple[str, ...]

    @property
    def content_type(self) -> str:
        return self.header.get_content_type()


class Events(Protocol):
    """What the walker does with what the reader finds (decode/walk.py implements it)."""

    def leaf(self, entity: Entity, body: Iterator[bytes]) -> None:
        """A leaf and its decoded body, which must be read to its end (or drained)."""

    def message_start(self, entity: Entity) -> bool:
        """An attached message/rfc822 begins; False to skip its content."""

    def message_end(self) -> None:
        """The attached message that `message_start` accepted has ended."""

    def structure(self, entity: Entity) -> None:
        """A multipart entity, for its defects."""


class _Lines:
    """Lines of a binary file, long ones in pieces, with one step of push-back.

    A bare CR ends a line, as LF and CR LF do: the SMTP and LMTP forward sends it as CR LF
    (wire/smtp_data.py), so what follows it is a line of its own downstream: a delimiter or a header
    field there must be one here, or a part the next hop sees is never looked at.

    The file is read in blocks of `_BLOCK` bytes: a base64 body is one 77-octet line after another, and
    reading each with its own `readline` cost more than decoding it.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buffer = b""
        self._position = 0
        self._eof = False
        self._back: tuple[bytes, bool] | None = None
        self._at_line_start = True
        self._split: deque[bytes] = deque()  # the lines of a piece cut at bare CRs, not handed out yet
        self._carry = b""  # a line's start after a bare CR, read on with the next piece

    def next(self) -> tuple[bytes, bool] | None:
        """(piece, starts_a_line), or None at the end."""
        if self._back is not None:
            item, self._back = self._back, None
            return item
        piece = self._read_piece()
        if not piece:
            return None
        starts = self._at_line_start
        self._at_line_start = piece.endswith((b"\n", b"\r"))
        return piece, starts

    def run(self) -> bytes | None:
        """Whole lines, at most `LINE_CHUNK` bytes in all, none starting with "-" (so none a delimiter)
        and none ending in a bare CR; None when the next line is not one (read it with `next`)."""
        if self._back is not None or self._split or self._carry or not self._at_line_start:
            return None
        self._fill(LINE_CHUNK)
        start = self._position
        buffer = self._buffer
        if buffer[start : start + 1] in (b"-", b""):
            return None
        end = buffer.rfind(b"\n", start, start + LINE_CHUNK)
        if end < 0:
            return None
        dash = buffer.find(b"\n-", start, end)
        if dash >= 0:
            end = dash
        bare_cr = _BARE_CR.search(buffer, start, end)
        if bare_cr is not None:
            end = buffer.rfind(b"\n", start, bare_cr.start())
            if end < 0:
                return None
        self._position = end + 1
        return buffer[start : end + 1]

    def _fill(self, wanted: int) -> None:
        """At least `wanted` bytes buffered past the position, or all the file has left."""
        while len(self._buffer) - self._position < wanted and not self._eof:
            block = self._stream.read(_BLOCK)
            if not block:
                self._eof = True
            self._buffer = self._buffer[self._position :] + block
            self._position = 0

    def _readline(self, limit: int) -> bytes:
        """As a binary file's `readline(limit)`, from the buffer."""
        self._fill(limit)
        start = self._position
        end = self._buffer.find(b"\n", start, start + limit)
        stop = end + 1 if end >= 0 else min(start + limit, len(self._buffer))
        self._position = stop
        return self._buffer[start:stop]

    def _read_piece(self) -> bytes:
        if self._split:
            return self._split.popleft()
        carry = self._carry
        if carry:
            self._carry = b""
            piece = carry + self._readline(max(1, LINE_CHUNK - len(carry)))
        else:
            piece = self._readline(LINE_CHUNK)
        if piece.endswith(b"\r"):
            # Cut at the size bound, or the file's last octet: the next one says whether it is a CR LF.
            piece += self._readline(1)
        if b"\r" not in piece:
            return piece
        lines: list[bytes] = _LINE.findall(piece)
        if len(lines) == 1:
            return piece
        if not lines[-1].endswith(b"\n"):
            # Read on to its end, so that a delimiter there is whole (and a CR there may be a CR LF's).
            self._carry = lines.pop()
        self._split.extend(lines[1:])
        return lines[0]

    def push_back(self, item: tuple[bytes, bool]) -> None:
        self._back = item


@dataclass(frozen=True)
class _End:
    """Why an entity ended: the boundary line that ended it (b"" at end of file), and whether it closed."""

    boundary: bytes
    closing: bool


_EOF = _End(b"", False)


def walk(stream: IO[bytes], events: Events, *, prefix: str = "") -> None:
    """Read one message from `stream`, reporting its leaves and attached messages to `events`."""
    _Reader(_Lines(stream), events).message(prefix, ())


class _Reader:
    def __init__(self, lines: _Lines, events: Events) -> None:
        self.lines = lines
        self.events = events

    def message(self, prefix: str, boundaries: tuple[bytes, ...]) -> _End:
        header, defects = self._header(boundaries)
        if header is None:
            return _EOF
        # A multipart's own number disappears into its children's; anything else is part 1.
        splits = _is_multipart(header) and bool(header.get_boundary())
        entity_path = prefix if splits else _join(prefix, "1")
        return self._entity(Entity(header, entity_path, defects), boundaries)

    def _entity(self, entity: Entity, boundaries: tuple[bytes, ...]) -> _End:
        header = entity.header
        if _is_multipart(header):
            boundary = header.get_boundary()  # RFC 2231 forms collapsed, as the email package does
            if boundary and len(boundaries) < MAX_NESTING:
                return self._multipart(entity, boundary.encode("utf-8", "surrogateescape"), boundaries)
            # No boundary, or nested past any honest message's depth: one leaf, read as it is.
            defect = "MultipartNestingTooDeep" if boundary else "NoBoundaryInMultipartDefect"
            entity = Entity(header, entity.path, (*entity.defects, defect))
        cte = str(header.get("content-transfer-encoding", "")).strip().lower()
        # An encoded message/rfc822 (seen in the wild) is a leaf here; the walker reads it once decoded.
        if entity.content_type in _MESSAGE_TYPES and cte in ("", "7bit", "8bit", "binary"):
            if self.events.message_start(entity):
                end = self.message(entity.path, boundaries)
                self.events.message_end()
                return end
            skipped = _Body(self.lines, boundaries)
            for _ in skipped.pieces():
                pass
            return skipped.finish()
        body = _Body(self.lines, boundaries, runs=cte not in _LINE_DECODERS)
        self.events.leaf(entity, _decoded(body.pieces(), cte))
        return body.finish()

    def _multipart(self, entity: Entity, boundary: bytes, boundaries: tuple[bytes, ...]) -> _End:
        inner = (boundary, *boundaries)
        defects = list(entity.defects)
        cte = str(entity.header.get("content-transfer-encoding", "")).strip().lower()
        if cte not in ("", "7bit", "8bit", "binary"):
            defects.append("InvalidMultipartContentTransferEncodingDefect")
        # The preamble, up to the first delimiter. Kept (up to a bound) in case that delimiter never
        # comes: then, as in the email package, the whole body is one text part and is checked as such.
        preamble = _Body(self.lines, inner)
        kept: list[bytes] = []
        kept_size = 0
        for piece in preamble.pieces():
            if kept_size < _PREAMBLE_KEEP:
                kept.append(piece)
                kept_size += len(piece)
        end = preamble.finish()
        started = end.boundary == boundary and not end.closing
        if not started:
            defects.append("StartBoundaryNotFoundDefect")
        self.events.structure(Entity(entity.header, entity.path, tuple(defects)))
        if not started:
            self.events.leaf(Entity(entity.header, _join(entity.path, "1"), ()), iter(kept))
            if end.boundary != boundary:
                return end
        index = 0
        while end.boundary == boundary and not end.closing:
            index += 1
            header, child_defects = self._header(inner)
            if header is None:
                return _EOF
            if entity.content_type == "multipart/digest":
                header.set_default_type("message/rfc822")  # RFC 2046 §5.1.5
            end = self._entity(Entity(header, _join(entity.path, str(index)), child_defects), inner)
        if end.boundary != boundary:
            return end  # an enclosing boundary or the end of the file closed us
        epilogue = _Body(self.lines, boundaries)
        for _ in epilogue.pieces():
            pass
        return epilogue.finish()

    def _header(self, boundaries: tuple[bytes, ...]) -> tuple[email.message.Message | None, tuple[str, ...]]:
        """The header section up to its blank line; a line that is not a field starts the body."""
        collected = bytearray()
        defects: list[str] = []
        first = True
        while (item := self.lines.next()) is not None:
            piece, starts = item
            if starts and piece.strip(b"\r\n") == b"":
                break
            if starts and _delimiter(piece, boundaries) is not None:
                # A part with a header and no body: its delimiter follows at once.
                self.lines.push_back(item)
                break
            is_field = _FIELD.match(piece) is not None
            continuation = piece[:1] in (b" ", b"\t")
            if first and continuation:
                continue  # a continuation with nothing to continue: dropped, as the email package does
            if starts and not is_field and not continuation and not (first and piece.startswith(b"From ")):
                self.lines.push_back(item)
                defects.append("MissingHeaderBodySeparatorDefect")
                break
            first = False
            if len(collected) < _HEADER_LIMIT:
                collected += piece
        else:
            if not collected:
                return None, ()
        parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        return parser.parsebytes(bytes(collected)), tuple(defects)


def _is_multipart(header: email.message.Message) -> bool:
    return header.get_content_maintype() == "multipart"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _delimiter(line: bytes, boundaries: tuple[bytes, ...]) -> _End | None:
    """The boundary this line delimits, if it is a delimiter line of any of them."""
    if not line.startswith(b"--"):
        return None
    text = line.rstrip(b" \t\r\n")
    for boundary in boundaries:
        if text == b"--" + boundary:
            return _End(boundary, False)
        if text == b"--" + boundary + b"--":
            return _End(boundary, True)
    return None


class _Body:
    """A body's raw pieces up to the next delimiter of any enclosing boundary.

    With `runs`, lines that cannot be delimiters come several to a piece; without, one a piece (the
    line-based decoders need each line's end in a piece of its own).
    """

    def __init__(self, lines: _Lines, boundaries: tuple[bytes, ...], *, runs: bool = True) -> None:
        self._lines = lines
        self._boundaries = boundaries
        self._runs = runs
        self._end = _EOF

    def pieces(self) -> Iterator[bytes]:
        held = b""  # the line break before a delimiter belongs to the delimiter, so it waits
        lines = self._lines
        while True:
            run = lines.run() if self._runs else None
            if run is not None:
                piece, starts = run, False  # no delimiter among its lines
            elif (item := lines.next()) is not None:
                piece, starts = item
            else:
                break
            if starts and self._boundaries:
                end = _delimiter(piece, self._boundaries)
                if end is not None:
                    self._end = end
                    return
            if held:
                yield held
            # The line end, split off here rather than in a function: this runs once a line of every body.
            if piece.endswith(b"\r\n"):
                body, held = piece[:-2], b"\r\n"
            elif piece.endswith((b"\n", b"\r")):
                body, held = piece[:-1], piece[-1:]
            else:
                body, held = piece, b""
            if body:
                yield body
        if held:
            yield held

    def finish(self) -> _End:
        return self._end


def _decoded(pieces: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    decoder = _DECODERS.get(encoding)
    return decoder(pieces) if decoder is not None else pieces


# Everything but the base64 alphabet and its padding, which decoders skip (RFC 2045 §6.8).
_NOT_BASE64 = bytes(
    set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
)


def _base64(pieces: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for piece in pieces:
        # Junk is dropped before counting, so a chunk boundary never cuts a group of four.
        pending += piece.translate(None, _NOT_BASE64)
        usable = len(pending) // 4 * 4
        if usable >= 4096:
            yield _b64(pending[:usable])
            pending = pending[usable:]
    if len(pending) % 4 == 1:
        pending = pending[:-1]  # one lone character carries no whole byte
    if pending:
        yield _b64(pending + b"=" * (-len(pending) % 4))


def _b64(data: bytes) -> bytes:
    if b"=" not in data.rstrip(b"="):
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            pass  # "incorrect padding": decode group by group below
    # Padding in the middle (pieces glued together by a broken encoder): binascii would stop at the
    # first "=" and hide the rest; decode every group, as a filter must see what a client might show.
    out = bytearray()
    for group in re.split(rb"=+", data):
        whole = group[: len(group) // 4 * 4]
        rest = group[len(whole) :]
        if whole:
            out += binascii.a2b_base64(whole)
        if len(rest) >= 2:
            out += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
    return bytes(out)


def _quoted_printable(pieces: Iterator[bytes]) -> Iterator[bytes]:
    line = b""
    for piece in pieces:
        line += piece
        if line.endswith(b"\n"):
            yield binascii.a2b_qp(line)
            line = b""
        elif len(line) >= LINE_CHUNK:
            # Decode a long line in pieces, never cutting an "=XX" escape or a soft break in two.
            cut = line.rfind(b"=", len(line) - 2)
            cut = cut if cut >= 0 else len(line)
            yield binascii.a2b_qp(line[:cut])
            line = line[cut:]
    if line:
        yield binascii.a2b_qp(line)


def _uuencoded(pieces: Iterator[bytes]) -> Iterator[bytes]:
    started = ended = False
    line = b""
    for piece in pieces:
        if ended:
            continue  # read to the end all the same: the reader finds the next boundary after it
        line += piece
        if not line.endswith(b"\n") and len(line) < LINE_CHUNK:
            continue
        text, line = line.strip(), b""
        started, ended, data = _uu_step(text, started)
        if data:
            yield data
    if line and not ended:
        # The last line before a delimiter has lost its line break to the delimiter.
        _, _, data = _uu_step(line.strip(), started)
        if data:
            yield data


def _uu_step(text: bytes, started: bool) -> tuple[bool, bool, bytes]:
    """(started, ended, decoded bytes) after one line of a uuencoded body."""
    if not started:
        return text.startswith(b"begin "), False, b""
    if text == b"end":
        return True, True, b""
    if text and text != b"`":
        return True, False, _uu(text)
    return True, False, b""


def _uu(line: bytes) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        length = (line[0] - 32) & 0x3F
        try:
            return binascii.a2b_uu(line[: 1 + (length + 2) // 3 * 4])
        except binascii.Error:
            return b""


_DECODERS: dict[str, Callable[[Iterator[bytes]], Iterator[bytes]]] = {
    "base64": _base64,
    "quoted-printable": _quoted_printable,
    "x-uuencode": _uuencoded,
    "uuencode": _uuencoded,
    "x-uue": _uuencoded,
    "uue": _uuencoded,
}
#: Decoders that take a body a line at a time.
_LINE_DECODERS = frozenset(_DECODERS) - {"base64"}
