"""Open containers: archives through libarchive, what it cannot read through 7-Zip, TNEF by decode/tnef.py.

Each opener yields the members of one container as (name, blocks), the blocks an iterator of bytes, so
the walker can count and bound every byte as it comes (bombs) instead of trusting sizes the archive
claims. Which opener runs is chosen by the container's detected type, never by its name.

A member that cannot be read ends the container with `ContainerError`: `encrypted` when a password
is needed, so the walker can say which kind of unchecked it is (amavisd-new's UNCHECKED-ENCRYPTED).

Names from the message (the part's, the members') are data, never file names: libarchive, the standard
library and the TNEF reader read from memory or from a file qsift named, and 7-Zip writes its members to its
standard output, never to disk.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import itertools
import lzma
import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import IO

import libarchive

from qsift.decode import tnef
from qsift.decode.filetype import MAGIC_BYTES

#: Short types libarchive opens, with the format to ask it for ("all" lets it tell rar from rar5).
_LIBARCHIVE_FORMATS = {
    "zip": "zip",
    "jar": "zip",
    "rar": "all",
    "7z": "7zip",
    "tar": "tar",
    "cpio": "cpio",
    "rpm": "cpio",
    "cab": "cab",
    "lha": "lha",
    "iso": "iso9660",
    "a": "ar",
    "deb": "ar",
    "xar": "xar",
}
#: Single-file compressions: one member, the uncompressed stream (a .tar.gz is a gz holding a tar).
_COMPRESSED = frozenset({"gz", "bz2", "xz", "lzma", "zst", "lz", "lz4", "Z"})
#: Those the standard library streams itself: faster than libarchive's raw format, and an empty .gz
#: is an empty file rather than an error.
_STDLIB_COMPRESSED = frozenset({"gz", "bz2", "xz", "lzma"})
#: What libarchive cannot read and 7-Zip can.
_SEVEN_ZIP = frozenset({"arj", "chm", "szdd"})
_SEVEN_ZIP_SECOND = frozenset({"zip", "jar", "cab", "rar", "7z", "lha", "iso", "xar"})
#: Archives qsift recognises and nothing here opens: their content is unchecked, never clean.
_NO_DECODER = frozenset({"ace", "zoo", "arc", "sit"})
_SEVEN_ZIP_BINARY = "7z"
_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz", ".xz", ".txz", ".lzma", ".zst", ".lz", ".lz4", ".z")

Blocks = Iterator[bytes]
#: A generator, so that the walker can close one it leaves (and stop a 7-Zip still writing).
Members = Generator[tuple[str, Blocks], None, None]


class ContainerError(Exception):
    """The container, or a member of it, could not be read."""

    def __init__(self, reason: str, *, encrypted: bool = False) -> None:
        super().__init__(reason)
        self.encrypted = encrypted


def can_open(short_type: str, *, seven_zip: bool = True) -> bool:
    if short_type in _LIBARCHIVE_FORMATS or short_type in _COMPRESSED or short_type == "tnef":
        return True
    return seven_zip and short_type in _SEVEN_ZIP


def undecodable_archive(short_type: str) -> bool:
    return short_type in _NO_DECODER


def seven_zip_fallback(short_type: str) -> bool:
    """Whether 7-Zip may read what libarchive refused (zip's deflate64 and implode, odd cab and rar)."""
    return short_type in _SEVEN_ZIP_SECOND


def open_container(
    short_type: str,
    name: str,
    data: bytes | None,
    path: str | None,
    *,
    work_dir: Callable[[], str],
    time_left: Callable[[], float],
    seven_zip: bool = False,
) -> Members:
    """The members of a container given as bytes or as a file; `can_open(short_type)` must be true."""
    if short_type == "tnef":
        return _tnef(data if data is not None else _read(path))
    if short_type in _SEVEN_ZIP or seven_zip:
        members = _seven_zip(name, data, path, work_dir(), time_left())
        return _szdd_named(name, data, path, members) if short_type == "szdd" else members
    if short_type in _STDLIB_COMPRESSED:
        return _decompressed(short_type, data, path, _uncompressed_name(name))
    if short_type in _COMPRESSED:
        return _libarchive(data, path, "raw", single_name=_uncompressed_name(name))
    return _libarchive(data, path, _LIBARCHIVE_FORMATS[short_type])


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as stream:
        return stream.read()


def _uncompressed_name(name: str) -> str:
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            stem = name[: -len(suffix)]
            return stem + ".tar" if suffix in (".tgz", ".tbz", ".txz") else stem
    return (name or "data") + ".uncompressed"


def _libarchive(data: bytes | None, path: str | None, format_name: str, single_name: str = "") -> Members:
    try:
        if data is not None:
            opened = libarchive.memory_reader(data, format_name=format_name, filter_name="all")
        else:
            assert path is not None
            opened = libarchive.file_reader(path, format_name=format_name, filter_name="all")
        with opened as archive:
            for entry in archive:
                if not entry.isreg:
                    continue  # directories, links, devices: nothing to scan
                yield single_name or _member_name(entry.pathname), _entry_blocks(entry)
    except libarchive.ArchiveError as exc:
        raise _container_error(exc) from None


def _member_name(pathname: str | bytes | None) -> str:
    """A member's name as text; bytes libarchive could not decode (not UTF-8, no charset said) are read
    as UTF-8 with U+FFFD for what is not, so "r\\xe9sum\\xe9.exe" still ends in ".exe"."""
    if isinstance(pathname, bytes):
        return pathname.decode("utf-8", "replace")
    return pathname or ""


def _entry_blocks(entry: libarchive.ArchiveEntry) -> Blocks:
    try:
        yield from entry.get_blocks()
    except libarchive.ArchiveError as exc:
        raise _container_error(exc) from None


def _container_error(exc: libarchive.ArchiveError) -> ContainerError:
    message = str(exc).split(" (errno=", 1)[0]
    encrypted = "assphrase" in message or "ncrypt" in message or "ecryption" in message
    return ContainerError(message, encrypted=encrypted)


def _decompressed(kind: str, data: bytes | None, path: str | None, name: str) -> Members:
    raw: IO[bytes] = io.BytesIO(data) if data is not None else open(path or "", "rb")  # noqa: SIM115
    yield name, _stream_blocks(kind, raw)


def _decompressor(kind: str, raw: IO[bytes]) -> io.BufferedIOBase:
    # Each reads the whole stream, several concatenated members included, in bounded pieces.
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    return lzma.LZMAFile(raw)


def _stream_blocks(kind: str, raw: IO[bytes]) -> Blocks:
    try:
        with raw, _decompressor(kind, raw) as stream:
            while block := stream.read(MAGIC_BYTES):
                yield block
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise ContainerError(f"cannot decompress: {exc}") from None


def _tnef(data: bytes) -> Members:
    try:
        contents = tnef.read_attachments(data)
    except tnef.TnefError as exc:
        raise ContainerError(f"TNEF: {exc}") from None
    for attachment in contents.attachments:
        yield attachment.name or "attachment", iter([attachment.data])
    if contents.damage:
        raise ContainerError(f"TNEF: {contents.damage}")


def _seven_zip(name: str, data: bytes | None, path: str | None, directory: str, seconds: float) -> Members:
    """Members through 7-Zip's standard output: names and sizes from its listing (`7z l -slt`), bytes
    from `7z x -so` in the same order, cut at those sizes.

    7-Zip writes no file, so no name from the archive becomes a file name; nor does the container's own
    name (it may hold a NUL, a "/", ".." or control characters): qsift writes it as "container" in a
    private directory when it is not on disk already. The walker bounds the bytes as they come; the
    deadline bounds the wait for them.
    """
    deadline = time.monotonic() + seconds
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="7z-", dir=directory), "container")
        with open(path, "wb") as stream:
            stream.write(data or b"")
    items = _seven_zip_listing(path, deadline)
    with tempfile.TemporaryFile(dir=directory) as errors:
        yield from _seven_zip_output(path, items, errors, deadline)


