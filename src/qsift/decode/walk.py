"""Walk a whole message: MIME parts, attached messages, uuencoded blocks and archives, to any depth.

Every part gets a path, its declared and detected type, its name, size and digest (decode/parts.py).
Every byte decoded is counted against the bounds, all of them amavisd-new's at their strictest:
depth 14, 1,500 parts, an expansion quota of max(100 KiB, 500 x the message size) capped at 300 MiB,
100 MiB per member, 30 s per message. Past a bound, decoding stops and the message is UNCHECKED (minor 2,
over limits); the MIME structure is still listed by name, so a banned name after a bomb is still seen.
An encrypted archive is UNCHECKED minor 1, one nothing can open minor 0. Nothing unread is ever clean.

A failure stays in its part: any exception while reading a part or a container's members makes that part
UNCHECKED minor 0 and the walk goes on, so what was found elsewhere (a banned name, a program) still counts.
A member whose content could not be read is listed by its name all the same.

Members larger than `memory_threshold` go to a private temporary directory that is removed when the
walk ends, whatever happens; unless the leaves are kept for the virus scanners (`keep_leaves`), when the
caller removes it (`KeptLeaves.remove`) once they are done.
"""

from __future__ import annotations

import binascii
import contextlib
import email.errors
import email.header
import email.message
import email.utils
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

from qsift.declare import setting
from qsift.decode import archive, mime
from qsift.decode.filetype import MAGIC_BYTES, detect
from qsift.decode.parts import KeptLeaves, Leaf, Part
from qsift.model import Category, Finding

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class DecodeLimits:
    """`[decode]`: the decoder's bounds; past them a message is unchecked, never clean."""

    max_depth: int = setting(14, "Deepest nesting of archives and attached messages opened.")
    max_parts: int = setting(1500, "Most parts (MIME parts and archive members) looked at in one message.")
    max_total_bytes: int = setting(300 * MIB, "Most decoded bytes in all for one message.")
    max_member_bytes: int = setting(100 * MIB, "Largest single decoded member.")
    max_expansion: int = setting(
        500, "Decoded bytes may reach this many times the message's size (with a floor of `min_quota`)."
    )
    min_quota: int = setting(100 * KIB, "The smallest decoding quota, in bytes, however small the message.")
    time_limit: float = setting(30.0, "Seconds one message may spend being decoded.")
    memory_threshold: int = setting(
        1 * MIB, "Decoded members larger than this go to the private temp dir rather than memory, in bytes."
    )
    seven_zip: bool = setting(
        True, "Open ARJ, CHM and SZDD with 7-Zip (an external program) when it is installed."
    )


#: Containers clamd (1.4) does not unpack and qsift does: raw LZMA and Zstandard, measured with ClamAV's
#: test file in each; lzip assumed alike (no lzip tool here to make one). Their members are kept so the
#: virus scanners see them too (checks/content.py); the rest clamd opens itself from the raw message, so
#: nothing is scanned twice without reason.
RESCAN_CONTAINERS = frozenset({"lzma", "zst", "lz"})
#: Zip compression methods clamd (1.4) does not inflate, measured the same way (LZMA); the others listed are
#: rarer still and assumed alike: zstd (93), xz (95), PPMd (98).
_RESCAN_ZIP_METHODS = frozenset({14, 93, 95, 98})
_RESCAN_MEMBER = 8 * MIB
_RESCAN_TOTAL = 32 * MIB
#: Kept leaves stay in memory up to this many bytes in all for a message; the rest go to files.
_KEPT_IN_MEMORY = 4 * MIB


@dataclass(frozen=True)
class Decoded:
    parts: tuple[Part, ...]
    #: UNCHECKED findings (encrypted, over limits, undecipherable) and BAD_HEADER minor 1 (MIME structure).
    findings: tuple[Finding, ...]
    #: (path, bytes) of members of RESCAN_CONTAINERS, for the virus scanners.
    rescan: tuple[tuple[str, bytes], ...] = ()
    #: The MIME leaves' decoded bytes, when asked for (`keep_leaves`); the caller must `remove()` them.
    leaves: KeptLeaves | None = None


