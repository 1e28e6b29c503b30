"""What a part really is, from its content: libmagic's description and amavisd-new's short type name.

Banned-file rules and the decoder's choice of unpacker work on the short names amavisd-new's
`$map_full_type_to_short_type_re` gives (`exe-ms`, `dll`, `zip`, `rar`, `gz`, `tar`, `asc`, ...), so a
postmaster's rules read the same here. The description is libmagic's (the `file` command's library),
read from the first 64 KiB, which every format below needs at most (ISO 9660 has its mark at 32 KiB).
"""

from __future__ import annotations

import re
import threading

import magic

#: How much of a part the decoder keeps for type detection.
MAGIC_BYTES = 64 * 1024
#: How much libmagic is shown: its text classifiers cost time in proportion (0.05 ms for 4 KiB of text,
#: up to 1 ms for 64 KiB of some encodings), and no format here needs more, ISO 9660 aside.
_LIBMAGIC_BYTES = 16 * 1024
_ISO9660_MARK = (32769, b"CD001")

# First match wins: specific before general (a DLL is also a PE32 executable, a jar also a zip).
_SHORT_TYPES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), short)
    for pattern, short in (
        (r"^(?:MS-DOS|PE32\+?) executable\b.*\(DLL\)", "dll"),
        (r"^PE32\+? executable\b.*Nullsoft Installer", "exe-ms"),
        (r"^(?:MS-DOS|PE32\+?|MS Windows|COM) executable\b", "exe-ms"),
        (r"^ELF .*\b(?:executable|shared object)\b", "elf"),
        (r"^Mach-O\b", "macho"),
        (r"\bexecutable\b", "exe"),
        (r"^Java archive data", "jar"),
        (r"^(?:OpenDocument|EPUB document)", "zip"),
        (r"^Zip archive data|^Zip data|^Microsoft OOXML|^Microsoft (?:Word|Excel|PowerPoint) 2007\+", "zip"),
        (r"^RAR (?:self-extracting )?archive data", "rar"),
        (r"^7-zip archive data", "7z"),
        (r"^gzip compressed data", "gz"),
        (r"^bzip2 compressed data", "bz2"),
        (r"^XZ compressed data", "xz"),
        (r"^LZMA compressed data", "lzma"),
        (r"^Zstandard compressed data", "zst"),
        (r"^lzip compressed data", "lz"),
        (r"^LZ4 compressed data", "lz4"),
        (r"^compress'd data", "Z"),
        (r"^frozen file", "F"),
        (r"^(?:POSIX |GNU |old )?tar archive", "tar"),
        (r"\bcpio archive", "cpio"),
        (r"^Debian binary package", "deb"),
        (r"^RPM\b", "rpm"),
        (r"^current ar archive", "a"),
        (r"^Microsoft Cabinet archive", "cab"),
        (r"^ARJ archive", "arj"),
        (r"^LHa|^LHarc|^LHA", "lha"),
        (r"^ISO 9660", "iso"),
        (r"^xar archive", "xar"),
        (r"^MS Compress archive data", "szdd"),
        (r"^MS Windows HtmlHelp", "chm"),
        (r"^Transport Neutral Encapsulation Format", "tnef"),
        (r"^Composite Document File|^CDFV?2? ?(?:V2 )?Document|^CDFV2 ", "doc"),
        (r"^MS Windows shortcut", "lnk"),
        (r"^compiled Java class", "class"),
        (r"^ACE archive", "ace"),
        (r"^Zoo archive", "zoo"),
        (r"^Rich Text Format", "rtf"),
        (r"^PDF document", "pdf"),
        (r"^PostScript document", "ps"),
        (r"^HTML document", "html"),
        (r"^XML\b", "xml"),
        (r"^(?:RFC 822 mail|SMTP mail|news or mail|MIME entity|news\b)", "mail"),
        (r"^uuencoded", "uue"),
        (r"^BinHex", "hqx"),
        (r"^JPEG image", "jpg"),
        (r"^PNG image", "png"),
        (r"^GIF image", "gif"),
        (r"^(?:PC bitmap|TIFF image|Web/P image|.* icon resource)", "image"),
        (r"^Macromedia Flash|^Adobe Flash", "swf"),
        (r"^(?:Audio file|MPEG ADTS|RIFF .* WAVE|Ogg data)", "audio"),
        (r"^(?:ISO Media|RIFF .* AVI|MPEG sequence|Matroska)", "movie"),
        (r"^empty$", "empty"),
        (r"\btext\b", "asc"),
        (r"^data$", "dat"),
    )
)

