from __future__ import annotations

import bz2
import ctypes
import gzip
import io
import lzma
import platform
import struct
import tarfile
import threading
import zipfile

import magic
import pytest

from qsift.decode import filetype
from qsift.decode.filetype import detect, short_type

# Descriptions as libmagic (file 5.x) writes them.
_DESCRIPTIONS = [
    ("PE32 executable (DLL) (GUI) Intel 80386, for MS Windows", "dll"),
    ("PE32+ executable (DLL) (console) x86-64, for MS Windows", "dll"),
    ("MS-DOS executable PE32 executable (DLL) (GUI) Intel 80386", "dll"),
    ("PE32 executable (GUI) Intel 80386, for MS Windows", "exe-ms"),
    ("PE32+ executable (console) x86-64, for MS Windows", "exe-ms"),
    (
        "PE32 executable (GUI) Intel 80386, for MS Windows, Nullsoft Installer self-extracting archive",
        "exe-ms",
    ),
    ("MS-DOS executable", "exe-ms"),
    ("MS-DOS executable, MZ for MS-DOS", "exe-ms"),
    ("MS Windows executable", "exe-ms"),
    ("COM executable for DOS", "exe-ms"),
    ("ELF 64-bit LSB executable, x86-64, version 1 (SYSV), dynamically linked", "elf"),
    ("ELF 64-bit LSB shared object, x86-64, version 1 (SYSV), dynamically linked", "elf"),
    ("ELF 32-bit LSB pie executable, ARM, EABI5 version 1 (SYSV)", "elf"),
    ("Mach-O 64-bit x86_64 executable, flags:<NOUNDEFS|DYLDLINK|TWOLEVEL|PIE>", "macho"),
    ("a /usr/bin/env python3 script, ASCII text executable", "exe"),
    ("Bourne-Again shell script, ASCII text executable", "exe"),
    ("Java archive data (JAR)", "jar"),
    ("OpenDocument Text", "zip"),
    ("EPUB document", "zip"),
    ("Zip archive data, at least v2.0 to extract, compression method=deflate", "zip"),
    ('Zip data (MIME type "application/vnd.ms-excel"?)', "zip"),
    ("Microsoft OOXML", "zip"),
    ("Microsoft Word 2007+", "zip"),
    ("Microsoft Excel 2007+", "zip"),
    ("Microsoft PowerPoint 2007+", "zip"),
    ("RAR archive data, v5", "rar"),
    ("RAR self-extracting archive data, v4", "rar"),
    ("7-zip archive data, version 0.4", "7z"),
    ('gzip compressed data, was "a.tar", last modified: Mon Jan  1 00:00:00 2024, from Unix', "gz"),
    ("bzip2 compressed data, block size = 900k", "bz2"),
    ("XZ compressed data, checksum CRC64", "xz"),
    ("LZMA compressed data, streamed", "lzma"),
    ("Zstandard compressed data (v0.8+), Dictionary ID: None", "zst"),
    ("lzip compressed data, version: 1", "lz"),
    ("LZ4 compressed data (v1.4+)", "lz4"),
    ("compress'd data 16 bits", "Z"),
    ("frozen file 2.1", "F"),
    ("POSIX tar archive (GNU)", "tar"),
    ("POSIX tar archive", "tar"),
    ("GNU tar archive", "tar"),
    ("tar archive", "tar"),
    ("ASCII cpio archive (SVR4 with no CRC)", "cpio"),
    ("ASCII cpio archive (SVR4 with CRC)", "cpio"),
    ("ASCII cpio archive (pre-SVR4 or odc)", "cpio"),
    ("cpio archive", "cpio"),
    ("Debian binary package (format 2.0), with control.tar.xz, data compression xz", "deb"),
    ("RPM v3.0 bin i386/x86_64 bash-4.2", "rpm"),
    ("current ar archive", "a"),
    ('Microsoft Cabinet archive data, many, 3168 bytes, 1 file, at 0x2c "clam.exe"', "cab"),
    ("ARJ archive data, v11, slash-switched, original name: clam.exe, os: MS-DOS", "arj"),
    ("LHa (2.x) archive data [lh5]", "lha"),
    ("LHarc 1.x/ARX archive data [lh0]", "lha"),
    ("ISO 9660 CD-ROM filesystem data 'CDROM'", "iso"),
    ("xar archive compressed TOC: 467, SHA-1 checksum", "xar"),
    ("MS Compress archive data, SZDD variant, original size: 544 bytes", "szdd"),
    ("MS Windows HtmlHelp Data", "chm"),
    ("Transport Neutral Encapsulation Format", "tnef"),
    (
        "Composite Document File V2 Document, Little Endian, Os: Windows, Version 5.1, Code page: 1252",
        "doc",
    ),
    ("CDFV2 Microsoft Outlook Message", "doc"),
    ("CDF V2 Document, corrupt: Can't read SAT", "doc"),
    ("MS Windows shortcut, Item id list present, Points to a file or directory", "lnk"),
    ("compiled Java class data, version 52.0 (Java 1.8)", "class"),
    ("ACE archive data version 20, from Win/32, version 20 to extract", "ace"),
    ("Zoo archive data, v2.10, modify: v2.0+, extract: v1.0+", "zoo"),
    ("Rich Text Format data, version 1, ANSI, code page 1252", "rtf"),
    ("PDF document, version 1.4, 1 pages", "pdf"),
    ("PostScript document text conforming DSC level 3.0", "ps"),
    ("HTML document, ASCII text", "html"),
    ("HTML document, UTF-8 Unicode text, with very long lines", "html"),
    ("XML 1.0 document, ASCII text", "xml"),
    ("RFC 822 mail, ASCII text", "mail"),
    ("SMTP mail, ASCII text", "mail"),
    ("news or mail, ASCII text", "mail"),
    ("MIME entity, ASCII text", "mail"),
    ('uuencoded text, file name "clam.exe"', "uue"),
    ("BinHex binary text, version 4.0", "hqx"),
    ("JPEG image data, JFIF standard 1.01, aspect ratio, density 1x1, segment length 16", "jpg"),
    ("PNG image data, 16 x 16, 8-bit/color RGBA, non-interlaced", "png"),
    ("GIF image data, version 89a, 1 x 1", "gif"),
    ("PC bitmap, Windows 3.x format, 1 x 1 x 24", "image"),
    ("TIFF image data, little-endian", "image"),
    ("MS Windows icon resource - 1 icon, 16x16, 32 bits/pixel", "image"),
    ("Macromedia Flash data, version 9", "swf"),
    ("Audio file with ID3 version 2.3.0", "audio"),
    ("MPEG ADTS, layer III, v1, 128 kbps, 44.1 kHz, JntStereo", "audio"),
    ("RIFF (little-endian) data, WAVE audio, Microsoft PCM, 16 bit, stereo 44100 Hz", "audio"),
    ("Ogg data, Vorbis audio, stereo, 44100 Hz", "audio"),
    ("ISO Media, MP4 v2 [ISO 14496-14]", "movie"),
    ("RIFF (little-endian) data, AVI, 320 x 240, 25.00 fps", "movie"),
    ("Matroska data", "movie"),
    ("ASCII text", "asc"),
    ("ASCII text, with CRLF line terminators", "asc"),
    ("UTF-8 Unicode text", "asc"),
    ("ISO-8859 text, with very long lines", "asc"),
    ("empty", "empty"),
    ("data", "dat"),
    ("Targa image data - RGBA 3340 x 3854 x 16", ""),
    ("AIX core file", ""),
    ("", ""),
]


