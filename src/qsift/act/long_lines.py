"""Passed mail with no line over 998 octets, whichever forward takes it (wire/long_lines.py says how).

The pipeline's first read of a message (the dedupe fingerprint) also looks for a long line. Without one,
only the header section qsift sends is looked at again (a tagged Subject or an X-Spam-Status field may be
the first long line); with one, `plan_fit` reads the message twice more, off the event loop for a large
one: once to find the parts to re-encode, once to learn the size and the mark's body digest of the
message as it will be sent. Every forward method then reads a `FittedMessage`, so the mark is made over
the bytes that leave.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from qsift.spool import DEFAULT_CHUNK, MessageBody, head_of_chunks
from qsift.wire.coded_chunks import coded_chunks
from qsift.wire.long_lines import LineFitter, LongLineFinder
from qsift.wire.mark import BodyDigest


@dataclass(frozen=True)
class FitPlan:
    """What the reads of a message found."""

    #: Some line is over 998 octets: the whole message is read through the fitter, not only the header.
    long_lines: bool = False
    #: The parts to re-encode quoted-printable, numbered as `LineFitter.long_parts` numbers them.
    refit: frozenset[int] = frozenset()
    #: Octets the fitting adds to the message, for the SIZE parameter (qsift's own added fields, folded,
    #: may add a few more: SIZE is an estimate, RFC 1870).
    growth: int = 0


NO_LONG_LINES = FitPlan()


@dataclass(frozen=True)
class FittedMessage:
    """A message (the spool, or the spool with edited headers) as it leaves: every line it can fit fitted."""

    inner: MessageBody
    plan: FitPlan = NO_LONG_LINES

    @property
    def size(self) -> int:
        return self.inner.size + self.plan.growth

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        fitter = LineFitter(self.plan.refit, header_only=not self.plan.long_lines, find_long_parts=False)
        return coded_chunks(self.inner.chunks(chunk_size), fitter.feed, fitter.finish)

    def head(self, limit: int) -> bytes:
        """The first `limit` bytes of the fitted message."""
        return head_of_chunks(self.chunks(), limit)


def plan_fit(body: MessageBody, digest: BodyDigest | None) -> FitPlan:
    """The plan for a message with a long line; `digest`, if given, is fed the message as it will leave."""
    first = LineFitter()
    for chunk in body.chunks():
        first.feed(chunk)
    first.finish()
    plan = FitPlan(long_lines=True, refit=frozenset(first.long_parts))
    size = 0
    for chunk in FittedMessage(body, plan).chunks():
        size += len(chunk)
        if digest is not None:
            digest.update(chunk)
    return FitPlan(True, plan.refit, size - body.size)


def fitted(body: MessageBody) -> FittedMessage:
    """`body` as it may leave, planned by reads of its own: for a message sent outside the pipeline (a
    quarantine release)."""
    finder = LongLineFinder()
    for chunk in body.chunks():
        finder.update(chunk)
    return FittedMessage(body, plan_fit(body, None) if finder.found else NO_LONG_LINES)