def decode_message(
    message: bytes | str | IO[bytes],
    limits: DecodeLimits | None = None,
    tmp_dir: str | None = None,
    *,
    keep_leaves: bool = False,
) -> Decoded:
    """Take the whole message apart within the limits: bytes, the path of a file, or a binary file
    positioned at the message's start (read to its end, never closed). Never raises for anything the
    message contains.

    With `keep_leaves`, the decoded bytes of every MIME leaf (and uuencoded file) are kept for the virus
    scanners: what amavisd-new writes to its parts directory. Archives are kept whole, not their members:
    a scanner opens them itself, as clamd does."""
    if isinstance(message, bytes):
        size = len(message)
    elif isinstance(message, str):
        size = os.path.getsize(message)
    else:
        start = message.tell()
        size = message.seek(0, os.SEEK_END) - start
        message.seek(start)
    walker = _Walker(limits or DecodeLimits(), size, tmp_dir, keep_leaves=keep_leaves)
    try:
        try:
            walker.walk_message(message, prefix="", depth=0, containers=())
        except _OverLimit as exc:  # the part count, reached while listing names after a stop
            walker.stop_everything(str(exc))
        except Exception as exc:  # a decoder bug: what was found so far still counts, the rest is unchecked
            where = walker.parts[-1].path if walker.parts else "the start"
            walker.findings.append(
                Finding(Category.UNCHECKED, 0, f"decoder failure after {where}: {_failure(exc)}", "")
            )
        leaves = walker.kept_leaves()
    except BaseException:
        walker.cleanup()
        raise
    if leaves is None or leaves.scratch is None:
        walker.cleanup()
    return Decoded(tuple(walker.parts), tuple(walker.findings), tuple(walker.rescan), leaves)


# --- bounds -------------------------------------------------------------------------------------------


class _OverLimit(Exception):
    """A bound of the whole message was reached: stop decoding."""


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class _Blob:
    """Decoded bytes, in memory or in a private temp file."""

    data: bytes | None
    path: str | None
    size: int
    digest: str
    head: bytes

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as stream:
            return stream.read()


# MIME defects that mean the structure itself is broken (amavisd-new's BAD-HEADER-1, a MIME::Parser
# error), not the many harmless ones Python also records (a missing trailing boundary, say).
_STRUCTURE_DEFECTS = frozenset(
    {
        "NoBoundaryInMultipartDefect",
        "StartBoundaryNotFoundDefect",
        "InvalidMultipartContentTransferEncodingDefect",
        "MissingHeaderBodySeparatorDefect",
        "MisplacedEnvelopeHeaderDefect",
    }
)
# Lines end in LF, CRLF or a bare CR: the SMTP forward sends a bare CR as CRLF, so a block between bare
# CRs is one a reader downstream decodes.
_UUENCODE_BEGIN = re.compile(rb"(?:\A|(?<=[\r\n]))begin [0-7]{3,4} ([^\r\n]+)(?=[\r\n]|\Z)")
_UUENCODE_END = re.compile(rb"(?:\A|(?<=[\r\n]))end(?=[\r\n]|\Z)")
#: Text parts up to this size are searched for uuencoded files.
_UUENCODE_SCAN_LIMIT = 16 * MIB


def _has_uuencoded(text: bytes) -> bool:
    # The regular expression tried at every octet costs 0.4 ms a message on the mix of
    # bench/passthrough.py; a match can only start where its literal does, and prose says "begin "
    # often enough, so it is tried only there (`match` at a position still sees the octet before it).
    at = text.find(b"begin ")
    while at >= 0:
        if _UUENCODE_BEGIN.match(text, at) is not None:
            return True
        at = text.find(b"begin ", at + 1)
    return False


def _first_bytes(blocks: list[bytes], limit: int) -> list[bytes]:
    """The first `limit` bytes of `blocks`, as blocks (the last one cut)."""
    first: list[bytes] = []
    taken = 0
    for block in blocks:
        if taken >= limit:
            break
        first.append(block[: limit - taken])
        taken += len(first[-1])
    return first