@pytest.mark.parametrize(("description", "short"), _DESCRIPTIONS)
def test_short_type_of_libmagic_descriptions(description: str, short: str) -> None:
    assert short_type(description) == short


@pytest.mark.parametrize("description", ["empty file", "data, with garbage", "some data"])
def test_empty_and_data_match_only_the_whole_description(description: str) -> None:
    assert short_type(description) not in ("empty", "dat")


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("hello.txt", "hello, world\n" * 20)
    return buffer.getvalue()


def _jar() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        manifest = zipfile.ZipInfo("META-INF/MANIFEST.MF")
        manifest.extra = b"\xfe\xca\x00\x00"  # the JAR marker (0xCAFE extra field) libmagic looks for
        archive.writestr(manifest, "Manifest-Version: 1.0\r\n\r\n")
    return buffer.getvalue()


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pe(characteristics: int) -> bytes:
    """A minimal PE32 image for i386: DOS header, PE signature, COFF header, optional header."""
    dos = bytearray(64)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, len(dos))
    coff = struct.pack("<HHIIIHH", 0x14C, 0, 0, 0, 0, 0xE0, characteristics)
    optional = bytearray(0xE0)
    struct.pack_into("<H", optional, 0, 0x10B)  # PE32
    struct.pack_into("<H", optional, 68, 2)  # subsystem: Windows GUI
    return bytes(dos) + b"PE\0\0" + coff + bytes(optional)


def _elf() -> bytes:
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, version 1
    return ident + struct.pack("<HHI", 2, 0x3E, 1) + bytes(48)  # ET_EXEC, x86-64


