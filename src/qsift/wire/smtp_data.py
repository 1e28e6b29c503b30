"""The body of an SMTP/LMTP DATA transfer, encoded as a stream (RFC 5321 §4.5.2).

Messages reach qsift with LF line ends (qmail's internal form, as QMQP carries it) or CRLF (from SMTP).
On the wire every line must end in CRLF: one bare LF and a qmail-smtpd drops the connection with
`451 See https://cr.yp.to/docs/smtplf.html`. The encoder therefore turns bare LF into CRLF, keeps CRLF
as it is (never CRCRLF), and holds back a chunk's trailing CR until the next chunk shows whether an LF
follows: amavisd-new's Net::SMTP path split CR and LF across writes, which is the "qmail bare-LF bug"
the HOWTO patches around.

A CR that no LF follows becomes CRLF too, as notqmail's qmail-remote does. Passed on as it came, a bare
CR next to a dot (`x<CR>.<CR><LF>MAIL FROM:...`, `<CR><LF>.<CR>`) ends the message for a receiver that
takes a bare CR for a line end, and what follows is a second message (SMTP smuggling); made a line end,
it is dot-stuffed like any other line start. qmail-smtpd and Postfix accept and store bare CRs, so qsift
does not refuse them on input (a QMQP client's message holds the bytes qmail-smtpd took); it repairs
them here, on the one way out that SMTP and LMTP share, and `LfEncoder` makes them LF on qmail's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from qsift.wire.coded_chunks import coded_chunks

_CRLF = b"\r\n"
_LF = b"\n"
_CR = b"\r"


class DataEncoder:
    """Turns message bytes in any chunking into dot-stuffed CRLF lines ending with `.` CRLF."""

    def __init__(self) -> None:
        self._pending_cr = False
        self._at_line_start = True
        self._finished = False

    def encode(self, chunk: bytes) -> bytes:
        """Encode one chunk; the result never ends in a CR whose LF is still to come."""
        if self._finished:
            raise RuntimeError("DataEncoder.encode after finish")
        if self._pending_cr:
            chunk = _CR + chunk
            self._pending_cr = False
        if chunk.endswith(_CR):
            self._pending_cr = True
            chunk = chunk[:-1]
        if not chunk:
            return b""
        if _CR in chunk:  # one search in C; mail from QMQP has LF line ends only
            chunk = chunk.replace(_CRLF, _LF).replace(_CR, _LF)
        # Dot-stuffed while every line end is still one LF: the same lines, a shorter string to search.
        chunk = chunk.replace(b"\n.", b"\n..").replace(_LF, _CRLF)
        if self._at_line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._at_line_start = chunk.endswith(_CRLF)
        return chunk

    def finish(self) -> bytes:
        """The tail: a missing final line end (a held-back CR is one) and the terminating dot line."""
        if self._finished:
            raise RuntimeError("DataEncoder.finish called twice")
        self._finished = True
        if self._pending_cr or not self._at_line_start:
            return _CRLF + b".\r\n"
        return b".\r\n"


def encode_data(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Encode a whole message for DATA, chunk by chunk, ending with the dot line."""
    encoder = DataEncoder()
    return coded_chunks(chunks, encoder.encode, encoder.finish)


class LfEncoder:
    """Turns message bytes into qmail's internal form: CRLF, and a bare CR, become LF.

    What qmail-queue reads on fd 0 and what a maildir file holds. A bare CR is a line end here as on the
    SMTP forward (and as qmail-remote sends it on): the decoder reads it as one, so a reader that did
    not would see another MIME structure than the one that was checked.
    """

    def __init__(self) -> None:
        self._pending_cr = False

    def encode(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = _CR + chunk
            self._pending_cr = False
        if chunk.endswith(_CR):
            self._pending_cr = True
            chunk = chunk[:-1]
        return chunk.replace(_CRLF, _LF).replace(_CR, _LF)

    def finish(self) -> bytes:
        tail = _LF if self._pending_cr else b""
        self._pending_cr = False
        return tail


def to_lf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Convert a whole message to LF line ends, chunk by chunk."""
    encoder = LfEncoder()
    return coded_chunks(chunks, encoder.encode, encoder.finish)
