"""The decoded leaves kept for virus scanners that are given the parts (`[virus] scan = "parts"`): which
parts, their bytes, where they live, when the message must be given whole as well, and that nothing is
left behind."""

from __future__ import annotations

import binascii
import hashlib
import os
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift.decode.parts import KeptLeaves
from qsift.decode.walk import DecodeLimits, decode_message
from tests.unit.decode.test_walk import EXE, corpus_files, mail_with, zip_of


def kept(raw: bytes, limits: DecodeLimits | None = None, tmp_dir: str | None = None) -> KeptLeaves:
    leaves = decode_message(raw, limits, tmp_dir, keep_leaves=True).leaves
    assert leaves is not None
    return leaves


def contents(leaves: KeptLeaves) -> dict[str, bytes]:
    found = {}
    for leaf in leaves.leaves:
        with leaf.open() as stream:
            found[leaf.path] = stream.read()
        assert len(found[leaf.path]) == leaf.size
    return found


def test_each_mime_leaf_is_kept_with_its_decoded_bytes() -> None:
    leaves = kept(mail_with(EXE, "run.exe", text="hello"))
    assert contents(leaves) == {"1": b"hello\n", "2": EXE}
    assert leaves.complete and leaves.scratch is None


def test_not_asked_for_nothing_is_kept() -> None:
    assert decode_message(mail_with(EXE, "run.exe")).leaves is None


def test_an_attached_message_gives_its_own_leaves_not_itself() -> None:
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner text")
    inner.add_attachment(EXE, maintype="application", subtype="octet-stream", filename="x.exe")
    outer = EmailMessage()
    outer["From"] = "a@x"
    outer.set_content("outer")
    outer.add_attachment(inner)
    assert contents(kept(outer.as_bytes())) == {"1": b"outer\n", "2/1": b"inner text\n", "2/2": EXE}


def test_an_eml_attached_as_octet_stream_gives_its_leaves() -> None:
    inner = b"From: a@x\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\ninside\r\n"
    found = contents(kept(mail_with(inner, "fwd.eml")))
    assert "2" not in found and found["2/1"] == b"inside\r\n"


def test_an_archive_is_kept_whole_and_its_members_are_not() -> None:
    archive = zip_of({"run.exe": EXE, "notes.txt": b"notes"})
    found = contents(kept(mail_with(archive, "a.zip")))
    assert found == {"1": b"see attached\n", "2": archive}


def test_uuencoded_files_are_kept_beside_their_text() -> None:
    lines = b"".join(binascii.b2a_uu(EXE[i : i + 45]) for i in range(0, len(EXE), 45))
    body = b"Here it is:\n\nbegin 644 run.exe\n" + lines + b"`\nend\n"
    found = contents(kept(b"From: a@x\nSubject: uu\n\n" + body))
    assert found == {"1": body, "1/run.exe": EXE}


def test_empty_leaves_are_not_kept() -> None:
    message = EmailMessage()
    message["From"] = "a@x"
    message.set_content("text")
    message.add_attachment(b"", maintype="application", subtype="octet-stream", filename="empty.bin")
    assert contents(kept(message.as_bytes())) == {"1": b"text\n"}


def test_large_leaves_live_in_files_that_remove_takes_away(tmp_path: Path) -> None:
    big = os.urandom(300_000)
    leaves = kept(mail_with(big, "big.bin"), DecodeLimits(memory_threshold=100_000), str(tmp_path))
    assert leaves.scratch is not None and Path(leaves.scratch).parent == tmp_path
    (spilled,) = [leaf for leaf in leaves.leaves if leaf.file is not None]
    assert spilled.path == "2" and Path(spilled.file or "").read_bytes() == big
    leaves.remove()
    assert list(tmp_path.iterdir()) == []


def test_past_the_memory_share_leaves_go_to_files(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "a@x"
    message.set_content("text")
    parts = [os.urandom(900_000) for _ in range(6)]
    for index, data in enumerate(parts):
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=f"{index}.bin")
    leaves = kept(message.as_bytes(), tmp_dir=str(tmp_path))
    assert [leaf.path for leaf in leaves.leaves] == ["1", *(str(i) for i in range(2, 8))]
    in_memory = sum(leaf.size for leaf in leaves.leaves if leaf.data is not None)
    assert in_memory <= 4 * 1024 * 1024 and any(leaf.file is not None for leaf in leaves.leaves)
    assert list(contents(leaves).values())[1:] == parts
    leaves.remove()
    assert list(tmp_path.iterdir()) == []


def test_without_files_nothing_is_left_in_the_temp_dir(tmp_path: Path) -> None:
    # A zip's members spill (threshold 1,000), but only the zip itself is kept, in memory.
    archive = zip_of({"big.bin": os.urandom(50_000)})
    leaves = kept(mail_with(archive, "a.zip"), DecodeLimits(memory_threshold=100_000), str(tmp_path))
    assert leaves.scratch is None and list(tmp_path.iterdir()) == []


def test_anything_left_unread_asks_for_the_whole_message() -> None:
    broken = zip_of({"a.txt": os.urandom(5000)})
    assert not kept(mail_with(broken[: len(broken) // 2], "broken.zip")).complete
    assert not kept(
        mail_with(zip_of({"z": bytes(2_000_000)}), "bomb.zip"), DecodeLimits(min_quota=1000)
    ).complete


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["a.bin", "a.zip", "a.txt", "a.eml"]))
def test_keeping_leaves_changes_nothing_the_checks_see(data: bytes, name: str) -> None:
    raw = mail_with(data, name)
    plain = decode_message(raw, DecodeLimits(time_limit=5))
    keeping = decode_message(raw, DecodeLimits(time_limit=5), keep_leaves=True)
    assert (keeping.parts, keeping.findings) == (plain.parts, plain.findings)
    assert keeping.leaves is not None and keeping.leaves.scratch is None


@pytest.mark.slow  # the whole corpus
@pytest.mark.skipif(not corpus_files(), reason="../shared/corpus is not here")
def test_every_corpus_leaf_is_the_bytes_the_checks_saw(tmp_path: Path) -> None:
    """What the virus scanners are given is what the decoder typed, named and digested: each kept
    leaf's SHA-256 is its part's, every decoded MIME leaf is kept, and nothing stays behind."""
    compared = 0
    for path in corpus_files():
        decoded = decode_message(
            str(path), DecodeLimits(memory_threshold=64 * 1024), str(tmp_path), keep_leaves=True
        )
        assert decoded.leaves is not None
        digests = {p.path: p.digest for p in decoded.parts}
        for leaf_path, data in contents(decoded.leaves).items():
            assert hashlib.sha256(data).hexdigest() == digests[leaf_path], (path, leaf_path)
            compared += 1
        if decoded.leaves.complete:
            top_leaves = {p.path for p in decoded.parts if p.size and p.depth == 0 and not p.container}
            assert top_leaves <= set(digests) and top_leaves <= {leaf.path for leaf in decoded.leaves.leaves}
        decoded.leaves.remove()
        assert list(tmp_path.iterdir()) == [], path
    assert compared > 1000