@pytest.mark.parametrize(
    ("content", "short", "starts"),
    [
        (_zip(), "zip", "Zip archive data"),
        (_jar(), "jar", "Java archive data"),
        (gzip.compress(b"hello\n" * 10, mtime=0), "gz", "gzip compressed data"),
        (bz2.compress(b"hello\n" * 10), "bz2", "bzip2 compressed data"),
        (lzma.compress(b"hello\n" * 10), "xz", "XZ compressed data"),
        (_tar(), "tar", "POSIX tar archive"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "pdf", "PDF document"),
        (_pe(0x0102), "exe-ms", "PE32 executable"),
        (_pe(0x2102), "dll", "PE32 executable (DLL)"),
        (_elf(), "elf", "ELF 64-bit LSB executable"),
        (b"Hello, world.\nThis is plain text.\n", "asc", "ASCII text"),
        (b"<!DOCTYPE html>\n<html><head><title>t</title></head><body>x</body></html>\n", "html", "HTML"),
        (b"\x00" * 100, "dat", "data"),
        (b"", "empty", "empty"),
    ],
)
def test_detect_real_content(content: bytes, short: str, starts: str) -> None:
    found_short, description = detect(content)
    assert description.startswith(starts)
    assert found_short == short


def test_empty_content_is_not_shown_to_libmagic() -> None:
    assert detect(b"") == ("empty", "empty")


def test_libmagic_sees_only_the_first_libmagic_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Recording:
        def from_buffer(self, buffer: bytes) -> str:
            seen.append(len(buffer))
            return "data"

    monkeypatch.setattr(filetype, "_magic", Recording)
    assert detect(b"x" * (filetype.MAGIC_BYTES * 3)) == ("dat", "data")
    assert seen == [filetype._LIBMAGIC_BYTES]
    assert filetype._LIBMAGIC_BYTES <= filetype.MAGIC_BYTES


def test_iso9660_is_found_by_its_mark_beyond_what_libmagic_sees() -> None:
    offset, mark = filetype._ISO9660_MARK
    image = bytearray(offset + 2048)
    image[offset - 1] = 1  # volume descriptor type: primary
    image[offset : offset + len(mark)] = mark
    assert detect(bytes(image)) == ("iso", "ISO 9660 CD-ROM filesystem data")
    assert detect(bytes(image[: offset + 2]))[0] == "dat"  # the mark cut short
    assert offset + len(mark) <= filetype.MAGIC_BYTES


def test_libmagic_failure_is_a_description_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        def from_buffer(self, buffer: bytes) -> str:
            raise magic.MagicException("could not find any valid magic files")

    monkeypatch.setattr(filetype, "_magic", Failing)
    assert detect(b"anything") == ("", "unknown (libmagic: could not find any valid magic files)")


def test_threads_share_one_libmagic_handle() -> None:
    # One handle per process (each maps the whole database into the RSS); python-magic serialises the
    # calls on it, so threads detecting at once still get each their own answer.
    main = filetype._magic()
    handles: list[magic.Magic] = []
    results: list[tuple[str, str]] = []
    samples = [b"plain words\n", b"%PDF-1.4\n" + b"x" * 100, b"PK\x03\x04" + b"\0" * 26] * 20

    def work(sample: bytes) -> None:
        handles.append(filetype._magic())
        results.append(detect(sample))

    threads = [threading.Thread(target=work, args=(sample,)) for sample in samples]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(handle is main for handle in handles)
    assert sorted(results) == sorted(detect(sample) for sample in samples)


def test_the_database_loaded_ahead_is_the_handle_detection_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    # `qsift serve`'s parent loads it before the fork (serve/memory.py), so no worker loads its own.
    monkeypatch.setattr(filetype, "_handle", [])
    filetype.load_database()
    loaded = filetype._handle[:]
    assert len(loaded) == 1
    assert detect(b"%PDF-1.4\n" + b"x" * 100)[0] == "pdf"
    assert filetype._handle == loaded


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
    ]


def _malloc_in_use() -> int:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().uordblks)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallinfo2 is glibc's")
def test_the_database_loaded_ahead_has_compiled_what_a_text_part_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh handle compiles about 2 MiB of regular expressions for its first text part; the parent's
    # warm-up does it once for every worker (serve/memory.py). A rule for a rarer part may still add a few.
    monkeypatch.setattr(filetype, "_handle", [])
    filetype.load_database()
    before = _malloc_in_use()
    assert detect(b"Hello,\r\nthe minutes of Monday's meeting are below.\r\n")[0] == "asc"
    assert _malloc_in_use() - before < 256 * 1024


def test_the_heads_described_ahead_stand_for_the_parts_mail_carries() -> None:
    kinds = {short_type(filetype.describe(head)) for head in filetype._COMMON_HEADS}
    common = {"asc", "html", "xml", "pdf", "zip", "jpg", "png", "gif", "rtf", "exe-ms", "doc", "gz", "dat"}
    assert common <= kinds