class _Walker:
    def __init__(
        self, limits: DecodeLimits, message_size: int, tmp_dir: str | None, *, keep_leaves: bool = False
    ) -> None:
        self.limits = limits
        self.parts: list[Part] = []
        self.findings: list[Finding] = []
        self.deadline = time.monotonic() + limits.time_limit
        quota = max(limits.min_quota, limits.max_expansion * message_size)
        self.quota_left = min(limits.max_total_bytes, quota)
        self.stopped = ""
        self._tmp_parent = tmp_dir
        self._tmp: str | None = None
        self._reported_defects: set[str] = set()
        self.rescan: list[tuple[str, bytes]] = []
        self._rescan_bytes = 0
        #: (depth, containers) of the message being read, innermost last.
        self._context: list[tuple[int, tuple[str, ...]]] = []
        self.keep_leaves = keep_leaves
        self._leaves: list[Leaf] = []
        self._kept_in_memory = 0

    # -- bookkeeping

    def work_dir(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="qsift-decode-", dir=self._tmp_parent)
            os.chmod(self._tmp, 0o700)
        return self._tmp

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def kept_leaves(self) -> KeptLeaves | None:
        """The leaves kept, with the directory of their files if any lies there (the caller's to remove)."""
        if not self.keep_leaves:
            return None
        complete = not any(f.category is Category.UNCHECKED for f in self.findings)
        in_files = any(leaf.file is not None for leaf in self._leaves)
        return KeptLeaves(tuple(self._leaves), complete, self._tmp if in_files else None)

    def _keep_leaf(self, path: str, blob: _Blob) -> None:
        if not blob.size:
            return
        if blob.path is not None:
            self._leaves.append(Leaf(path, blob.size, file=blob.path))
            return
        data = blob.data or b""
        if self._kept_in_memory + blob.size <= _KEPT_IN_MEMORY:
            self._kept_in_memory += blob.size
            self._leaves.append(Leaf(path, blob.size, data=data))
            return
        fd, file = tempfile.mkstemp(dir=self.work_dir())
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        self._leaves.append(Leaf(path, blob.size, file=file))

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def _check_time(self) -> None:
        if self.time_left() <= 0:
            raise _OverLimit(f"decoding took longer than {self.limits.time_limit:g} s")

    def _add(self, part: Part) -> None:
        if len(self.parts) >= self.limits.max_parts:
            raise _OverLimit(f"more than {self.limits.max_parts} parts")
        self.parts.append(part)

    def _unchecked(self, minor: int, detail: str, part: str) -> None:
        self.findings.append(Finding(Category.UNCHECKED, minor, detail, part))

    def stop_everything(self, reason: str) -> None:
        self._stop(reason, self.parts[-1].path if self.parts else "")

    def _stop(self, reason: str, where: str) -> None:
        if not self.stopped:
            self.stopped = reason
            self._unchecked(2, f"not decoded past {where or 'the start'}: {reason}", where)

    def _store(self, blocks: Iterable[bytes]) -> _Blob:
        """Take decoded bytes as they come, counting each against the bounds."""
        digest = hashlib.sha256()
        kept: list[bytes] | None = []
        stream = None
        path = None
        size = 0
        # The head of a part kept in memory is cut from its bytes at the end; only a part spilled to a
        # file keeps its head aside, in blocks joined once (adding line-sized blocks to one bytes
        # object copied the head once a line).
        head: list[bytes] = []
        head_size = 0
        # Read once, not once a block: a text part comes a line at a time.
        max_member_bytes = self.limits.max_member_bytes
        memory_threshold = self.limits.memory_threshold
        deadline = self.deadline
        try:
            for block in blocks:
                length = len(block)
                size += length
                self.quota_left -= length
                if self.quota_left < 0:
                    raise _OverLimit("expanded past the decoding quota (archive bomb?)")
                if size > max_member_bytes:
                    raise _OverLimit(f"a member larger than {max_member_bytes} bytes")
                if time.monotonic() >= deadline:
                    self._check_time()  # raises: the clock only goes forward
                digest.update(block)
                if kept is not None:
                    kept.append(block)
                    if size > memory_threshold:
                        fd, path = tempfile.mkstemp(dir=self.work_dir())
                        stream = os.fdopen(fd, "wb")
                        stream.writelines(kept)
                        head = _first_bytes(kept, MAGIC_BYTES)
                        head_size = sum(map(len, head))
                        kept = None
                else:
                    assert stream is not None
                    stream.write(block)
                    if head_size < MAGIC_BYTES:
                        head.append(block[: MAGIC_BYTES - head_size])
                        head_size += len(head[-1])
        finally:
            if stream is not None:
                stream.close()
        if kept is not None:
            data = b"".join(kept)
            return _Blob(data, None, size, digest.hexdigest(), data[:MAGIC_BYTES])
        return _Blob(None, path, size, digest.hexdigest(), b"".join(head))

    # -- MIME: decode/mime.py reads, these callbacks decide

    def walk_message(
        self, source: bytes | str | IO[bytes], *, prefix: str, depth: int, containers: tuple[str, ...]
    ) -> None:
        """A message (bytes, a file path, or an open file): its parts are numbered below `prefix`."""
        outer = len(self._context)
        self._context.append((depth, containers))
        try:
            if isinstance(source, bytes | str):
                with open(source, "rb") if isinstance(source, str) else io.BytesIO(source) as stream:
                    mime.walk(stream, self, prefix=prefix)
            else:
                mime.walk(source, self, prefix=prefix)
        finally:
            # Also the attached messages a failure left without their message_end.
            del self._context[outer:]

    def leaf(self, entity: mime.Entity, body: Iterator[bytes]) -> None:
        depth, containers = self._context[-1]
        self._note_defects(entity)
        declared = entity.content_type
        name = _filename(entity.header)
        listed = len(self.parts)
        try:
            if self.stopped:
                self._add(_named_only(entity.path, declared, name, depth, containers, self.stopped))
            else:
                blob = self._store(body)
                self._blob_part(
                    blob,
                    path=entity.path,
                    declared=declared,
                    name=name,
                    depth=depth,
                    containers=containers,
                    leaf=True,
                )
        except _OverLimit as exc:
            # Stop decoding, but go on listing the message's own parts by name: a banned name after a
            # bomb must still be seen.
            self._stop(str(exc), entity.path)
        except Exception as exc:  # whatever broke, it broke this part only
            self._part_failed(entity.path, exc)
            if len(self.parts) == listed:
                self._add(_named_only(entity.path, declared, name, depth, containers, _failure(exc)))
        others = _other_names(entity.header, name)
        if others and len(self.parts) > listed and self.parts[listed].path == entity.path:
            self.parts[listed] = replace(self.parts[listed], other_names=others)
        for _ in body:
            pass  # the reader needs the rest of the body read to find the next boundary

    def message_start(self, entity: mime.Entity) -> bool:
        depth, containers = self._context[-1]
        self._note_defects(entity)
        name = _filename(entity.header)
        empty = _Blob(None, None, 0, "", b"")
        part = _part(
            entity.path,
            entity.content_type,
            name,
            ("mail", "attached message"),
            empty,
            depth,
            containers,
            container=True,
        )
        part = replace(part, other_names=_other_names(entity.header, name))
        try:
            self._add(part)
        except _OverLimit as exc:
            self._stop(str(exc), entity.path)
            return False
        if depth + 1 > self.limits.max_depth:
            self._stop(f"nested deeper than {self.limits.max_depth}", entity.path)
            return False
        self._context.append((depth + 1, (*containers, name or "message")))
        return True

    def message_end(self) -> None:
        self._context.pop()

    def structure(self, entity: mime.Entity) -> None:
        self._note_defects(entity)

    def _note_defects(self, entity: mime.Entity) -> None:
        kinds = [*entity.defects, *(type(defect).__name__ for defect in entity.header.defects)]
        for kind in kinds:
            if kind == "MultipartNestingTooDeep" and kind not in self._reported_defects:
                self._reported_defects.add(kind)
                detail = f"MIME parts nested deeper than {mime.MAX_NESTING} at {entity.path}"
                self._unchecked(2, detail, entity.path)
            if kind in _STRUCTURE_DEFECTS and kind not in self._reported_defects:
                self._reported_defects.add(kind)
                where = f" in part {entity.path}" if entity.path else ""
                self.findings.append(Finding(Category.BAD_HEADER, 1, f"MIME: {kind}{where}", entity.path))

    # -- any decoded content

    def _blob_part(
        self,
        blob: _Blob,
        *,
        path: str,
        declared: str,
        name: str,
        depth: int,
        containers: tuple[str, ...],
        leaf: bool = False,
    ) -> None:
        """`leaf`: a MIME leaf or uuencoded file, which the virus scanners may be given on its own; an
        attached message is not, its own leaves are."""
        short, description = detect(blob.head)
        kind = self._container_kind(short, declared, blob)
        self._add(
            _part(path, declared, name, (short, description), blob, depth, containers, container=bool(kind))
        )
        if leaf and self.keep_leaves and kind != "mail":
            self._keep_leaf(path, blob)
        if not kind:
            if archive.undecodable_archive(short):
                self._unchecked(0, f"{path}: no decoder for {short} archives", path)
            return
        if depth + 1 > self.limits.max_depth:
            raise _OverLimit(f"nested deeper than {self.limits.max_depth}")
        inner = (*containers, name or path.rsplit("/", 1)[-1])
        try:
            if kind == "mail":
                source = blob.path if blob.path is not None else (blob.data or b"")
                self.walk_message(source, prefix=path, depth=depth + 1, containers=inner)
            elif kind == "uue":
                self._members(_uudecoded(blob.read()), path, depth + 1, inner, set(), [], leaves=True)
            else:
                self._open(short, name or path, blob, path, depth + 1, inner)
        except _OverLimit:
            raise
        except Exception as exc:  # one container's failure leaves the rest of the message
            self._part_failed(path, exc)

    def _part_failed(self, path: str, exc: Exception) -> None:
        """A part (or a container's content) that broke the decoder is unchecked; the walk goes on."""
        self._unchecked(0, f"{path}: cannot be decoded: {_failure(exc)}", path)

    def _container_kind(self, short: str, declared: str, blob: _Blob) -> str:
        """ "archive", "mail" (a message to walk), "uue" (text carrying uuencoded files) or "" (a leaf)."""
        if archive.can_open(short, seven_zip=self.limits.seven_zip):
            return "archive"
        textual = declared.startswith("text/") or short in ("asc", "uue", "mail")
        if textual and blob.size <= _UUENCODE_SCAN_LIMIT and _has_uuencoded(blob.read()):
            return "uue"
        if short == "mail" and not declared.startswith("text/"):
            # An .eml attached as application/octet-stream, or found in an archive. A text/plain part
            # that merely starts like a message (an inline forward) is text.
            return "mail"
        return ""

    def _open(
        self, short: str, name: str, blob: _Blob, path: str, depth: int, inner: tuple[str, ...]
    ) -> None:
        #: Members whose name was read and whose content was not.
        unread: list[str] = []
        try:
            failure = self._read_container(short, name, blob, path, depth, inner, unread)
        except _OverLimit:
            raise
        except Exception:
            self._list_unread(unread, path, depth, inner)
            raise
        if failure is None:
            return
        self._list_unread(unread, path, depth, inner)
        minor = 1 if failure.encrypted else 0
        what = "encrypted" if failure.encrypted else "cannot be decoded"
        self._unchecked(minor, f"{path}: {what}: {failure}", path)

    def _read_container(
        self,
        short: str,
        name: str,
        blob: _Blob,
        path: str,
        depth: int,
        inner: tuple[str, ...],
        unread: list[str],
    ) -> archive.ContainerError | None:
        """Every member, by libarchive (or the like), then by 7-Zip if need be; the failure if both fail."""
        keep = short in RESCAN_CONTAINERS or (short in ("zip", "jar") and _zip_methods_hidden(blob))
        read: set[str] = set()
        # Closed as soon as they are left, whatever the reason: an opener may hold a 7-Zip process.
        try:
            with contextlib.closing(self._container(short, name, blob, seven_zip=False)) as members:
                self._members(members, path, depth, inner, read, unread, keep=keep)
            return None
        except archive.ContainerError as exc:
            failure = exc
        if failure.encrypted or not self.limits.seven_zip or not archive.seven_zip_fallback(short):
            return failure
        try:
            with contextlib.closing(self._container(short, name, blob, seven_zip=True)) as members:
                # What the first opener read is not listed twice.
                self._members(members, path, depth, inner, read, unread, skip=frozenset(read))
            return None
        except archive.ContainerError as exc:
            return exc if exc.encrypted else failure

    def _list_unread(self, unread: list[str], path: str, depth: int, inner: tuple[str, ...]) -> None:
        """Members no opener could read are still listed by name: a banned name needs no content."""
        listed = {part.path for part in self.parts}
        for member_name in dict.fromkeys(unread):
            member_path = f"{path}/{member_name}"
            if member_path not in listed:
                basename = member_name.rsplit("/", 1)[-1]
                self._add(_named_only(member_path, "", basename, depth, inner, "content unreadable"))

    def _container(self, short: str, name: str, blob: _Blob, *, seven_zip: bool) -> archive.Members:
        return archive.open_container(
            short,
            name.rsplit("/", 1)[-1],
            blob.data,
            blob.path,
            work_dir=self.work_dir,
            time_left=self.time_left,
            seven_zip=seven_zip,
        )

    def _keep_for_rescan(self, path: str, blob: _Blob) -> None:
        if blob.size > _RESCAN_MEMBER or self._rescan_bytes + blob.size > _RESCAN_TOTAL:
            self._unchecked(2, f"{path}: too large to pass to the virus scanners separately", path)
            return
        self._rescan_bytes += blob.size
        self.rescan.append((path, blob.read()))

    def _members(
        self,
        members: Iterator[tuple[str, Iterator[bytes]]],
        path: str,
        depth: int,
        inner: tuple[str, ...],
        read: set[str],
        unread: list[str],
        *,
        skip: frozenset[str] = frozenset(),
        keep: bool = False,
        leaves: bool = False,
    ) -> None:
        """Each member as a part, its name added to `read` once read, or to `unread` if reading it failed.
        `keep`: kept for a rescan (RESCAN_CONTAINERS); `leaves`: uuencoded files, leaves of the message."""
        for member_name, blocks in members:
            self._check_time()
            if member_name in skip:
                continue
            try:
                blob = self._store(blocks)
            except _OverLimit:
                raise
            except Exception:
                unread.append(member_name)
                raise
            if keep:
                self._keep_for_rescan(f"{path}/{member_name}", blob)
            self._blob_part(
                blob,
                path=f"{path}/{member_name}",
                declared="",
                name=member_name.rsplit("/", 1)[-1],
                depth=depth,
                containers=inner,
                leaf=leaves,
            )
            read.add(member_name)