#: The beginnings of the parts most mail carries. libmagic compiles a regular expression of its database
#: the first time a part reaches it and keeps it, with the automaton states glibc adds as text runs
#: through it, for the handle's life: 5.3 MiB of heap over the attachment mix's 430 messages, in every
#: worker. Described once in the parent (3.1 MiB), these leave most of that in pages the workers share
#: (2.2 MiB is still added by the mix's own texts): after 3,000 messages of bench/memory.py, 4 workers'
#: PSS came to 93-94 MiB in all instead of 104-106, 2 workers' to 54-57 instead of 56-63.
_COMMON_HEADS: tuple[bytes, ...] = (
    b"Dear customer,\r\nplease find the invoice attached.\r\n",
    b"Gr\xfc\xdfe aus M\xfcnchen\n" * 4,
    "Grüße aus München\n".encode() * 4,
    b"x" * 4096,
    b"<!DOCTYPE html>\n<html><head><title>t</title></head><body><p>x</p></body></html>\n",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<a><b>x</b></a>\n',
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(16) + b"\x08\x00\x00\x00file.txt" + bytes(64),
    b"PK\x03\x04\x14\x00\x06\x00\x08\x00" + bytes(16) + b"\x13\x00\x00\x00[Content_Types].xml" + bytes(64),
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(64),
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00",
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes(32),
    b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}} x}\n",
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",
    b"MZ\x90\x00\x03" + bytes(59) + b"This program cannot be run in DOS mode.\r\n" + bytes(64),
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504),
    b"\x1f\x8b\x08\x00" + bytes(16),
    bytes(range(255, -1, -1)) * 8,
)

_loading = threading.Lock()
_handle: list[magic.Magic] = []


def _magic() -> magic.Magic:
    # One handle per process, not one per decoding thread: each handle maps libmagic's whole database
    # (8 MB), which counts in the RSS once per handle; six threads made 47 MiB of a worker's RSS
    # (docs/benchmarks.md, memory). python-magic serialises the calls on a handle with its own lock.
    with _loading:
        if not _handle:
            _handle.append(magic.Magic())
        return _handle[0]


def load_database() -> None:
    """Load libmagic's database and compile the rules common parts reach: in `qsift serve`'s parent, so
    every worker shares the handle and the compiled rules."""
    handle = _magic()
    for head in _COMMON_HEADS:
        handle.from_buffer(head)


def describe(head: bytes) -> str:
    """libmagic's description of content that starts with `head`."""
    if not head:
        return "empty"
    offset, mark = _ISO9660_MARK
    if head[offset : offset + len(mark)] == mark:
        return "ISO 9660 CD-ROM filesystem data"
    try:
        return str(_magic().from_buffer(head[:_LIBMAGIC_BYTES])).strip()
    except magic.MagicException as exc:
        return f"unknown (libmagic: {exc})"


def short_type(description: str) -> str:
    """amavisd-new's short name for a libmagic description; "" when none applies."""
    for pattern, short in _SHORT_TYPES:
        if pattern.search(description):
            return short
    return ""


def detect(head: bytes) -> tuple[str, str]:
    """(short type, description) for content that starts with `head`."""
    description = describe(head)
    return short_type(description), description
