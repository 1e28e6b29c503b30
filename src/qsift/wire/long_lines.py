"""Lines over 998 octets made to fit, sans-IO: header lines folded, body parts re-encoded (RFC 5322 §2.1.1,
RFC 5321 §4.5.3.1.6, RFC 2045 §6.7).

qmail-smtpd and Postfix take lines of any length, so such mail reaches qsift; an RFC 5321-strict next hop
(aiosmtpd's default, some appliances) refuses it, and the sender gets a bounce for mail its MTA accepted.
What this module changes, and only where a line is too long:

- A header line (of the message, a part or an attached message) is folded before a space or tab, so that
  unfolding (RFC 5322 §2.2.3) gives the line back exactly. A stretch of 998 octets with no white space
  (no honest field has one) is cut with CRLF SP, as Postfix's smtp_line_length_limit does: one space more;
  never before a field's colon, though: a field whose name runs past the limit passes as it came.
- A leaf part sent as it is (7bit, 8bit, binary or no Content-Transfer-Encoding) that has a long line is
  re-encoded quoted-printable, every line of it, and its header says so (the message's header also gets
  MIME-Version if it had none). Quoted-printable, not base64: text stays readable, short lines barely
  grow, and decoding gives the part's bytes back with its line ends as CRLF, which is what the 8-bit part
  meant on the wire (RFC 2045 §2.10; a bare CR is a line end there, as the SMTP forward sends it). A
  line starting with "-" starts "=2D" so that no encoded line can look like a boundary.
- A base64 part's long line is cut into lines of 76 (decoders skip line breaks, RFC 2045 §6.8); a
  quoted-printable part's long line gets soft line breaks, never inside an "=XX".
- A bare CR ends a line, as it does for the decoder and on the SMTP forward (which sends it as CRLF):
  a fold right after one would be an empty line, the end of the header, at the next hop.
- Anything else is passed as it came: preambles and epilogues, parts in encodings qsift does not know,
  message/partial and message/external-body (which must stay 7bit), multiparts past `MAX_NESTING`.

Which parts to re-encode must be known before their header goes out, so a message with a long line is
read twice: `LineFitter()` over it finds them (`long_parts`), `LineFitter(refit=...)` writes it. A message
without one (`LongLineFinder`) is written with `header_only=True`: only its header section is looked at,
for the fields qsift itself added. Past its last boundary and header, what is sent as it is passes without
being read line by line. Memory is bounded: a line is held up to `PIECE` octets at a time.
"""

from __future__ import annotations

import binascii
import email.message
import re
from dataclasses import dataclass
from enum import Enum

MAX_LINE = 998
#: The longest piece of a line handled at once; a longer line comes in pieces (never a boundary).
PIECE = 64 * 1024
#: Multiparts inside multiparts followed; deeper ones pass as they are (decode/mime.py's bound).
MAX_NESTING = 64
_QP_WIDTH = 76
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_AS_IS = frozenset({"", "7bit", "8bit", "binary"})
_MESSAGES = frozenset({"message/rfc822", "message/global"})
_KEPT_FIELD = 16 * 1024
_WSP = b" \t"
_CR_OR_LF = re.compile(rb"[\r\n]")


class LongLineFinder:
    """Whether any line of a message, fed in chunks, is longer than `MAX_LINE` octets (its line end
    not counted)."""

    def __init__(self) -> None:
        self._run = 0
        self._pending_cr = False
        self.found = False

    def update(self, chunk: bytes) -> None:
        if self.found or not chunk:
            return
        if self._pending_cr and not chunk.startswith(b"\n"):
            self._run += 1  # a bare CR, part of the line
        self._pending_cr = chunk.endswith(b"\r")
        lines = chunk.split(b"\n")
        if len(lines) > 1:
            if self._run + len(lines[0].removesuffix(b"\r")) > MAX_LINE:
                self.found = True
                return
            self._run = 0
            # The longest line, in C; only one over the limit by its CR is looked at again.
            middle = lines[1:-1]
            if middle and max(map(len, middle)) > MAX_LINE:
                self.found = any(len(line.removesuffix(b"\r")) > MAX_LINE for line in middle)
                if self.found:
                    return
        # The CR of a CR LF cut in two is counted once the next chunk shows no LF follows.
        self._run += len(lines[-1]) - self._pending_cr
        self.found = self._run > MAX_LINE


