"""The decoder over real containers: every format, its bounds, bombs, encrypted archives, the corpus."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import struct
import subprocess
import tarfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.decode.parts import Part
from qsift.decode.walk import Decoded, DecodeLimits, decode_message
from qsift.model import Category

DATA = Path(__file__).parents[2] / "data" / "archives"
CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")
#: The shared corpus beside the checkout (/work/main), or where QSIFT_CORPUS says (a worktree elsewhere).
CORPUS = Path(os.environ.get("QSIFT_CORPUS") or Path(__file__).parents[4] / "shared" / "corpus")
#: A DOS program header, which libmagic calls "MS-DOS executable" (amavisd-new: exe-ms); harmless.
EXE = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100


def mail_with(payload: bytes, filename: str, *, text: str = "see attached") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    message["Subject"] = "attachment"
    message.set_content(text)
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename=filename)
    return message.as_bytes()


def leaves(decoded: Decoded) -> dict[str, Part]:
    return {p.path: p for p in decoded.parts if not p.container}


def unchecked(decoded: Decoded) -> list[tuple[int, str]]:
    return [(f.minor, f.detail) for f in decoded.findings if f.category is Category.UNCHECKED]


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- MIME ---------------------------------------------------------------------------------------------


def test_parts_have_paths_types_names_sizes_and_digests() -> None:
    decoded = decode_message(mail_with(EXE, "invoice.pdf.exe"))
    text, exe = leaves(decoded)["1"], leaves(decoded)["2"]
    assert (text.declared_type, text.detected_type, text.depth) == ("text/plain", "asc", 0)
    assert (exe.declared_type, exe.filename, exe.detected_type) == (
        "application/octet-stream",
        "invoice.pdf.exe",
        "exe-ms",
    )
    assert exe.size == len(EXE) and len(exe.digest) == 64 and exe.containers == ()
    assert unchecked(decoded) == []


def test_rfc2231_and_encoded_word_names_are_decoded() -> None:
    raw = (
        b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n'
        b"--b\nContent-Type: application/octet-stream\n"
        b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.exe\n"
        b"Content-Transfer-Encoding: base64\n\nTVo=\n"
        b'--b\nContent-Type: application/octet-stream; name="=?utf-8?b?0YTQsNC50LsuZXhl?="\n'
        b"Content-Transfer-Encoding: base64\n\nTVo=\n--b--\n"
    )
    names = [p.filename for p in decode_message(raw).parts]
    assert names == ["", "r\u00e9sum\u00e9.exe", "\u0444\u0430\u0439\u043b.exe"]


def test_attached_message_is_walked_with_its_own_parts() -> None:
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner text")
    inner.add_attachment(b"PK-not-really", maintype="application", subtype="octet-stream", filename="x.scr")
    outer = EmailMessage()
    outer["From"] = "a@x"
    outer.set_content("outer")
    outer.add_attachment(inner)
    decoded = decode_message(outer.as_bytes())
    paths = {p.path: p for p in decoded.parts}
    assert paths["2"].container and paths["2"].declared_type == "message/rfc822"
    assert (
        paths["2/2"].filename == "x.scr"
        and paths["2/2"].depth == 1
        and paths["2/2"].containers == ("message",)
    )


def test_uuencoded_file_in_a_text_body() -> None:
    import binascii

    lines = b"".join(binascii.b2a_uu(EXE[i : i + 45]) for i in range(0, len(EXE), 45))
    body = b"Here it is:\n\nbegin 644 run.exe\n" + lines + b"`\nend\n\nbye\n"
    raw = b"From: a@x\nSubject: uu\n\n" + body
    decoded = decode_message(raw)
    member = leaves(decoded)["1/run.exe"]
    assert member.detected_type == "exe-ms" and member.size == len(EXE) and member.containers == ("1",)


def test_uuencoded_file_with_bare_cr_line_ends() -> None:
    # The SMTP forward sends each bare CR as CRLF: a reader that decodes uuencoded text finds run.exe.
    import binascii

    lines = b"".join(binascii.b2a_uu(EXE[i : i + 45]) for i in range(0, len(EXE), 45)).replace(b"\n", b"\r")
    raw = b"From: a@x\nSubject: uu\n\nHere it is:\rbegin 644 run.exe\r" + lines + b"`\rend\rbye\n"
    member = leaves(decode_message(raw))["1/run.exe"]
    assert member.detected_type == "exe-ms" and member.size == len(EXE)


def test_uuencoded_file_at_the_start_of_a_body_and_begin_in_prose() -> None:
    # "begin " in running text is no uuencoded file; one on the body's first line is.
    import binascii

    lines = b"".join(binascii.b2a_uu(EXE[i : i + 45]) for i in range(0, len(EXE), 45))
    first = b"begin 644 run.exe\n" + lines + b"`\nend\n"
    prose = b"Let us begin 644 times over.\n" * 50
    assert "1/run.exe" in leaves(decode_message(b"From: a@x\nSubject: uu\n\n" + first))
    only_prose = leaves(decode_message(b"From: a@x\nSubject: uu\n\n" + prose))
    assert list(only_prose) == ["1"] and only_prose["1"].detected_type == "asc"


# --- archives, each format from real bytes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "container"),
    [
        ("a.zip", lambda: zip_of({"docs/run.exe": EXE})),
        ("a.zip", lambda: zip_of({"docs/run.exe": EXE}, zipfile.ZIP_STORED)),
        ("a.zip", lambda: zip_of({"docs/run.exe": EXE}, zipfile.ZIP_BZIP2)),
        ("a.zip", lambda: zip_of({"docs/run.exe": EXE}, zipfile.ZIP_LZMA)),
        ("a.tar", lambda: tar_of({"docs/run.exe": EXE})),
        ("a.tgz", lambda: tar_of({"docs/run.exe": EXE}, "w:gz")),
        ("a.tar.bz2", lambda: tar_of({"docs/run.exe": EXE}, "w:bz2")),
        ("a.tar.xz", lambda: tar_of({"docs/run.exe": EXE}, "w:xz")),
    ],
)
def test_archives_made_here(name: str, container: object) -> None:
    assert callable(container)
    decoded = decode_message(mail_with(container(), name))
    found = [p for p in decoded.parts if p.filename == "run.exe"]
    assert len(found) == 1 and found[0].detected_type == "exe-ms" and found[0].size == len(EXE)
    assert found[0].in_archive and unchecked(decoded) == []


@pytest.mark.parametrize(
    ("compress", "name", "member"),
    [
        (gzip.compress, "run.exe.gz", "run.exe"),
        (bz2.compress, "run.exe.bz2", "run.exe"),
        (lzma.compress, "x.xz", "x"),
    ],
)
def test_single_file_compressions(compress: object, name: str, member: str) -> None:
    assert callable(compress)
    decoded = decode_message(mail_with(compress(EXE), name))
    assert leaves(decoded)[f"2/{member}"].detected_type == "exe-ms"


def test_an_empty_gzip_is_an_empty_member() -> None:
    decoded = decode_message(mail_with(gzip.compress(b""), "e.gz"))
    assert leaves(decoded)["2/e"].size == 0 and unchecked(decoded) == []


@pytest.mark.parametrize(("fixture", "member"), [("t.rar", "t/t.txt")])
def test_formats_from_fixtures(fixture: str, member: str) -> None:
    decoded = decode_message(mail_with((DATA / fixture).read_bytes(), fixture))
    assert f"2/{member}" in leaves(decoded), [p.path for p in decoded.parts]
    assert unchecked(decoded) == []


@pytest.mark.parametrize("fixture", ["t.ace", "t.zoo"])
def test_archives_nothing_opens_are_unchecked(fixture: str) -> None:
    decoded = decode_message(mail_with((DATA / fixture).read_bytes(), fixture))
    assert unchecked(decoded) == [(0, f"2: no decoder for {fixture[2:]} archives")]


def test_ar_archive() -> None:
    def member(name: bytes, data: bytes) -> bytes:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        return header + str(len(data)).encode().ljust(10) + b"`\n" + data + b"\n" * (len(data) % 2)

    archive = b"!<arch>\n" + member(b"run.exe/", EXE)
    decoded = decode_message(mail_with(archive, "lib.a"))
    assert any(p.filename == "run.exe" and p.detected_type == "exe-ms" for p in decoded.parts)


def lha_of(name: bytes, data: bytes) -> bytes:
    """An LHA archive, level-0 header, stored (-lh0-): nothing here writes LHA, so it is built by hand."""
    crc = 0
    for byte in data:  # CRC-16/ARC, as LHA uses
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    fields = struct.pack("<IIIBB", len(data), len(data), 0, 0x20, 0)
    body = b"-lh0-" + fields + bytes([len(name)]) + name + struct.pack("<H", crc)
    return bytes([len(body), sum(body) & 0xFF]) + body + data + b"\x00"


def test_lha_archive() -> None:
    decoded = decode_message(mail_with(lha_of(b"run.exe", EXE), "a.lzh"))
    assert leaves(decoded)["2/run.exe"].detected_type == "exe-ms"


def test_iso_image(tmp_path: Path) -> None:
    import libarchive

    image = tmp_path / "disk.iso"
    with libarchive.file_writer(str(image), "iso9660") as writer:
        writer.add_file_from_memory("run.exe", len(EXE), EXE)
    decoded = decode_message(mail_with(image.read_bytes(), "disk.iso"))
    assert next(p for p in decoded.parts if p.path == "2").detected_type == "iso"
    assert leaves(decoded)["2/run.exe"].detected_type == "exe-ms"


def test_tnef_winmail_dat() -> None:
    path = CLAMAV_TESTFILES / "clam.tnef"
    if not path.exists():
        pytest.skip("clamav-testfiles is not installed")
    decoded = decode_message(mail_with(path.read_bytes(), "winmail.dat"))
    assert leaves(decoded)["2/clam.exe"].detected_type == "exe-ms"


def clamav_testfiles() -> list[str]:
    if not CLAMAV_TESTFILES.is_dir():
        return []
    return sorted(p.name for p in CLAMAV_TESTFILES.iterdir())


# What each test file is: the ClamAV test program directly, inside something we open, or something
# whose content we only classify (PDF, RTF, HTML, OLE, binhex and the like are the virus scanner's job).
_NOT_OPENED = {
    "clam.exe.binhex": "hqx",
    "clam.exe.html": "html",
    "clam.exe.rtf": "rtf",
    "clam.exe.mbox.base64": "asc",
    "clam.ole.doc": "doc",
    "clam.ppt": "doc",
    "clam.pdf": "pdf",
    "clam.sis": "",
    "clam.chm": "chm",
}


@pytest.mark.skipif(not clamav_testfiles(), reason="Debian package clamav-testfiles is not installed")
@pytest.mark.parametrize("name", clamav_testfiles() or ["none"])
def test_every_clamav_test_file_as_an_attachment(name: str) -> None:
    decoded = decode_message(mail_with((CLAMAV_TESTFILES / name).read_bytes(), name))
    attachment = next(p for p in decoded.parts if p.path == "2")
    if name in _NOT_OPENED:
        assert attachment.detected_type == _NOT_OPENED[name]
        return
    if name == "clam_cache_emax.tgz":  # ClamAV's own deep-nesting test: past our depth bound on purpose
        assert [m for m, _ in unchecked(decoded)] == [2]
        return
    programs = [p for p in decoded.parts if p.detected_type == "exe-ms" and not p.container]
    assert programs, [(p.path, p.detected_type) for p in decoded.parts]
    assert unchecked(decoded) == []


# --- bounds -----------------------------------------------------------------------------------------------


def test_a_zip_of_200_mb_of_zeros_is_stopped_within_the_quota() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.bin", "w") as member,
    ):
        block = bytes(1 << 20)
        for _ in range(200):
            member.write(block)
    message = mail_with(buffer.getvalue(), "bomb.zip")
    started = time.monotonic()
    decoded = decode_message(message)
    elapsed = time.monotonic() - started
    minors = [m for m, _ in unchecked(decoded)]
    assert minors == [2], unchecked(decoded)
    assert elapsed < 10


def test_a_member_larger_than_its_bound() -> None:
    limits = DecodeLimits(max_member_bytes=1000)
    decoded = decode_message(mail_with(zip_of({"big.txt": b"x" * 5000, "small.exe": EXE}), "a.zip"), limits)
    assert [m for m, _ in unchecked(decoded)] == [2] and "larger than 1000" in unchecked(decoded)[0][1]


def test_deep_nesting_stops_at_the_depth_bound() -> None:
    blob = EXE
    for level in range(20):
        blob = zip_of({f"level{level}.zip" if level else "run.exe": blob})
    decoded = decode_message(mail_with(blob, "deep.zip"))
    assert [m for m, _ in unchecked(decoded)] == [2] and "nested deeper than 14" in unchecked(decoded)[0][1]
    assert max(p.depth for p in decoded.parts) == 14


def test_too_many_parts() -> None:
    archive = zip_of({f"f{i}.txt": b"x" for i in range(50)})
    decoded = decode_message(mail_with(archive, "many.zip"), DecodeLimits(max_parts=20))
    assert [m for m, _ in unchecked(decoded)] == [2] and len(decoded.parts) == 20


def test_time_bound() -> None:
    archive = zip_of({f"f{i}.txt": b"x" for i in range(50)})
    decoded = decode_message(mail_with(archive, "many.zip"), DecodeLimits(time_limit=0.000001))
    assert [m for m, _ in unchecked(decoded)] == [2] and "longer than" in unchecked(decoded)[0][1]


def test_a_banned_name_after_a_bomb_is_still_listed() -> None:
    message = EmailMessage()
    message["From"] = "a@x"
    message.set_content("x")
    message.add_attachment(bytes(300_000), maintype="application", subtype="octet-stream", filename="zeros")
    message.add_attachment(EXE, maintype="application", subtype="octet-stream", filename="run.exe")
    decoded = decode_message(message.as_bytes(), DecodeLimits(max_total_bytes=100_000))
    last = decoded.parts[-1]
    assert last.filename == "run.exe" and last.unchecked.startswith("not decoded")


def test_encrypted_zip_is_unchecked_encrypted(tmp_path: Path) -> None:
    if shutil.which("7z") is None:
        pytest.skip("7z is not installed")
    (tmp_path / "run.exe").write_bytes(EXE)
    subprocess.run(
        ["7z", "a", "-tzip", "-psecret", str(tmp_path / "e.zip"), str(tmp_path / "run.exe")],
        check=True,
        capture_output=True,
    )
    decoded = decode_message(mail_with((tmp_path / "e.zip").read_bytes(), "e.zip"))
    assert [m for m, _ in unchecked(decoded)] == [1]


def test_corrupt_archive_is_unchecked() -> None:
    good = zip_of({"a.txt": os.urandom(5000)}, zipfile.ZIP_STORED)
    broken = good[: len(good) // 2]
    decoded = decode_message(mail_with(broken, "broken.zip"))
    assert unchecked(decoded) and all(m == 0 for m, _ in unchecked(decoded))


def test_large_members_spill_to_a_private_dir_that_is_removed(tmp_path: Path) -> None:
    limits = DecodeLimits(memory_threshold=1000)
    decode_message(mail_with(zip_of({"big.bin": os.urandom(50_000)}), "a.zip"), limits, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threshold", [0, 100, 32_768, 65_535, 65_536, 65_537, 100_000])
def test_a_spilled_part_is_typed_from_the_same_head_as_one_kept_in_memory(threshold: int) -> None:
    # The ISO 9660 mark sits at 32 KiB: a head cut at the spill, or short of MAGIC_BYTES, would miss it.
    iso = b"\x00" * 32_769 + b"CD001" + b"\x00" * 40_000
    text = "".join(f"line {i} of a long text part\n" for i in range(4_000))
    raw = mail_with(iso, "disc.iso", text=text)
    in_memory = decode_message(raw).parts
    assert {p.detected_type for p in in_memory} == {"asc", "iso"}
    assert decode_message(raw, DecodeLimits(memory_threshold=threshold)).parts == in_memory


def test_a_file_and_a_stream_give_the_same_parts(tmp_path: Path) -> None:
    raw = mail_with(zip_of({"run.exe": EXE}), "a.zip")
    (tmp_path / "m").write_bytes(raw)
    from_bytes = decode_message(raw)
    assert decode_message(str(tmp_path / "m")).parts == from_bytes.parts
    assert decode_message(io.BytesIO(raw)).parts == from_bytes.parts


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    decode_message(data, DecodeLimits(time_limit=5))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_as_an_attachment_never_raise(data: bytes) -> None:
    decode_message(mail_with(data, "x.zip"), DecodeLimits(time_limit=5))


# --- the corpus ---------------------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md"))


@pytest.mark.slow  # the whole corpus: `make test` runs it, `make unit` leaves it
@pytest.mark.skipif(not corpus_files(), reason="../shared/corpus is not here")
def test_the_whole_corpus_decodes_within_bounds() -> None:
    slowest = 0.0
    for path in corpus_files():
        started = time.monotonic()
        decoded = decode_message(str(path))
        slowest = max(slowest, time.monotonic() - started)
        assert all(p.path for p in decoded.parts), path
    assert slowest < 10


@pytest.mark.slow  # the whole corpus, twice over
@pytest.mark.skipif(not corpus_files(), reason="../shared/corpus is not here")
def test_every_attachment_name_the_email_package_sees_is_seen() -> None:
    import email
    import email.policy

    for path in corpus_files():
        raw = path.read_bytes()
        reference = email.message_from_bytes(raw, policy=email.policy.compat32)
        expected = set()
        for part in reference.walk():
            try:
                name = part.get_filename()
            except Exception:  # noqa: S112 - the reference itself cannot read this parameter
                continue
            if name and "=?" not in name and not part.is_multipart():
                expected.add(name)
        seen = {p.filename for p in decode_message(raw).parts}
        assert expected <= seen, (path, expected - seen)


def test_multiparts_nested_thousands_deep_are_unchecked_not_a_crash() -> None:
    levels = 3000
    head = b'From: a@x\nContent-Type: multipart/mixed; boundary="b0"\n\n'
    body = b"".join(
        b'--b%d\nContent-Type: multipart/mixed; boundary="b%d"\n\n' % (i, i + 1) for i in range(levels)
    )
    decoded = decode_message(head + body + b"--b%d\nContent-Type: text/plain\n\nhi\n" % levels)
    assert [m for m, _ in unchecked(decoded)] == [2]
    assert "nested deeper than 64" in unchecked(decoded)[0][1]


def test_uuencoded_file_after_begin_in_prose() -> None:
    # Each "begin " is tried where it stands: prose saying it first does not hide the file that follows.
    import binascii

    lines = b"".join(binascii.b2a_uu(EXE[i : i + 45]) for i in range(0, len(EXE), 45))
    prose = b"Let us begin 644 times over.\nbegin 9 no mode\n" * 20
    raw = b"From: a@x\nSubject: uu\n\n" + prose + b"begin 644 run.exe\n" + lines + b"`\nend\n"
    assert leaves(decode_message(raw))["1/run.exe"].detected_type == "exe-ms"
