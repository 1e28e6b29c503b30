"""OpenDKIM as the independent signer: keys from `opendkim-genkey`, signatures from libopendkim.

`opendkim-testmsg` signs only with rsa-sha1 (its `dkim_sign` call hard-codes DKIM_SIGN_RSASHA1), so
rsa-sha256 signatures and `l=` come from the same library through ctypes (`dkim_sign`, `dkim_chunk`,
`dkim_eom`, `dkim_getsighdr`, as opendkim-testmsg calls them); rsa-sha1 from opendkim-testmsg itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CANON_SIMPLE, CANON_RELAXED = 0, 1
SIGN_RSASHA256 = 1
FIELD = b"DKIM-Signature: "


@dataclass(frozen=True)
class OpenDkimKey:
    domain: str
    selector: str
    private_pem: bytes
    #: The TXT record's value, joined (zone files need `txt_strings`).
    record: str


def genkey(directory: Path, domain: str, selector: str, bits: int = 2048) -> OpenDkimKey:
    """`opendkim-genkey -b BITS -d DOMAIN -s SELECTOR`."""
    tool = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    if not Path(tool).exists():
        pytest.skip("opendkim-genkey (Debian package opendkim-tools) is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    command = [tool, "-b", str(bits), "-d", domain, "-s", selector, "-D", str(directory)]
    subprocess.run(command, check=True, capture_output=True)
    zone_text = (directory / f"{selector}.txt").read_text()
    record = "".join(re.findall(r'"([^"]*)"', zone_text))
    return OpenDkimKey(domain, selector, (directory / f"{selector}.private").read_bytes(), record)


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("opendkim") or "libopendkim.so.11"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        pytest.skip("libopendkim (Debian package libopendkim11) is not installed")
    pointer = ctypes.c_void_p
    lib.dkim_init.restype = pointer
    lib.dkim_init.argtypes = [pointer, pointer]
    lib.dkim_sign.restype = pointer
    lib.dkim_sign.argtypes = [
        pointer, ctypes.c_char_p, pointer, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_int),
    ]  # fmt: skip
    lib.dkim_chunk.argtypes = [pointer, ctypes.c_char_p, ctypes.c_size_t]
    lib.dkim_eom.argtypes = [pointer, pointer]
    lib.dkim_getsighdr.argtypes = [pointer, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.dkim_set_signer.argtypes = [pointer, ctypes.c_char_p]
    lib.dkim_free.argtypes = [pointer]
    lib.dkim_close.argtypes = [pointer]
    return lib


def sign(message: bytes, key: OpenDkimKey, length: int = -1, identity: str = "") -> bytes:
    """`message` (CRLF) under libopendkim's rsa-sha256 relaxed/simple signature; `l=` when length >= 0."""
    lib = _library()
    handle = lib.dkim_init(None, None)
    status = ctypes.c_int()
    signer = lib.dkim_sign(
        handle, b"qsift-test", None, key.private_pem, key.selector.encode(), key.domain.encode(),
        CANON_RELAXED, CANON_SIMPLE, SIGN_RSASHA256, length, ctypes.byref(status),
    )  # fmt: skip
    try:
        assert signer and status.value == 0, f"dkim_sign: status {status.value}"
        if identity:
            assert lib.dkim_set_signer(signer, identity.encode()) == 0
        assert lib.dkim_chunk(signer, message, len(message)) == 0
        assert lib.dkim_chunk(signer, None, 0) == 0
        assert lib.dkim_eom(signer, None) == 0
        buffer = ctypes.create_string_buffer(8192)
        assert lib.dkim_getsighdr(signer, buffer, len(buffer), len(FIELD)) == 0
    finally:
        if signer:
            lib.dkim_free(signer)
        lib.dkim_close(handle)
    return FIELD + buffer.value + b"\r\n" + message


def sign_sha1(message: bytes, key: OpenDkimKey, directory: Path) -> bytes:
    """opendkim-testmsg's own signature: rsa-sha1, relaxed/simple."""
    tool = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
    key_file = directory / f"{key.selector}.sha1.private"
    key_file.write_bytes(key.private_pem)
    key_file.chmod(0o600)
    command = [tool, "-d", key.domain, "-s", key.selector, "-k", str(key_file), "-C"]
    return subprocess.run(command, input=message, check=True, capture_output=True).stdout


DKIM_OP_SETOPT, DKIM_OPTS_QUERYMETHOD, DKIM_OPTS_QUERYINFO, DKIM_QUERY_FILE = 1, 6, 7, 1


def verify(message: bytes, records: dict[str, str], directory: Path) -> int:
    """libopendkim's verdict on `message` (CRLF, one signature): 0 (DKIM_STAT_OK) when it verifies; its
    keys from a file of `selector._domainkey.domain record` lines (DKIM_QUERY_FILE), not from DNS."""
    lib = _library()
    lib.dkim_verify.restype = ctypes.c_void_p
    lib.dkim_verify.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.dkim_options.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    keys = directory / "opendkim-keys"
    keys.write_text("".join(f"{name} {record}\n" for name, record in records.items()))
    handle = lib.dkim_init(None, None)
    method = ctypes.c_int(DKIM_QUERY_FILE)
    path = ctypes.create_string_buffer(str(keys).encode())
    for option, value, size in (
        (DKIM_OPTS_QUERYMETHOD, ctypes.addressof(method), ctypes.sizeof(method)),
        (DKIM_OPTS_QUERYINFO, ctypes.addressof(path), len(path.value)),
    ):
        assert lib.dkim_options(handle, DKIM_OP_SETOPT, option, value, size) == 0
    status = ctypes.c_int()
    verifier = lib.dkim_verify(handle, b"qsift-test", None, ctypes.byref(status))
    try:
        assert verifier and status.value == 0, f"dkim_verify: status {status.value}"
        found = lib.dkim_chunk(verifier, message, len(message))
        if found == 0:
            found = lib.dkim_chunk(verifier, None, 0)
        if found == 0:
            found = lib.dkim_eom(verifier, None)
    finally:
        if verifier:
            lib.dkim_free(verifier)
        lib.dkim_close(handle)
    return int(found)