def _zip_methods_hidden(blob: _Blob) -> bool:
    """Whether a zip has members compressed in a way clamd does not undo."""
    try:
        source: str | IO[bytes] = blob.path if blob.path is not None else io.BytesIO(blob.data or b"")
        with zipfile.ZipFile(source) as archive:
            return any(info.compress_type in _RESCAN_ZIP_METHODS for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False


def _uudecoded(text: bytes) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The files of `begin MODE NAME` ... `end` blocks in a text body."""
    position = 0
    while match := _UUENCODE_BEGIN.search(text, position):
        end = _UUENCODE_END.search(text, match.end())
        stop = end.start() if end else len(text)
        name = match.group(1).decode("utf-8", "replace").strip()
        yield name, iter([_uudecode_lines(text[match.end() : stop])])
        position = end.end() if end else len(text)


def _uudecode_lines(block: bytes) -> bytes:
    out = bytearray()
    for line in block.splitlines():
        if not line.strip() or line.strip() == b"`":
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders pad lines short or long; decode what the length byte promises.
            length = (line[0] - 32) & 0x3F
            try:
                out += binascii.a2b_uu(line[: 1 + (length + 2) // 3 * 4])
            except binascii.Error:
                break
    return bytes(out)


def _filename(header: email.message.Message) -> str:
    """The part's file name, RFC 2231 parameters and RFC 2047 encoded words decoded."""
    try:
        raw = header.get_filename()
    except Exception:  # a parameter too broken for the parser: treat as nameless, the type still counts
        return ""
    if not raw:
        return ""
    if "=?" in raw:
        try:
            return str(email.header.make_header(email.header.decode_header(raw)))
        # MessageError: HeaderParseError, and CharsetError for a charset name that is not ASCII.
        except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
            return raw
    return raw


def _other_names(header: email.message.Message, name: str) -> tuple[str, ...]:
    """The names the header declares besides `name`: every filename and name parameter, repeats too."""
    found: list[str] = []
    for field, key in (("content-disposition", "filename"), ("content-type", "name")):
        for param, value in _params(header, field):
            if param.lower() != key:
                continue
            text = email.utils.collapse_rfc2231_value(value).strip()
            if "=?" in text:
                with contextlib.suppress(ValueError, LookupError, UnicodeError, email.errors.MessageError):
                    text = str(email.header.make_header(email.header.decode_header(text)))
            if text and text != name and text not in found:
                found.append(text)
    return tuple(found)


def _params(header: email.message.Message, field: str) -> list[tuple[str, Any]]:
    try:
        return header.get_params(header=field) or []
    except Exception:  # too broken for the parser: the name get_filename found is all there is
        return []


def _part(
    path: str,
    declared: str,
    name: str,
    detected: tuple[str, str],
    blob: _Blob,
    depth: int,
    containers: tuple[str, ...],
    *,
    container: bool,
) -> Part:
    return Part(
        path=path,
        declared_type=declared,
        filename=name,
        detected_type=detected[0],
        description=detected[1],
        size=blob.size,
        digest=blob.digest,
        depth=depth,
        containers=containers,
        container=container,
    )


def _named_only(
    path: str, declared: str, name: str, depth: int, containers: tuple[str, ...], reason: str
) -> Part:
    return Part(path, declared, name, "", "", 0, "", depth, containers, unchecked=f"not decoded: {reason}")
