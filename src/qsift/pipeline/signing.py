"""The DKIM-Signature on each forwarded copy of our users' mail, made over the bytes it leaves with.

A copy's header section is final once its fields are added, its Subject tagged and its long lines fitted
(`FittedMessage`, stages.py `_forward`): the signature is made over that, and prepended, so nothing touches
the copy afterwards (RFC 6376 5.6 puts a new signature on top). Only mail whose policy is originating and
says sign is signed; mail with no From:, several, or a From: domain without a key leaves unsigned, and
log_level 2 says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from qsift.observe.log import level, logger
from qsift.policy.settings import Policy
from qsift.spool import DEFAULT_CHUNK, MessageBody, head_of_chunks

if TYPE_CHECKING:
    from qsift.auth.signing import Signed

#: Copies up to this size are signed on the event loop; larger ones in a thread (an RSA-2048 signature
#: takes 0.3 ms, reading and hashing a large body more).
_SIGN_INLINE = 256 * 1024


class Signer(Protocol):
    """auth/signing.py's DkimSigner, or NoSigner: a site without keys never loads OpenSSL."""

    @property
    def has_keys(self) -> bool: ...

    def sign_chunks(self, chunks: Iterable[bytes]) -> Signed: ...


class NoSigner:
    has_keys = False

    def sign_chunks(self, chunks: Iterable[bytes]) -> Signed:
        raise AssertionError("NoSigner signs nothing: has_keys is False")


@dataclass(frozen=True)
class SignedMessage:
    """A copy with fields on top: its DKIM-Signature fields, or an ARC set (pipeline/sealing.py)."""

    inner: MessageBody
    fields: bytes

    @property
    def size(self) -> int:
        return len(self.fields) + self.inner.size

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        yield self.fields
        yield from self.inner.chunks(chunk_size)

    def head(self, limit: int) -> bytes:
        return head_of_chunks(self.chunks(), limit)


async def signed_copy(
    signer: Signer, policy: Policy, copy: MessageBody, mail_id: str, large: asyncio.Semaphore
) -> MessageBody:
    """`copy` signed if its policy says so and its From: domain has a key; else `copy` as it is. A large
    copy is signed in a thread, holding `large`: reading it from the spool file and hashing it take
    the longest, so large ones take turns rather than crowd the threads."""
    if not signer.has_keys or not policy.originating or not policy.dkim.sign:
        return copy
    if copy.size <= _SIGN_INLINE:
        signed = _sign(signer, copy)
    else:
        async with large:
            signed = await asyncio.to_thread(_sign, signer, copy)
    if not signed.fields:
        logger.log(level(2), "id=%s not DKIM-signed: %s", mail_id, signed.reason)
        return copy
    logger.log(level(2), "id=%s DKIM-signed: %s", mail_id, "; ".join(signed.made))
    return SignedMessage(copy, signed.fields)


def _sign(signer: Signer, copy: MessageBody) -> Signed:
    return signer.sign_chunks(copy.chunks())
