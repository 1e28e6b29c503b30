"""Read the attachments of a TNEF stream (winmail.dat): each one's name and bytes, nothing else.

TNEF (MS-OXTNEF) is a signature, a key, then attributes: level (1 byte), id (4), length (4), data,
checksum (2). An attachment starts with attAttachRendData; its name is in attAttachTitle or, better, in
the MAPI properties of attAttachment (PR_ATTACH_LONG_FILENAME, PR_ATTACH_FILENAME, PR_DISPLAY_NAME), its
bytes in attAttachData or in PR_ATTACH_DATA_OBJ (an attached message: itself a TNEF stream, which the
walker opens as the container it is). The message's own properties (body, recipients, dates) say
nothing the checks use and are skipped by their length, unread.

Bounded by construction, whatever the stream claims: every step of every loop consumes at least four
bytes of the input or ends the reading, so the work is linear in the input's size; a count (of
properties, of values) is never looped over on its own, and a length past the end of its data is an
error, never an allocation. The output is slices of the input. This replaces tnefparse, which looped
once per claimed MAPI property (up to 2**32 - 1 per attribute, past the end of the data, logging a
warning each time), copied the rest of the stream for every attribute (quadratic) and parsed attached
messages eagerly: none of that could be held to the decoder's time limit from its worker thread.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

SIGNATURE = 0x223E9F78
#: attAttachRendData starts an attachment; the other attributes of level 2 describe the latest one.
_ATTACHMENT_LEVEL = 2
# Attribute ids by their low 16 bits (the high ones give the type, which tnefparse did not check either).
_ATT_ATTACH_REND_DATA = 0x9002
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACHMENT = 0x9005
_ATT_OEM_CODEPAGE = 0x9007
# MAPI property ids (MS-OXPROPS).
_PR_DISPLAY_NAME = 0x3001
_PR_ATTACH_DATA_OBJ = 0x3701
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_LONG_FILENAME = 0x3707
_NAMED_PROPERTY = 0x8000
_MULTI_VALUED = 0x1000
# MAPI property types: fixed sizes, and those that are a count of length-prefixed values.
_PT_STRING8 = 0x001E
_PT_UNICODE = 0x001F
_PT_OBJECT = 0x000D
_PT_BINARY = 0x0102
_VARIABLE_TYPES = frozenset({0x0000, _PT_OBJECT, _PT_STRING8, _PT_UNICODE, _PT_BINARY})
_FIXED_SIZES = {
    0x0001: 0,  # PtypNull
    0x0002: 2,  # PtypInteger16
    0x0003: 4,  # PtypInteger32
    0x0004: 4,  # PtypFloating32
    0x0005: 8,  # PtypFloating64
    0x0006: 8,  # PtypCurrency
    0x0007: 8,  # PtypFloatingTime
    0x000A: 4,  # PtypErrorCode
    0x000B: 2,  # PtypBoolean
    0x0014: 8,  # PtypInteger64
    0x0040: 8,  # PtypTime
    0x0048: 16,  # PtypGuid
}
#: The interface id an object value starts with (MS-OXTNEF 2.1.3.4.1): not part of the object's bytes.
_IID_SIZE = 16
_FALLBACK_CODEPAGE = "cp1252"

_ATTRIBUTE_HEAD = struct.Struct("<BII")
_UINT32 = struct.Struct("<I")
_UINT16_PAIR = struct.Struct("<HH")


class TnefError(ValueError):
    """The stream is not TNEF, or its structure contradicts its own lengths."""


@dataclass(frozen=True)
class TnefAttachment:
    """One attachment: the best name the stream gives it ("" when none) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class TnefContents:
    """The attachments read, and why reading stopped before the end ("" when it did not): a length that
    runs past its data leaves the rest unread, so it cannot be called checked (mimekit's panic.tnef)."""

    attachments: tuple[TnefAttachment, ...]
    damage: str


def read_attachments(data: bytes) -> TnefContents:
    """The attachments of a TNEF stream, in order, up to the first damage; `TnefError` if it is not one."""
    view = memoryview(data)
    if len(view) < 6 or _UINT32.unpack_from(view)[0] != SIGNATURE:
        raise TnefError("not a TNEF stream (wrong signature)")
    codepage = _FALLBACK_CODEPAGE
    attachments: list[_Attachment] = []
    damage = ""
    try:
        for level, attribute_id, value in _attributes(view[6:]):
            name = attribute_id & 0xFFFF
            if name == _ATT_OEM_CODEPAGE and len(value) >= 4:
                codepage = _python_codepage(_UINT32.unpack_from(value)[0])
            if name == _ATT_ATTACH_REND_DATA or (level == _ATTACHMENT_LEVEL and not attachments):
                # An attachment's attribute before any attAttachRendData still describes something to check.
                attachments.append(_Attachment())
            if level == _ATTACHMENT_LEVEL:
                attachments[-1].add(name, value, codepage)
    except TnefError as exc:
        damage = str(exc)
    return TnefContents(tuple(attachment.finished() for attachment in attachments), damage)


