"""The copy of a message a spam scanner is sent: every byte SpamAssassin's rules read, attachments cut short.

spamd spends much of its time on bytes its rules gain nothing from (bench/spamd_cost.py, 2026-12-03):
a message with a 100 kB CSV attachment cost it about 650 ms against 48 ms without (SpamAssassin reads
any text/* but calendar and vcard as text/plain, and runs every body rule over it); a 300 kB base64 PDF
or JPEG added 13-18 ms. amavisd-new cuts what it passes to SpamAssassin at `$sa_mail_body_size_limit`;
this copy keeps what the rules read and leaves out the rest:

- the message's header and every entity's header, whole: rules on attachment names, types and
  encodings see them;
- text parts whole (SpamAssassin renders text/plain and text/html for its body rules and reads every
  text/* and message/* for rawbody);
- of a leaf it cannot render (image, application, audio...) sent base64, and with `text_attachments` of
  a text attachment (Content-Disposition: attachment) declared other than text/plain or text/html, the
  first `attachment_head` bytes of its encoded body (whole lines): still there, still base64, with its
  start;
- the whole cut at `limit` bytes, as amavisd-new does (a longer text body is checked by its start).

A part is cut short only while the structure is plain: its header has one Content-Type (read as
SpamAssassin reads it, Mail::SpamAssassin::Util::parse_content_type) and, for a binary leaf, one
Content-Transfer-Encoding, base64; a base64 line is left out only while it is nothing but base64
alphabet, and a text line only while it cannot be a delimiter. Anything else (a boundary this reader
does not expect, a character outside the alphabet, an oversized header, nesting past `MAX_NESTING`) and
the rest of the message is copied as it is, so a malformed message is never sent bigger than whole, and
a message crafted to make this reader and SpamAssassin's disagree loses nothing SpamAssassin would read
as the message's text.

Sans-IO: `feed` takes bytes in pieces of any size and returns what to send; `finish` the rest. Memory
is bounded by `LINE_LIMIT` plus a header's `HEADER_LIMIT`, whatever the input.
"""

from __future__ import annotations

import enum
import re

#: An entity header longer than this is copied, and the rest of the message with it, as it is.
HEADER_LIMIT = 64 * 1024
#: Longest piece of a line held at once; a longer line is content (no boundary, no header field is).
LINE_LIMIT = 64 * 1024
#: Multiparts inside multiparts (and attached messages) before the rest is copied as it is.
MAX_NESTING = 32
#: Entities (parts and attached messages) read before the rest is copied as it is.
MAX_PARTS = 1000

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n]")
_FIELD_NAME = re.compile(rb"^([^\x00-\x20\x7f:]+)[ \t]*:")
#: SpamAssassin's own: quoted up to the next quote (the closing one may be missing), or a token.
_BOUNDARY = re.compile(r"""\bboundary\s*=\s*("[^"]+|[^\s";]+(?=[\s;]|$))""", re.IGNORECASE)
_MEDIA_TYPE = re.compile(r"^([^/]+(?:/[^/\s]*)?)", re.DOTALL)
_DROPPED_TYPE_CHARS = re.compile(r'[\x00-\x20\x7f-\xff"(),:-?@\[-\]]')
_TEXT_KEPT_AS_IS = re.compile(r"^text/(?:x-vcard|calendar|html)$")


class _Mode(enum.Enum):
    HEADER = "an entity's header"
    KEEP = "a body copied whole"
    HEAD = "the start of an attachment's base64"
    CUT = "the rest of an attachment's base64, left out"
    COPY = "the rest of the message, copied as it is"


def spamassassin_type(fields: list[str]) -> tuple[str, str | None]:
    """(media type, boundary) of an entity whose Content-Type fields are `fields`, as SpamAssassin
    reads them: the last field, text/* other than html, calendar and x-vcard read as text/plain, a
    missing or empty type as text/plain."""
    value = fields[-1] if fields else ""
    found = _BOUNDARY.search(value)
    boundary = found.group(1).replace('"', "") if found else None
    media = value.lstrip().split(";", 1)[0]
    matched = _MEDIA_TYPE.match(media)
    media = matched.group(1).lower() if matched else ""
    if not media or (re.match(r"^text\b", media) and not _TEXT_KEPT_AS_IS.match(media)):
        media = "text/plain"
    return _DROPPED_TYPE_CHARS.sub("", media), boundary


