"""One bad part never switches off the checks of the whole message, and names from the message are data.

A part or member the decoder cannot read is unchecked; what was found elsewhere (banned names and types,
the other parts) still counts, and the most severe category wins. Names from MIME parameters and archive
members never become file names: the decoder's temporary files are named by qsift.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import os
import struct
import tarfile
import tempfile
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import libarchive
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qsift.checks.content import CheckSettings, check_message
from qsift.decode.walk import Decoded, DecodeLimits, decode_message
from qsift.model import Category

#: A DOS program header, which libmagic calls "MS-DOS executable" (amavisd-new: exe-ms); harmless.
EXE = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100
CLAMAV_TESTFILES = next(
    (
        path
        for path in (
            Path("/usr/share/clamav-testfiles"),
            Path(__file__).parents[4] / "shared" / "corpus" / "clamav-testfiles",
        )
        if (path / "clam.arj").is_file()
    ),
    None,
)
needs_clamav_testfiles = pytest.mark.skipif(
    CLAMAV_TESTFILES is None, reason="clamav-testfiles (Debian package or the shared corpus) is not here"
)


# --- building hostile messages, byte by byte ----------------------------------------------------------


def rfc2231(name: bytes, charset: str = "utf-8") -> bytes:
    """`filename*=CHARSET''...` (RFC 2231 §4), every byte but letters and digits percent-encoded."""
    return f"filename*={charset}''".encode() + urllib.parse.quote_from_bytes(name, safe="").encode()


def quoted(name: bytes) -> bytes:
    """`filename="..."` with the name's bytes as they are (8-bit and control characters too)."""
    escaped = name.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\r", b"").replace(b"\n", b"")
    return b'filename="' + escaped + b'"'


def encoded_word(name: bytes) -> bytes:
    """`filename="=?utf-8?b?...?="` (RFC 2047 in a parameter, which senders do and readers accept)."""
    return b'filename="=?utf-8?b?' + base64.b64encode(name) + b'?="'


def mime_message(attachments: list[tuple[bytes, bytes]]) -> bytes:
    """A multipart/mixed message: a text part, then each (Content-Disposition parameter, payload)."""
    parts = [b"Content-Type: text/plain\n\nsee attached\n"]
    for parameter, payload in attachments:
        parts.append(
            b"Content-Type: application/octet-stream\nContent-Disposition: attachment; "
            + parameter
            + b"\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(payload)
        )
    head = (
        b"From: alice@example.org\nTo: bob@example.net\nSubject: invoice\n"
        b"Date: Wed, 25 Nov 2026 12:00:00 +0000\nMessage-ID: <1@example.org>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n'
    )
    return head + b"".join(b"--b\n" + part for part in parts) + b"--b--\n"


def szdd(data: bytes, restored: bytes = b"e") -> bytes:
    """MS COMPRESS.EXE's SZDD: header, the character the name lost, the size, then LZSS with every
    byte a literal (a flag byte of eight 1 bits before each eight bytes)."""
    out = bytearray(b"SZDD\x88\xf0\x27\x33A" + restored + struct.pack("<I", len(data)))
    for start in range(0, len(data), 8):
        chunk = data[start : start + 8]
        out.append((1 << len(chunk)) - 1)
        out += chunk
    return bytes(out)


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": a layout the tests want
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def tar_of(members: list[tuple[str, bytes]], *, encoding: str = "utf-8") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sevenz_of(members: list[tuple[str, bytes]]) -> bytes:
    # libarchive's 7-Zip writer seeks back to write its header: a file, not a stream.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "a.7z")
        with libarchive.file_writer(path, "7zip") as archive:
            for name, data in members:
                archive.add_file_from_memory(name, len(data), data)
        return Path(path).read_bytes()