def _attributes(view: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(level, id, data) of each attribute; what follows the last whole attribute, shorter than an
    attribute's head, is ignored as tnefparse did (mimekit's garbage-at-end.tnef)."""
    offset = 0
    while len(view) - offset >= _ATTRIBUTE_HEAD.size + 2:
        level, attribute_id, length = _ATTRIBUTE_HEAD.unpack_from(view, offset)
        start = offset + _ATTRIBUTE_HEAD.size
        if length > len(view) - start - 2:
            raise TnefError(f"attribute {attribute_id:#010x} claims {length} bytes, {len(view) - start} left")
        yield level, attribute_id, view[start : start + length]
        offset = start + length + 2  # the checksum, which the content checks do not need


@dataclass
class _Attachment:
    """What the attributes of one attachment said so far."""

    title: str = ""
    file_name: str = ""
    long_file_name: str = ""
    display_name: str = ""
    data: bytes = b""
    _seen: set[int] = field(default_factory=set)

    def add(self, name: int, value: memoryview, codepage: str) -> None:
        if name == _ATT_ATTACH_TITLE:
            self.title = _text(value, codepage)
        elif name == _ATT_ATTACH_DATA:
            self.data = bytes(value)
        elif name == _ATT_ATTACHMENT:
            for property_id, property_type, first in _mapi_properties(value):
                self._add_property(property_id, property_type, first, codepage)

    def _add_property(self, property_id: int, property_type: int, value: memoryview, codepage: str) -> None:
        if property_id == _PR_ATTACH_DATA_OBJ:
            self.data = bytes(value[_IID_SIZE:] if property_type == _PT_OBJECT else value)
        elif property_type in (_PT_STRING8, _PT_UNICODE) and property_id not in self._seen:
            # The first of a name's values counts, as tnefparse's long_filename() took the first.
            self._seen.add(property_id)
            text = _text(value, codepage) if property_type == _PT_STRING8 else _unicode(value)
            if property_id == _PR_ATTACH_LONG_FILENAME:
                self.long_file_name = text
            elif property_id == _PR_ATTACH_FILENAME:
                self.file_name = text
            elif property_id == _PR_DISPLAY_NAME:
                self.display_name = text

    def finished(self) -> TnefAttachment:
        name = self.long_file_name or self.file_name or self.title or self.display_name
        return TnefAttachment(name, self.data)


def _mapi_properties(view: memoryview) -> list[tuple[int, int, memoryview]]:
    """(id, type, first value) of each MAPI property in an attribute's data (MS-OXTNEF 2.1.3.4): a count,
    then each property's tag, its name when it is a named one, and its values."""
    reader = _Reader(view)
    claimed = reader.uint32()
    properties: list[tuple[int, int, memoryview]] = []
    # Each property takes at least its 4-byte tag: the loop ends with the data, whatever the count says.
    while len(properties) < claimed and reader.left():
        property_type, property_id = _UINT16_PAIR.unpack(reader.take(4))
        if property_id >= _NAMED_PROPERTY:
            reader.take(_IID_SIZE)
            if reader.uint32() == 0:
                reader.take(4)  # a numeric name
            else:
                reader.take_padded(reader.uint32())  # a UTF-16 name
        values = _values(reader, property_type & ~_MULTI_VALUED, multi=bool(property_type & _MULTI_VALUED))
        properties.append((property_id, property_type & ~_MULTI_VALUED, values[0] if values else view[:0]))
    return properties


def _values(reader: _Reader, property_type: int, *, multi: bool) -> list[memoryview]:
    if property_type in _VARIABLE_TYPES:
        count = reader.uint32()  # a variable type has its count even when single-valued
    elif property_type in _FIXED_SIZES:
        count = reader.uint32() if multi else 1
    else:
        raise TnefError(f"unknown MAPI property type {property_type:#06x}")
    values = []
    # Every value takes at least 4 bytes (its length, or itself padded to 4): a lying count ends here.
    for _ in range(count):
        if property_type in _VARIABLE_TYPES:
            values.append(reader.take_padded(reader.uint32()))
        else:
            values.append(reader.take_padded(max(_FIXED_SIZES[property_type], 4)))
    return values


class _Reader:
    """A position in a MAPI property block; every read past its end is a `TnefError`."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._offset = 0

    def left(self) -> int:
        return len(self._view) - self._offset

    def take(self, size: int) -> memoryview:
        if size > self.left():
            raise TnefError(f"a MAPI property claims {size} bytes, {self.left()} left")
        taken = self._view[self._offset : self._offset + size]
        self._offset += size
        return taken

    def take_padded(self, size: int) -> memoryview:
        """`size` bytes, then the padding to a multiple of 4 that follows them, when it is there."""
        taken = self.take(size)
        self._offset = min(len(self._view), self._offset + -size % 4)
        return taken

    def uint32(self) -> int:
        value: int = _UINT32.unpack(self.take(4))[0]
        return value


def _python_codepage(number: int) -> str:
    name = {20127: "ascii", 20866: "koi8-r", 28591: "iso-8859-1", 65001: "utf-8"}.get(number, f"cp{number}")
    try:
        codecs.lookup(name)
    except LookupError:
        return _FALLBACK_CODEPAGE
    return name


def _text(value: memoryview, codepage: str) -> str:
    """An 8-bit string in the stream's code page, up to its terminating NUL."""
    return bytes(value).split(b"\0", 1)[0].decode(codepage, "replace")


def _unicode(value: memoryview) -> str:
    return bytes(value).decode("utf-16-le", "replace").split("\0", 1)[0]
