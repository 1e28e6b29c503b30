"""Which copies the pipeline seals: only a policy that says seal, with a key, and results to carry; the
sealed copy is the copy with the ARC set on top, byte for byte."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from qsift.auth.arc import ArcKey
from qsift.auth.headers import render_authentication_results
from qsift.auth.results import AuthResults, MethodResult
from qsift.auth.settings import SealingSwitches
from qsift.pipeline.sealing import sealed_copy
from qsift.pipeline.signing import SignedMessage
from qsift.policy.settings import Policy
from qsift.spool import MessageSpool
from tests.unit.auth.test_signing import RSA


def turns() -> asyncio.Semaphore:
    return asyncio.Semaphore(1)


AUTH = AuthResults(arc=MethodResult("arc", "none"), authserv_id="qsift.test", arc_cv="none")
MESSAGE = (
    render_authentication_results("qsift.test", AUTH.all, linesep=b"\n")
    + b"From: joe@lists.example.com\nSubject: hi\n\nhello\n"
)
KEY = ArcKey("lists.example.com", "seal", RSA.signing)
SEALING = replace(Policy(), arc=SealingSwitches(seal=True))


async def test_a_policy_that_says_seal_seals() -> None:
    with MessageSpool.from_bytes(MESSAGE) as copy:
        sealed = await sealed_copy(KEY, SEALING, AUTH, copy, "id1", turns())
        assert isinstance(sealed, SignedMessage)
        whole = b"".join(sealed.chunks(7))
        assert whole.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=lists.example.com; s=seal;")
        assert whole.endswith(MESSAGE)
        assert sealed.size == len(whole)


async def test_what_is_not_sealed_is_the_copy_itself() -> None:
    temporary = replace(AUTH, arc=MethodResult("arc", "fail", "key lookup: timeout"), arc_cv="")
    with MessageSpool.from_bytes(MESSAGE) as copy:
        assert await sealed_copy(KEY, Policy(), AUTH, copy, "off by default", turns()) is copy
        assert await sealed_copy(None, SEALING, AUTH, copy, "no key", turns()) is copy
        assert await sealed_copy(KEY, SEALING, AuthResults(), copy, "not checked", turns()) is copy
        assert await sealed_copy(KEY, SEALING, temporary, copy, "DNS failed for now", turns()) is copy


async def test_a_large_copy_is_sealed_off_the_loop_all_the_same() -> None:
    with MessageSpool.from_bytes(MESSAGE + (b"x" * 76 + b"\n") * 4000, memory_limit=1024) as copy:
        sealed = await sealed_copy(KEY, SEALING, AUTH, copy, "large", turns())
        assert isinstance(sealed, SignedMessage)
        assert b"".join(sealed.chunks()).endswith(b"x" * 76 + b"\n")