def arj_named(name: bytes) -> bytes:
    """ClamAV's test ARJ (one member, its test program) with the member renamed: the local header's
    name replaced and its CRC-32 made again (ARJ's header layout, as `arj` documents it)."""
    assert CLAMAV_TESTFILES is not None
    data = (CLAMAV_TESTFILES / "clam.arj").read_bytes()
    # The main header: magic, size, basic header, CRC, an empty extended header.
    local = 4 + struct.unpack_from("<H", data, 2)[0] + 4 + 2
    size = struct.unpack_from("<H", data, local + 2)[0]
    basic = data[local + 4 : local + 4 + size]
    name_start = basic[0]
    name_end = basic.index(b"\x00", name_start)
    renamed = basic[:name_start] + name + basic[name_end:]
    header = b"\x60\xea" + struct.pack("<H", len(renamed)) + renamed
    return data[:local] + header + struct.pack("<I", zlib.crc32(renamed)) + data[local + 4 + size + 4 :]


def deflate64_zip_named(name: bytes) -> bytes:
    """ClamAV's deflate64 zip (libarchive refuses deflate64, so 7-Zip reads it) with its member
    renamed: the same number of bytes in the local header and the central directory."""
    assert CLAMAV_TESTFILES is not None and len(name) == len(b"clam.exe")
    data = (CLAMAV_TESTFILES / "clam.d64.zip").read_bytes()
    assert data.count(b"clam.exe") == 2
    return data.replace(b"clam.exe", name)


def corrupt_gzip() -> bytes:
    """A gzip whose deflate stream is broken: the standard library raises zlib.error, not OSError."""
    good = gzip.compress(b"hello world\n" * 100)
    return good[:10] + b"\xff" * 40 + good[50:]


def banned_findings(decoded_or_findings: object) -> list[str]:
    findings = getattr(decoded_or_findings, "findings", ())
    return [f.part for f in findings if f.category is Category.BANNED]


def unchecked(decoded: Decoded) -> list[tuple[int, str]]:
    return [(f.minor, f.detail) for f in decoded.findings if f.category is Category.UNCHECKED]


# --- the issue's message and its relatives --------------------------------------------------------------

#: The issue's message: a banned invoice.pdf.exe, then an SZDD file whose RFC 2231 name holds a NUL.
ISSUE_MESSAGE = mime_message(
    [(b'filename="invoice.pdf.exe"', EXE), (b"filename*=utf-8''x%00.ex_", szdd(EXE))]
)


def test_the_issue_message_is_banned_and_its_szdd_part_read() -> None:
    verdict = check_message(ISSUE_MESSAGE, CheckSettings())
    assert verdict.category is Category.BANNED, verdict.findings
    assert [f for f in verdict.findings if f.category is Category.UNCHECKED] == []
    parts = {p.path: p for p in verdict.parts}
    assert parts["3"].filename == "x\x00.ex_" and parts["3"].detected_type == "szdd"
    # EXPAND's name for the member: the container's, its "_" put back from the header.
    assert parts["3/x\x00.exe"].detected_type == "exe-ms"
    # The SZDD part is banned itself (a control character in its name), which covers its member.
    assert banned_findings(verdict) == ["2", "3"]


@pytest.mark.parametrize("threshold", [1 << 20, 100], ids=["in memory", "spilled to disk"])
def test_an_szdd_member_is_named_after_its_container(threshold: int) -> None:
    decoded = decode_message(
        mime_message([(b'filename="setup.ex_"', szdd(EXE, b"e"))]), DecodeLimits(memory_threshold=threshold)
    )
    assert [p.path for p in decoded.parts] == ["1", "2", "2/setup.exe"] and unchecked(decoded) == []


def test_an_exception_not_of_qsift_stays_in_its_part() -> None:
    """A broken gzip (zlib.error, which the gzip reader lets through) between a banned program and a
    part after it: the gzip is unchecked, the program still banned, the part after it still read."""
    message = mime_message(
        [
            (b'filename="invoice.pdf.exe"', EXE),
            (b'filename="notes.gz"', corrupt_gzip()),
            (b'filename="late.zip"', zip_of([("run.exe", EXE)])),
        ]
    )
    decoded = decode_message(message)
    assert [(m, d.split(":")[0]) for m, d in unchecked(decoded)] == [(0, "3")]
    assert "error: Error -3 while decompressing data" in unchecked(decoded)[0][1]
    assert "4/run.exe" in {p.path for p in decoded.parts}
    verdict = check_message(message, CheckSettings())
    assert verdict.category is Category.BANNED
    assert {"2", "4/run.exe"} <= set(banned_findings(verdict))


