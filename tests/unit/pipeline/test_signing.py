"""Which copies the pipeline signs: only an originating policy that says sign, with a key for the From:
domain; the signed copy is the copy with the fields on top, byte for byte."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace

from qsift.auth.settings import SigningSwitches
from qsift.auth.signing import DkimSigner, Signed, SigningKey
from qsift.pipeline.signing import SignedMessage, signed_copy
from qsift.policy.settings import Policy
from qsift.spool import MessageSpool
from tests.unit.auth.test_signing import RSA


def turns() -> asyncio.Semaphore:
    """A fresh semaphore for large copies, as each pipeline has its own."""
    return asyncio.Semaphore(1)


MESSAGE = b"From: joe@football.example.com\nSubject: hi\n\nhello\n"
SIGNER = DkimSigner((SigningKey("football.example.com", "test", RSA, "/k.pem"),))
OURS = replace(Policy(), originating=True)


async def test_an_originating_policy_that_says_sign_signs() -> None:
    with MessageSpool.from_bytes(MESSAGE) as copy:
        signed = await signed_copy(SIGNER, OURS, copy, "id1", turns())
        assert isinstance(signed, SignedMessage)
        whole = b"".join(signed.chunks(7))
        assert whole.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert whole.endswith(MESSAGE)
        assert signed.size == len(whole)
        assert signed.head(16) == b"DKIM-Signature: "


async def test_what_is_not_signed_is_the_copy_itself() -> None:
    quiet = replace(OURS, dkim=SigningSwitches(sign=False))
    other_domain = MESSAGE.replace(b"football.example.com", b"example.org")
    with MessageSpool.from_bytes(MESSAGE) as copy, MessageSpool.from_bytes(other_domain) as other:
        assert await signed_copy(SIGNER, Policy(), copy, "inbound", turns()) is copy
        assert await signed_copy(SIGNER, quiet, copy, "quiet", turns()) is copy
        assert await signed_copy(DkimSigner(), OURS, copy, "no keys", turns()) is copy
        assert await signed_copy(SIGNER, OURS, other, "no key for it", turns()) is other


async def test_a_large_copy_is_signed_off_the_loop_all_the_same() -> None:
    with MessageSpool.from_bytes(MESSAGE + (b"x" * 76 + b"\n") * 4000, memory_limit=1024) as copy:
        signed = await signed_copy(SIGNER, OURS, copy, "large", turns())
        assert isinstance(signed, SignedMessage)
        assert b"".join(signed.chunks()).endswith(b"x" * 76 + b"\n")


async def test_large_copies_take_turns() -> None:
    """A large copy is signed in a thread, one at a time."""
    signing = 0
    most: list[int] = []

    class Counted:
        has_keys = True

        def sign_chunks(self, chunks: Iterable[bytes]) -> Signed:
            nonlocal signing
            signing += 1
            most.append(signing)
            time.sleep(0.05)
            signing -= 1
            return SIGNER.sign_chunks(chunks)

    large = turns()
    big = MESSAGE + (b"x" * 76 + b"\n") * 4000
    with MessageSpool.from_bytes(big, memory_limit=1024) as copy:
        signed = await asyncio.gather(*(signed_copy(Counted(), OURS, copy, "large", large) for _ in range(3)))
    assert all(isinstance(s, SignedMessage) for s in signed) and max(most) == 1
