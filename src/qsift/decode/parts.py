"""What the decoder hands the checks: every part of the message with its place, names and types.

The decoder gives a flat list in walk order: a container (an archive, an attached message) comes first,
its members after it, each member's `containers` naming the way down. Checks that care about ancestry
(a rule that allows whatever is inside a .tar) read it from there.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Part:
    """One leaf: a MIME body part, or a member of an archive found in one (at any depth)."""

    #: Where it is: MIME positions and archive member names joined by "/", e.g. "2/invoice.zip/docs/a.exe".
    path: str
    #: The declared MIME type (Content-Type), lower case; for archive members, "".
    declared_type: str
    #: The file name: Content-Disposition/Content-Type name (RFC 2231 and encoded words decoded), or the
    #: member's name inside its archive (its last path component); "" if none.
    filename: str
    #: amavisd-new's short type from the content (libmagic): "exe", "exe-ms", "zip", "pdf", "txt", ...
    detected_type: str
    #: libmagic's own description, for details and logs.
    description: str
    size: int
    #: SHA-256 of the decoded bytes, hex.
    digest: str
    #: 0 for a MIME part of the message itself; one more for each archive or attached message around it.
    depth: int
    #: The names of the containers around it, outermost first, e.g. ("invoice.zip", "docs.tar").
    containers: tuple[str, ...] = ()
    #: True for an archive or attached message that was opened: its members follow it in the list.
    container: bool = False
    #: Why its content could not be looked into ("encrypted archive", "corrupt zip", ...); "" if it could.
    unchecked: str = ""
    #: The other names its header declares: a Content-Type name beside a Content-Disposition filename, a
    #: repeated parameter. Mail readers differ in which one they show, so each is checked, as amavisd-new
    #: checks each declared name (its N= keys).
    other_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name it goes by: `filename` first."""
        return (self.filename, *self.other_names)

    @property
    def in_archive(self) -> bool:
        return bool(self.containers)


@dataclass(frozen=True)
class Leaf:
    """The decoded bytes of one MIME leaf or uuencoded file, kept for virus scanners that are given the
    parts rather than the message (`[virus] scan = "parts"`): in memory, or in a file of the decoder's."""

    path: str
    size: int
    data: bytes | None = None
    file: str | None = None

    def open(self) -> IO[bytes]:
        if self.file is not None:
            return open(self.file, "rb")
        return io.BytesIO(self.data or b"")


@dataclass(frozen=True)
class KeptLeaves:
    """What the decoder kept for the virus scanners, and whether it is the whole of the message.

    `complete` is False when anything was left unread (a bound, an encrypted or broken part, a decoder
    failure): the scanners must then be given the whole message, whose unread remainder they may still
    read themselves. The files live in `scratch`, which the holder removes once the scanners are done.
    """

    leaves: tuple[Leaf, ...]
    complete: bool
    scratch: str | None = None

    def remove(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