@dataclass(frozen=True)
class _Listed:
    """One item of 7-Zip's listing, in the order its output follows."""

    name: str
    #: None when the format does not say (then it must be the last item, read to the end).
    size: int | None
    #: False for a link: its target comes in the output and is skipped, as libarchive's links are.
    regular: bool


def _seven_zip_listing(path: str, deadline: float) -> list[_Listed]:
    result = _run_seven_zip(["l", "-slt", "-ba", "-p", "--", path], deadline)
    items = _listed(result.stdout.decode("utf-8", "replace"))
    # A damaged archive still lists what it can; extracting it then says what is wrong, member by member.
    if result.returncode != 0 and not items:
        raise _seven_zip_failure(result.stderr + result.stdout, path)
    return items


def _run_seven_zip(arguments: list[str], deadline: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [_SEVEN_ZIP_BINARY, *arguments],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(0.1, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ContainerError("7-Zip took too long") from None
    except FileNotFoundError:
        raise ContainerError("7-Zip (7z) is not installed") from None


_LINK_MODE = re.compile(r"(?:^|\s)l[-rwxsStT]{9}(?:\s|$)")


def _listed(listing: str) -> list[_Listed]:
    """The files of `7z l -slt -ba` output: blocks of "Key = value" lines, one block per item. 7-Zip
    prints a line break in a name as "_", so a block is one item and a line one field."""
    blocks = [
        dict(line.split(" = ", 1) for line in block.split("\n") if " = " in line)
        for block in listing.split("\n\n")
    ]
    items = [item for item in blocks if "Path" in item]
    # Some formats (CHM) mark no folder: an empty item that others continue with "/" is one. Folders
    # have no bytes in the output; anything listed with a size has, whatever its name.
    parents = {item["Path"].rsplit("/", 1)[0] for item in items if "/" in item["Path"]}
    files = []
    for item in items:
        size = int(item["Size"]) if item.get("Size", "").isdigit() else None
        folder = item.get("Folder") == "+" or item.get("Attributes", "").startswith("D")
        if folder or (item["Path"] in parents and not size):
            continue
        files.append(_Listed(item["Path"], size, regular=not _LINK_MODE.search(item.get("Attributes", ""))))
    return files


def _seven_zip_output(path: str, items: list[_Listed], errors: IO[bytes], deadline: float) -> Members:
    process = subprocess.Popen(
        [_SEVEN_ZIP_BINARY, "x", "-so", "-bd", "-p", "--", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errors,
    )
    assert process.stdout is not None
    output = _Output(process, errors, path, deadline)
    try:
        for index, item in enumerate(items):
            if item.size is None and index < len(items) - 1:
                raise ContainerError(f"7-Zip lists no size for {item.name!r}")
            blocks = output.blocks(item.size)
            if item.regular:
                yield item.name, blocks
            for _ in blocks:
                pass  # what the walker did not take (a member a first opener already read, a link)
        if output.read():
            raise ContainerError("7-Zip wrote more than it listed")
        output.finish()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


class _Output:
    """7-Zip's standard output, read within the deadline, and its exit status once it ends."""

    def __init__(
        self, process: subprocess.Popen[bytes], errors: IO[bytes], path: str, deadline: float
    ) -> None:
        assert process.stdout is not None
        self._process = process
        self._fd = process.stdout.fileno()
        self._errors = errors
        self._path = path
        self._deadline = deadline

    def read(self, most: int = MAGIC_BYTES) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0 or not select.select([self._fd], [], [], left)[0]:
            raise ContainerError("7-Zip took too long")
        return os.read(self._fd, most)

    def blocks(self, size: int | None) -> Blocks:
        """The next `size` bytes (None: all that is left), as they come."""
        left = size
        while left is None or left > 0:
            block = self.read(MAGIC_BYTES if left is None else min(left, MAGIC_BYTES))
            if not block:
                if left is None:
                    return
                self.finish()  # ended early: its exit status says why (a wrong password, a bad CRC)
                raise ContainerError("7-Zip wrote less than it listed")
            if left is not None:
                left -= len(block)
            yield block

    def finish(self) -> None:
        """Wait for 7-Zip to exit; raise what it reported if it failed."""
        try:
            status = self._process.wait(timeout=max(0.1, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ContainerError("7-Zip took too long") from None
        if status != 0:
            self._errors.seek(0)
            raise _seven_zip_failure(self._errors.read(64 * 1024), self._path)


def _seven_zip_failure(output: bytes, path: str) -> ContainerError:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    text = "\n".join(lines)
    encrypted = "Wrong password" in text or "encrypted archive" in text
    # "ERROR: what : where", or "ERRORS:" with what on the next line.
    reasons = [line for line in lines if line.startswith("ERROR: ")]
    reasons += [after for line, after in itertools.pairwise(lines) if line == "ERRORS:"]
    # The temp path means nothing to a postmaster and must not reach a DSN.
    reason = (reasons[0] if reasons else "7-Zip failed").replace(path, "the container")
    return ContainerError(reason[:200], encrypted=encrypted)


#: MS COMPRESS.EXE's SZDD header: the magic, the method ("A"), then the character the name lost.
_SZDD_MAGIC = b"SZDD\x88\xf0\x27\x33A"


def _szdd_named(name: str, data: bytes | None, path: str | None, members: Members) -> Members:
    """SZDD holds one file and no name: COMPRESS.EXE named the container after the file with its last
    character replaced by "_" and kept that character in the header (EXPAND.EXE -r puts it back). So the
    member's name is made here from the container's, whatever 7-Zip called its output."""
    head = data[: len(_SZDD_MAGIC) + 1] if data is not None else _head(path, len(_SZDD_MAGIC) + 1)
    restored = head[-1:] if head.startswith(_SZDD_MAGIC) and len(head) > len(_SZDD_MAGIC) else b""
    if name.endswith("_") and restored.isalnum():
        name = name[:-1] + restored.decode("ascii")
    with contextlib.closing(members):  # closing this closes 7-Zip's too
        for _, blocks in members:
            yield name or "data", blocks


def _head(path: str | None, size: int) -> bytes:
    assert path is not None
    with open(path, "rb") as stream:
        return stream.read(size)
