"""Open containers: archives through libarchive, what it cannot read through 7-Zip, TNEF through tnefparse.

Each opener yields the members of one container as (name, blocks), the blocks an iterator of bytes, so
the walker can count and bound every byte as it comes (bombs) instead of trusting sizes the archive
claims. Which opener runs is chosen by the container's detected type, never by its name.

A member that cannot be read ends the container with `ContainerError`: `encrypted` when a password
is needed, so the walker can say which kind of unchecked it is (amavisd-new's UNCHECKED-ENCRYPTED).

Names from the message (the part's, the members') are data, never file names: what goes to disk for 7-Zip
is named here. 7-Zip names what it extracts itself, inside a fresh private directory, after its own
sanitizing (no absolute paths, no "..", links kept inside); only the regular files it wrote are read.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

import libarchive
import tnefparse

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
Members = Iterator[tuple[str, Blocks]]


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
    size_left: Callable[[], int],
    seven_zip: bool = False,
) -> Members:
    """The members of a container given as bytes or as a file; `can_open(short_type)` must be true."""
    if short_type == "tnef":
        return _tnef(data if data is not None else _read(path))
    if short_type in _SEVEN_ZIP or seven_zip:
        members = _seven_zip(name, data, path, work_dir(), time_left(), size_left())
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
        tnef = tnefparse.TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises plain ValueError/struct.error/IndexError on bad input
        raise ContainerError(f"TNEF: {exc}") from None
    for attachment in tnef.attachments:
        name = attachment.long_filename() or attachment.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        yield str(name or "attachment"), iter([bytes(attachment.data or b"")])


def _seven_zip(
    name: str, data: bytes | None, path: str | None, directory: str, seconds: float, max_bytes: int
) -> Members:
    """Extract with 7-Zip into a private directory, with a time limit and a file-size limit.

    The container is written under a name qsift makes: the name the message gave it may hold a NUL, a
    "/", ".." or control characters, and is only data (`_szdd_named` gives SZDD's member its name).
    """
    out = tempfile.mkdtemp(prefix="7z-", dir=directory)
    if path is None:
        path = os.path.join(out, "container")
        with open(path, "wb") as stream:
            stream.write(data or b"")
        out = tempfile.mkdtemp(prefix="out-", dir=directory)

    # The shell's ulimit makes the kernel stop any file the archive claims small and expands big
    # (RLIMIT_FSIZE, in 512-byte blocks); no preexec_fn, which is unsafe in a threaded process.
    blocks = str(max_bytes // 512 + 1)
    command = [_SEVEN_ZIP_BINARY, "x", "-y", "-bd", "-p", f"-o{out}", "--", path]
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", 'ulimit -f "$1" && shift && exec "$@"', "sh", blocks, *command],
            capture_output=True,
            timeout=max(0.1, seconds),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ContainerError("7-Zip took too long") from None
    if result.returncode == 127:
        raise ContainerError("7-Zip (7z) is not installed")
    if result.returncode != 0:
        text = (result.stderr or result.stdout).decode("utf-8", "replace")
        encrypted = "Wrong password" in text or "encrypted" in text.lower()
        reason = next((line.strip() for line in text.splitlines() if "ERROR" in line), "7-Zip failed")
        # The temp path means nothing to a postmaster and must not reach a DSN.
        reason = reason.replace(path, "the container")
        raise ContainerError(reason[:200], encrypted=encrypted)
    for root, _, files in sorted(os.walk(out)):
        for file in sorted(files):
            member = os.path.join(root, file)
            # Links 7-Zip made (it keeps them inside `out`) are not members: only regular files are read.
            if stat.S_ISREG(os.lstat(member).st_mode):
                yield os.path.relpath(member, out), _file_blocks(member)


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
    for _, blocks in members:
        yield name or "data", blocks


def _head(path: str | None, size: int) -> bytes:
    assert path is not None
    with open(path, "rb") as stream:
        return stream.read(size)


def _file_blocks(path: str) -> Blocks:
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as stream:
        while block := stream.read(MAGIC_BYTES):
            yield block
    with contextlib.suppress(OSError):
        os.unlink(path)