def test_a_part_that_cannot_be_written_to_disk_is_unchecked_and_listed_by_name(tmp_path: Path) -> None:
    """A large part goes to the decoder's temp directory; when that fails (here the directory is gone,
    as on a full disk the write fails), the part is unchecked and named, and the program after it banned."""
    message = mime_message(
        [(b'filename="report.pdf.scr"', b"%PDF-1.4\n" * 1000), (b'filename="invoice.pdf.exe"', EXE)]
    )
    limits = DecodeLimits(memory_threshold=4096)
    verdict = check_message(message, CheckSettings(decode=limits, tmp_dir=str(tmp_path / "gone")))
    report = next(p for p in verdict.parts if p.path == "2")
    assert report.filename == "report.pdf.scr" and report.unchecked.startswith(
        "not decoded: FileNotFoundError"
    )
    unchecked_parts = [f.part for f in verdict.findings if f.category is Category.UNCHECKED]
    assert unchecked_parts == ["2"]
    assert verdict.category is Category.BANNED and banned_findings(verdict) == ["2", "3"]


def test_a_member_that_cannot_be_read_is_still_listed_by_name(tmp_path: Path) -> None:
    """An encrypted zip: the content is unchecked, but its member's name is in the clear and banned."""
    import subprocess

    (tmp_path / "invoice.pdf.exe").write_text("not really a program\n")
    subprocess.run(
        ["7z", "a", "-tzip", "-psecret", str(tmp_path / "e.zip"), str(tmp_path / "invoice.pdf.exe")],
        check=True,
        capture_output=True,
    )
    message = mime_message([(b'filename="e.zip"', (tmp_path / "e.zip").read_bytes())])
    decoded = decode_message(message)
    member = next(p for p in decoded.parts if p.path == "2/invoice.pdf.exe")
    assert member.filename == "invoice.pdf.exe" and member.unchecked and member.in_archive
    assert [m for m, _ in unchecked(decoded)] == [1]
    verdict = check_message(message, CheckSettings())
    assert verdict.category is Category.BANNED and banned_findings(verdict) == ["2/invoice.pdf.exe"]


def test_a_member_name_that_is_not_utf8_keeps_its_extension() -> None:
    """A zip from a Latin-1 system (no UTF-8 flag): the name's bytes are not UTF-8, and it is a .exe."""
    archive = zip_of([("rQsumQ.exe", b"text\n")]).replace(b"rQsumQ.exe", b"r\xe9sum\xe9.exe")
    verdict = check_message(mime_message([(b'filename="cv.zip"', archive)]), CheckSettings())
    member = next(p for p in verdict.parts if p.path.startswith("2/"))
    assert member.filename == "r\ufffdsum\ufffd.exe" and member.detected_type == "asc"
    assert verdict.category is Category.BANNED and banned_findings(verdict) == [member.path]


def test_members_of_the_same_name_are_each_read() -> None:
    """A zip may hold one name twice; the second (a program here) is as much a member as the first."""
    archive = zip_of([("notes.txt", b"plain text\n"), ("notes.txt", EXE)])
    decoded = decode_message(mime_message([(b'filename="a.zip"', archive)]))
    members = [p.detected_type for p in decoded.parts if p.path == "2/notes.txt"]
    assert members == ["asc", "exe-ms"]