class _Body(Enum):
    AS_IS = "as-is"
    ENCODE_QP = "encode-qp"
    SPLIT_QP = "split-qp"
    SPLIT_BASE64 = "split-base64"


@dataclass
class _Entity:
    """The header section being read, as far as it matters here."""

    number: int
    refit: bool
    #: The content type when no Content-Type field says otherwise (RFC 2046 §5.1.5: message/rfc822 in a
    #: multipart/digest).
    default_type: str
    content_type: bytes = b""
    encoding: bytes = b""
    has_mime_version: bool = False
    #: The field being read, lower case ("" for an mbox From line).
    field: str = ""
    first_line: bool = True


@dataclass(frozen=True)
class _Multipart:
    boundary: bytes
    digest: bool


class LineFitter:
    """A message in, chunk by chunk; the same message out, with every line it may change at most 998
    octets long. `refit`: the parts to re-encode quoted-printable (a first pass's `long_parts`)."""

    def __init__(
        self, refit: frozenset[int] = frozenset(), *, header_only: bool = False, find_long_parts: bool = True
    ) -> None:
        self._refit = refit
        self._header_only = header_only
        self._finding = find_long_parts
        self._input = bytearray()
        self._out = bytearray()
        self._newline = b""
        self._entities = 0
        self._entity: _Entity | None = self._new_entity("text/plain")
        self._multiparts: list[_Multipart] = []  # the innermost first
        self._body = _Body.AS_IS
        #: The part whose body is being read, if sent as it is and so re-encodable; else -1.
        self._candidate = -1
        self._passing_rest = False
        self._line = bytearray()  # the current line's octets not yet sent (header, split and encode modes)
        self._line_start = True
        self._field_start = False  # the current header line starts a field
        self._passing_line = False  # the current header line cannot be folded: it passes as it came
        self._long = False  # the current body line is being cut
        self._run = 0  # octets of the current body line so far
        #: Parts sent as they are whose body has a line too long: numbered in the order of their header
        #: sections, the message itself 0. What `refit` names on the second pass.
        self.long_parts: set[int] = set()

    # --- input ----------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if self._passing_rest:
            return chunk
        buf = self._input
        buf += chunk
        start = 0
        while not self._passing_rest:
            # The first CR or LF: a bare CR is a line end too, since the forward sends it as one
            # (wire/smtp_data.py) and the decoder reads it so; a fold right after it would be an empty
            # line, the end of the header, downstream. A CR last in the buffer waits for what follows.
            found = _CR_OR_LF.search(buf, start)
            at = found.start() if found is not None else -1
            if 0 <= at < len(buf) - 1 or (at >= 0 and buf[at] == 0x0A):
                eol = b"\n" if buf[at] == 0x0A else b"\r\n" if buf[at + 1] == 0x0A else b"\r"
                self._piece(bytes(buf[start:at]), eol)
                start = at + len(eol)
            elif len(buf) - start > PIECE:
                end = len(buf) - 1  # the last octet may be the CR of a CR LF
                self._piece(bytes(buf[start:end]), None)
                start = end
            else:
                break
        del buf[:start]
        if self._passing_rest:
            self._out += buf
            buf.clear()
        return self._take()

    def finish(self) -> bytes:
        """The rest: a last line without a line end."""
        if self._input:
            self._piece(bytes(self._input), None)
            self._input.clear()
        self._end_line(b"")
        return self._take()

    def _take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _piece(self, data: bytes, eol: bytes | None) -> None:
        """A line, or a piece of one (eol None: more of it to come)."""
        if eol is not None and eol != b"\r" and not self._newline:
            self._newline = eol
        starts = self._line_start
        self._line_start = eol is not None
        if self._entity is not None:
            self._header_piece(self._entity, data, starts, eol)
        else:
            self._body_piece(data, starts, eol)

    def _newline_or_lf(self) -> bytes:
        return self._newline or b"\n"

    # --- header sections ------------------------------------------------------------------------------

    def _new_entity(self, default_type: str) -> _Entity:
        number = self._entities
        self._entities += 1
        return _Entity(number, number in self._refit, default_type)

    def _header_piece(self, entity: _Entity, data: bytes, starts: bool, eol: bytes | None) -> None:
        if starts:
            if eol is not None and not data.strip(b"\r"):
                self._header_end(entity, data + eol, complete=True)  # "\r\r\n" ends it too, as in the decoder
                return
            mbox = entity.first_line and data.startswith(b"From ")
            continuation = data[:1] in (b" ", b"\t") and not entity.first_line
            is_field = _FIELD.match(data) is not None
            if (eol is not None and self._delimiter(data) is not None) or not (
                is_field or continuation or mbox
            ):
                # No empty line: what comes is body (or the next part), as the decoder reads it.
                self._header_end(entity, b"", complete=False)
                self._body_piece(data, starts, eol)
                return
            if not continuation:
                entity.field = "" if mbox else data.split(b":", 1)[0].strip().lower().decode("ascii")
            entity.first_line = False
            self._field_start = not continuation
        if entity.field == "content-transfer-encoding":
            entity.encoding = (entity.encoding + data)[:_KEPT_FIELD]
            if entity.refit:
                return  # replaced at the end of the section
        elif entity.field == "content-type":
            entity.content_type = (entity.content_type + data)[:_KEPT_FIELD]
        elif entity.field == "mime-version":
            entity.has_mime_version = True
        self._fold(data, eol)

    def _fold(self, data: bytes, eol: bytes | None) -> None:
        """A header line out, folded before white space wherever it is too long."""
        line = self._line
        line += data
        if self._field_start and not 0 <= line.find(b":") < MAX_LINE:
            # A name that runs past the limit (no honest field has one): any cut before its colon would
            # make the line no field downstream, the header would end there, and what the checks read as
            # this part's header would be body at the next hop. It passes as it came.
            self._passing_line = True
        if self._passing_line:
            self._out += line
            line.clear()
        while len(line) > MAX_LINE:
            # A field's first line folds only after its colon; any line only after some text.
            lowest = line.find(b":") + 1 if self._field_start else 0
            cut = max(line.rfind(b" ", lowest, MAX_LINE + 1), line.rfind(b"\t", lowest, MAX_LINE + 1))
            if cut > 0 and line[:cut].strip(_WSP):
                self._out += line[:cut] + self._newline_or_lf()
                del line[:cut]
            else:
                self._out += line[:MAX_LINE] + self._newline_or_lf()
                line[:MAX_LINE] = b" "
            self._field_start = False
        if eol is not None:
            self._out += line + eol
            line.clear()
            self._passing_line = False

    def _header_end(self, entity: _Entity, eol: bytes, *, complete: bool) -> None:
        self._entity = None
        header = email.message.Message()
        header.set_default_type(entity.default_type)
        if entity.content_type:
            header["Content-Type"] = _field_value(entity.content_type)
        content_type = header.get_content_type()
        encoding = _field_value(entity.encoding).strip().lower()
        leaf = header.get_content_maintype() not in ("multipart", "message")
        if entity.refit:
            # The first pass found this part re-encodable, and both passes read the same structure.
            newline = self._newline_or_lf()
            if entity.number == 0 and not entity.has_mime_version:
                self._out += b"MIME-Version: 1.0" + newline
            self._out += b"Content-Transfer-Encoding: quoted-printable" + newline
        self._out += eol
        self._body = _Body.AS_IS
        self._candidate = entity.number if leaf and complete and encoding in _AS_IS else -1
        self._run = 0
        boundary = header.get_boundary() if header.get_content_maintype() == "multipart" else None
        if boundary and len(self._multiparts) < MAX_NESTING:
            part = _Multipart(boundary.encode("utf-8", "surrogateescape"), content_type == "multipart/digest")
            self._multiparts.insert(0, part)
        elif content_type in _MESSAGES and encoding in _AS_IS:
            self._entity = self._new_entity("text/plain")
        elif entity.refit:
            self._body = _Body.ENCODE_QP
        elif encoding == "base64":
            self._body = _Body.SPLIT_BASE64
        elif encoding == "quoted-printable":
            self._body = _Body.SPLIT_QP
        if self._header_only and self._entity is None:
            self._passing_rest = True
        self._pass_the_rest_if_nothing_can_change()

    def _pass_the_rest_if_nothing_can_change(self) -> None:
        """Past the last boundary and header, in a body sent as it is (and, when finding long parts, one
        found long or not a candidate), the rest of the message passes without being read line by line."""
        settled = not self._finding or self._candidate < 0 or self._candidate in self.long_parts
        if self._entity is None and not self._multiparts and self._body is _Body.AS_IS and settled:
            self._passing_rest = True

    # --- bodies ---------------------------------------------------------------------------------------

    def _delimiter(self, line: bytes) -> tuple[int, bool] | None:
        """(which enclosing multipart, closing) if this line is a delimiter of one (RFC 2046 §5.1.1)."""
        if not line.startswith(b"--"):
            return None
        text = line.rstrip(_WSP)
        for index, multipart in enumerate(self._multiparts):
            if text == b"--" + multipart.boundary:
                return index, False
            if text == b"--" + multipart.boundary + b"--":
                return index, True
        return None

    def _body_piece(self, data: bytes, starts: bool, eol: bytes | None) -> None:
        found = self._delimiter(data) if starts and eol is not None else None
        if found is not None and eol is not None:
            index, closing = found
            del self._multiparts[:index]
            self._out += data + eol
            self._body, self._candidate = _Body.AS_IS, -1
            if closing:
                del self._multiparts[0]  # what follows is its epilogue
                self._pass_the_rest_if_nothing_can_change()
            else:
                digest = self._multiparts[0].digest
                self._entity = self._new_entity("message/rfc822" if digest else "text/plain")
            return
        if self._body is _Body.AS_IS:
            self._pass(data, starts, eol)
            return
        if self._body is _Body.ENCODE_QP:
            # Soft breaks are made below, at 76; b2a_qp's own are taken out.
            data = binascii.b2a_qp(data, quotetabs=False, istext=False).replace(b"=\n", b"")
            self._long = True
        self._line += data
        self._long = self._long or len(self._line) > MAX_LINE
        if self._long:
            self._cut()
        if eol is not None:
            self._end_line(eol)

    def _pass(self, data: bytes, starts: bool, eol: bytes | None) -> None:
        self._run = len(data) if starts else self._run + len(data)
        if self._run > MAX_LINE and self._candidate >= 0:
            self.long_parts.add(self._candidate)
            self._pass_the_rest_if_nothing_can_change()
        self._out += data
        if eol is not None:
            self._out += eol

    def _cut(self) -> None:
        """Send the current line but its last few octets, in lines of at most 76 (soft breaks for QP)."""
        line = self._line
        newline = self._newline_or_lf()
        if self._body is _Body.SPLIT_BASE64:
            while len(line) > _QP_WIDTH:
                self._out += line[:_QP_WIDTH] + newline
                del line[:_QP_WIDTH]
            return
        # Quoted-printable: 75 and the soft break's "=", never cutting an "=XX"; a leading "-" as "=2D",
        # so no encoded line can be a boundary delimiter. 73 are kept for the line's last piece.
        while len(line) > _QP_WIDTH - 3:
            lead = b"=2D" if line.startswith(b"-") else b""
            cut = _QP_WIDTH - 1 - len(lead) + bool(lead)
            escape = line.rfind(b"=", cut - 2, cut)
            cut = escape if escape > 0 else cut
            self._out += lead + line[bool(lead) : cut] + b"=" + newline
            del line[:cut]

    def _end_line(self, eol: bytes) -> None:
        line = self._line
        if self._body is _Body.ENCODE_QP and eol == b"\r":
            # A line end like any other (the forward makes it CRLF), and quoted-printable has no bare CR.
            eol = self._newline_or_lf()
        if self._long and self._body is not _Body.SPLIT_BASE64 and line.startswith(b"-"):
            line[:1] = b"=2D"
        self._out += line + eol
        line.clear()
        self._long = False


def _field_value(field: bytes) -> str:
    """A field's value, unfolded, from its raw lines (name and colon included)."""
    return field.split(b":", 1)[-1].decode("ascii", "surrogateescape")