class MailSlimmer:
    """Turns a message, fed in pieces, into the copy described above."""

    def __init__(self, *, attachment_head: int, limit: int, text_attachments: bool = True) -> None:
        self.attachment_head = attachment_head
        self.limit = limit
        self.text_attachments = text_attachments
        #: Bytes of the input left out so far (attachments' base64 and what came past `limit`).
        self.left_out = 0
        self._sent = 0
        self._pending = b""
        #: The pending bytes continue a line already passed on in part (so cannot start a boundary).
        self._mid_line = False
        self._mode = _Mode.HEADER
        self._header: list[bytes] = []
        self._header_size = 0
        #: Boundaries of the multiparts we are inside, innermost last.
        self._boundaries: list[bytes] = []
        #: For each boundary, its delimiter lines as SpamAssassin matches them: /^--\Qb\E(--)?\s*$/.
        self._delimiters: list[re.Pattern[bytes]] = []
        #: Entities begun; past `MAX_PARTS` the rest is copied, so endless tiny parts cost no Python each.
        self._parts = 0
        #: Attached messages opened since the innermost multipart (their header comes without a delimiter).
        self._depth = 0
        self._head_left = 0
        #: The part being cut is text (left out line by line), not base64 (left out while it is base64).
        self._cutting_text = False

    @property
    def _copying(self) -> bool:
        return self._mode is _Mode.COPY

    @property
    def full(self) -> bool:
        """The copy reached `limit`: nothing more will be taken."""
        return self._sent >= self.limit

    def feed(self, data: bytes) -> bytes:
        """What to send of the next piece of the message."""
        if self.full:
            self.left_out += len(data)
            return b""
        out: list[bytes] = []
        if self._mode is _Mode.COPY:
            out.append(data)
        else:
            self._pending += data
            self._take_lines(out, final=False)
        return self._bounded(out)

    def finish(self) -> bytes:
        """What to send of the message's last bytes (a last line without its end)."""
        out: list[bytes] = []
        if not self.full and self._pending:
            self._take_lines(out, final=True)
        if self._header and not self.full:
            out.extend(self._header)  # a header the message ended in
            self._header = []
        return self._bounded(out)

    def _bounded(self, out: list[bytes]) -> bytes:
        data = b"".join(out)
        room = self.limit - self._sent
        if len(data) > room:
            self.left_out += len(data) - room
            data = data[:room]
        self._sent += len(data)
        if self.full:  # what is still held will not be sent either
            self.left_out += len(self._pending) + sum(map(len, self._header))
            self._pending, self._header = b"", []
        return data

    # --- lines ----------------------------------------------------------------------------------------

    def _take_lines(self, out: list[bytes], *, final: bool) -> None:
        pending = self._pending
        start = 0
        while start < len(pending) and self._mode is not _Mode.COPY:
            if self._mode is _Mode.CUT:
                start = self._cut_text(pending, start) if self._cutting_text else self._cut(pending, start)
                if self._copying or start == len(pending):
                    break
            elif self._mode is _Mode.KEEP:
                end = self._kept_lines_end(pending, start)
                out.append(pending[start:end])
                start = end
                if self._copying or start == len(pending):
                    break
            end = pending.find(b"\n", start)
            if end < 0:
                if not final and len(pending) - start <= LINE_LIMIT:
                    break
                end = min(len(pending), start + LINE_LIMIT) - 1
            self._line(pending[start : end + 1], out, whole=pending[end : end + 1] == b"\n")
            start = end + 1
        rest = pending[start:]
        if self._mode is _Mode.COPY:
            out.append(rest)
            rest = b""
        self._pending = rest

    def _cut(self, data: bytes, start: int) -> int:
        """Leave out whole lines of base64 from `start`; where the first line that is not one starts."""
        found = _NOT_BASE64.search(data, start)
        stop = found.start() if found else len(data)
        line_start = data.rfind(b"\n", start, stop) + 1 or start
        self.left_out += line_start - start
        if found is not None and found.start() > line_start:
            self._mode = _Mode.COPY  # base64 with something else in the line: not what we expected
        return line_start

    def _cut_text(self, data: bytes, start: int) -> int:
        """Leave out whole lines from `start` up to one that may be a delimiter."""
        end = self._plain_lines_end(data, start)
        self.left_out += end - start
        return end

    def _kept_lines_end(self, data: bytes, start: int) -> int:
        """Where the whole lines from `start` up to the innermost multipart's next delimiter end, found by
        a regex, so a body of many short lines costs no Python per line (a delimiter of an outer multipart
        is kept as content here, as SpamAssassin reads it). Outside any multipart the body runs to the end
        of the message: the rest is copied."""
        if not self._boundaries:
            self._mode = _Mode.COPY
            return start
        if self._mid_line:
            start = self._plain_lines_end(data, start)
            if self._mid_line:
                return start
        found = self._delimiters[-1].search(data, start)
        return found.start() if found else data.rfind(b"\n", start) + 1 or start

    def _plain_lines_end(self, data: bytes, start: int) -> int:
        """Where the whole lines from `start` that cannot be delimiters end: found by `bytes.find`, so a
        body of many short lines costs no Python per line."""
        if not self._mid_line and data.startswith(b"--", start):
            return start
        found = data.find(b"\n--", start)
        end = found + 1 if found >= 0 else data.rfind(b"\n", start) + 1 or start
        if end > start:
            self._mid_line = False  # past the end of a line, perhaps a long one taken in pieces
        return end

    def _line(self, line: bytes, out: list[bytes], *, whole: bool) -> None:
        starts_line = not self._mid_line
        self._mid_line = not whole
        if self._mode is _Mode.HEADER:
            self._header_line(line, out, starts_line=starts_line, whole=whole)
        elif starts_line and line.startswith(b"--") and self._delimiter(line, out):
            pass
        elif self._mode is _Mode.CUT:
            if self._cutting_text or not line.strip():
                self.left_out += len(line)  # text, or a blank line after the base64
            else:
                self._to_copy(line, out)  # only base64, blank lines or a delimiter may come here
        else:
            out.append(line)
            if self._mode is _Mode.HEAD:
                self._head_left -= len(line)
                if self._head_left <= 0 and whole:
                    self._mode = _Mode.CUT

    def _delimiter(self, line: bytes, out: list[bytes]) -> bool:
        """Whether `line` was taken as a delimiter. The innermost multipart's starts its next part or
        closes it; an outer one's (SpamAssassin reads only the innermost's), or any line starting "--"
        in the middle of a cut, ends the slimming."""
        text = line.rstrip()
        innermost = self._boundaries[-1] if self._boundaries else None
        if innermost is not None and text in (b"--" + innermost, b"--" + innermost + b"--"):
            out.append(line)
            if text == b"--" + innermost:
                self._mode = _Mode.HEADER
            else:
                self._boundaries.pop()
                self._delimiters.pop()
                self._mode = _Mode.KEEP
            self._depth = 0
            return True
        outer = any(text in (b"--" + b, b"--" + b + b"--") for b in self._boundaries[:-1])
        if outer or self._mode is _Mode.CUT:
            self._to_copy(line, out)
            return True
        return False

    def _to_copy(self, line: bytes, out: list[bytes]) -> None:
        out.append(line)
        self._mode = _Mode.COPY

    # --- headers --------------------------------------------------------------------------------------

    def _header_line(self, line: bytes, out: list[bytes], *, starts_line: bool, whole: bool) -> None:
        self._header.append(line)
        self._header_size += len(line)
        if self._header_size > HEADER_LIMIT or not whole:
            self._flush_header(out)
            self._mode = _Mode.COPY
            return
        if starts_line and line in (b"\n", b"\r\n"):
            fields = self._fields()
            self._flush_header(out)
            self._begin_body(fields)

    def _flush_header(self, out: list[bytes]) -> None:
        out.extend(self._header)
        self._header = []
        self._header_size = 0

    def _fields(self) -> dict[bytes, list[str]] | None:
        """The header's fields by lower-case name, unfolded; None if a line is neither field nor fold."""
        fields: dict[bytes, list[str]] = {}
        last: list[str] | None = None
        for line in self._header[:-1]:
            if line[:1] in (b" ", b"\t") and last is not None:
                last[-1] += line.decode("latin-1").rstrip("\r\n")
                continue
            named = _FIELD_NAME.match(line)
            if named is None:
                return None
            last = fields.setdefault(named.group(1).lower(), [])
            last.append(line[named.end() :].decode("latin-1").rstrip("\r\n"))
        return fields

    def _begin_body(self, fields: dict[bytes, list[str]] | None) -> None:
        self._parts += 1
        if fields is None or self._parts > MAX_PARTS:
            self._mode = _Mode.COPY
            return
        content_types = fields.get(b"content-type", [])
        media, boundary = spamassassin_type(content_types)
        encodings = [value.strip().lower() for value in fields.get(b"content-transfer-encoding", [])]
        nesting = len(self._boundaries) + self._depth
        if media.startswith("multipart/") and boundary:
            encoded = boundary.encode("latin-1")
            if nesting >= MAX_NESTING or encoded in self._boundaries:
                self._mode = _Mode.COPY  # SpamAssassin has its own ways with a boundary used twice
                return
            self._boundaries.append(encoded)
            self._delimiters.append(re.compile(rb"^--" + re.escape(encoded) + rb"(?:--)?[ \t\r\f\v]*$", re.M))
            self._depth = 0
            self._mode = _Mode.KEEP
        elif media == "message/rfc822" and encodings in ([], ["7bit"], ["8bit"], ["binary"]):
            if nesting >= MAX_NESTING:
                self._mode = _Mode.COPY
                return
            self._depth += 1
            self._mode = _Mode.HEADER
        elif len(content_types) == 1 and self._cut_short(media, content_types[0], encodings, fields):
            self._head_left = self.attachment_head
            self._mode = _Mode.HEAD if self.attachment_head > 0 else _Mode.CUT
        else:
            self._mode = _Mode.KEEP

    def _cut_short(
        self, media: str, content_type: str, encodings: list[str], fields: dict[bytes, list[str]]
    ) -> bool:
        """Whether this leaf's body is cut to its first `attachment_head` bytes."""
        self._cutting_text = False
        if not media.startswith(("text", "message", "multipart")):
            return encodings == ["base64"]
        if not self.text_attachments or len(encodings) > 1:
            return False
        declared = content_type.strip().split(";", 1)[0].strip().lower()
        dispositions = fields.get(b"content-disposition", [])
        if (
            declared in ("text/plain", "text/html")
            or not declared.startswith("text/")
            or len(dispositions) != 1
            or dispositions[0].strip().split(";", 1)[0].strip().lower() != "attachment"
        ):
            return False
        self._cutting_text = encodings != ["base64"]
        return True