@needs_clamav_testfiles
def test_links_7zip_lists_are_not_members(tmp_path: Path) -> None:
    """A deflate64 zip (7-Zip reads it) that holds symbolic links: 7-Zip gives a link's target as its
    content, which is skipped, as libarchive's links are; a link to /dev/zero or to nothing is no member
    and no failure (7-Zip used to make the links on disk and qsift to open them)."""
    import subprocess

    assert CLAMAV_TESTFILES is not None
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "run.exe").write_bytes((CLAMAV_TESTFILES / "clam.exe").read_bytes())
    os.symlink("/dev/zero", tmp_path / "in" / "zero")
    os.symlink("/nonexistent/target", tmp_path / "in" / "dangling")
    subprocess.run(
        ["7z", "a", "-tzip", "-mm=Deflate64", "-snl", str(tmp_path / "l.zip"), "run.exe", "zero", "dangling"],
        cwd=tmp_path / "in",
        check=True,
        capture_output=True,
    )
    decoded = decode_message(mime_message([(b'filename="l.zip"', (tmp_path / "l.zip").read_bytes())]))
    assert [p.path for p in decoded.parts if p.path.startswith("2/")] == ["2/run.exe"]
    assert unchecked(decoded) == []


@needs_clamav_testfiles
@pytest.mark.parametrize(
    ("short", "container"),
    [
        ("arj", lambda: arj_named(b"../\x01evil\r.exe")),
        ("zip", lambda: deflate64_zip_named(b"../a.exe")),
        ("szdd", lambda: szdd(EXE)),
    ],
)
def test_7zip_writes_no_member_to_disk(tmp_path: Path, short: str, container: Callable[[], bytes]) -> None:
    """While 7-Zip's members are read, the only file in the decoder's directory is the one qsift wrote."""
    from qsift.decode import archive

    members = archive.open_container(
        short, "x/../\x00y.arj", container(), None, work_dir=lambda: str(tmp_path), time_left=lambda: 30.0,
        seven_zip=True,
    )  # fmt: skip
    assert CLAMAV_TESTFILES is not None
    expected = EXE if short == "szdd" else (CLAMAV_TESTFILES / "clam.exe").read_bytes()
    names = []
    for name, blocks in members:
        assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["container"]
        assert b"".join(blocks) == expected
        names.append(name)
    assert names == [{"arj": "../\x01evil\r.exe", "zip": "../a.exe", "szdd": "x/../\x00y.arj"}[short]]


def child_processes() -> list[str]:
    """The commands of this process's children (7-Zip among them while it runs)."""
    children = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                children.append((Path("/proc") / pid / "comm").read_text().strip())
    return children


def test_a_bomb_7zip_reads_is_stopped_at_the_bound_and_7zip_with_it(tmp_path: Path) -> None:
    """Deflate64 (libarchive refuses it, 7-Zip reads it) of 20 MB of zeros, a member bound of 1 MB: the
    walker stops at the bound and 7-Zip, still writing, is stopped with it."""
    import subprocess

    subprocess.run(
        ["7z", "a", "-tzip", "-mm=Deflate64", "-sizeros.bin", str(tmp_path / "b.zip")],
        input=bytes(20_000_000),
        capture_output=True,
        check=True,
    )
    limits = DecodeLimits(max_member_bytes=1 << 20)
    decoded = decode_message(mime_message([(b'filename="b.zip"', (tmp_path / "b.zip").read_bytes())]), limits)
    assert [m for m, _ in unchecked(decoded)] == [2] and "larger than 1048576" in unchecked(decoded)[0][1]
    assert "7z" not in child_processes()


# --- the property: hostile names and layouts next to a banned program ----------------------------------

_FRAGMENTS = st.sampled_from(
    [
        b"\x00", b"/", b"..", b"../", b"/..", b"\\", b"..\\", b".", b" ", b"\x01", b"\x1b", b"\x7f",
        b"\t", b"\xe9", b"\xff", b"\xc3\xa9", b"\xe2\x80\xae", b"%00", b"a", b"x", b".exe", b".ex_",
        b".zip", b"~", b"-", b"*", b"?", b"'", b'"', b";", b"=", b"%", b"*0*",
    ]
)  # fmt: skip
HOSTILE_NAMES = st.one_of(
    st.lists(_FRAGMENTS, max_size=12).map(b"".join),
    st.tuples(st.integers(200, 3000), _FRAGMENTS).map(lambda n: b"a" * n[0] + n[1]),
    st.binary(max_size=40),
)
ENCODINGS: tuple[Callable[[bytes], bytes], ...] = (
    rfc2231,
    lambda name: rfc2231(name, "iso-8859-1"),
    lambda name: rfc2231(name, "x-unknown"),
    quoted,
    encoded_word,
)


def _member(name: bytes) -> str:
    # Archive writers take text; bytes that are not UTF-8 stay as they are, escaped.
    return name.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode()


@st.composite
def layouts(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A payload: a plain file, or a container of one kind holding members with hostile names,
    possibly nested."""
    kinds = ["plain", "zip", "tar", "7z", "szdd", "gzip-broken"]
    if CLAMAV_TESTFILES is not None:
        kinds += ["arj", "deflate64"]
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        return draw(st.sampled_from([b"just text\n", EXE, b"", b"%PDF-1.4\n"]))
    if kind == "szdd":
        return szdd(
            draw(st.sampled_from([EXE, b"text\n" * 10])), draw(st.sampled_from([b"e", b"\x00", b"/"]))
        )
    if kind == "gzip-broken":
        return corrupt_gzip()
    if kind == "arj":
        return arj_named(draw(HOSTILE_NAMES.filter(lambda n: b"\x00" not in n)))
    if kind == "deflate64":
        return deflate64_zip_named(draw(st.binary(min_size=8, max_size=8)))
    inner = layouts(depth + 1) if depth < 2 else st.just(b"leaf\n")
    members = draw(st.lists(st.tuples(HOSTILE_NAMES.map(_member), inner), min_size=1, max_size=4))
    builders = {"zip": zip_of, "tar": tar_of, "7z": sevenz_of}
    try:
        return builders[kind](members)
    except (ValueError, OSError, libarchive.ArchiveError, UnicodeError):
        return zip_of([("fallback", b"x")])  # a name the writer itself refuses: not this test's subject


@contextlib.contextmanager
def watched_directories() -> Iterator[tuple[Path, Path]]:
    """(the decoder's temp parent, the working directory), both empty, in a fresh directory."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as root:
        top = Path(root)
        decoder = top / "decoder" / "tmp"
        work = top / "cwd"
        decoder.mkdir(parents=True)
        work.mkdir()
        os.chdir(work)
        try:
            yield decoder, work
        finally:
            os.chdir(previous)
        written = sorted(str(p.relative_to(top)) for p in top.rglob("*"))
        assert written == ["cwd", "decoder", "decoder/tmp"], written


@settings(max_examples=60, deadline=None)
@given(
    hostile=st.lists(st.tuples(HOSTILE_NAMES, st.sampled_from(ENCODINGS), layouts()), min_size=1, max_size=3),
    position=st.integers(0, 3),
    spill=st.booleans(),
)
@example(hostile=[(b"x\x00.ex_", rfc2231, szdd(EXE))], position=0, spill=False)
def test_a_banned_program_is_banned_whatever_lies_beside_it(
    hostile: list[tuple[bytes, Callable[[bytes], bytes], bytes]], position: int, spill: bool
) -> None:
    attachments = [(encode(name), payload) for name, encode, payload in hostile]
    where = min(position, len(attachments))
    attachments.insert(where, (b'filename="invoice.pdf.exe"', EXE))
    banned_path = str(where + 2)  # part 1 is the text
    limits = DecodeLimits(memory_threshold=64 if spill else 1 << 20, time_limit=20)
    with watched_directories() as (decoder, _):
        verdict = check_message(mime_message(attachments), CheckSettings(decode=limits, tmp_dir=str(decoder)))
    assert verdict.category is Category.BANNED, verdict.findings
    assert banned_path in banned_findings(verdict)
    assert next(p for p in verdict.parts if p.path == banned_path).filename == "invoice.pdf.exe"
