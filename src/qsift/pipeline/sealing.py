"""The ARC set on each forwarded copy of checked mail passed on for others, over the bytes it leaves with.

Sealing comes last, after DKIM signing (pipeline/signing.py): the ARC-Message-Signature covers the header
fields as they leave and the ARC-Seal the ARC sets before it, and RFC 8617 §5.1 puts the new set on top.
Only a copy whose policy says seal, with the `[arc]` key configured and the inbound checks run, is sealed;
a copy the checks could not vouch for (not validated, or a chain that failed only on a DNS lookup that
failed for now) leaves unsealed, and log_level 2 says why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from qsift.auth.results import AuthResults
from qsift.observe.log import level, logger
from qsift.pipeline.signing import SignedMessage
from qsift.policy.settings import Policy
from qsift.spool import MessageBody

if TYPE_CHECKING:
    from qsift.auth.arc import ArcKey
    from qsift.auth.sealing import Sealed

#: Copies up to this size are sealed on the event loop; larger ones in a thread (as DKIM signing).
_SEAL_INLINE = 256 * 1024


async def sealed_copy(
    key: ArcKey | None,
    policy: Policy,
    auth: AuthResults,
    copy: MessageBody,
    mail_id: str,
    large: asyncio.Semaphore,
) -> MessageBody:
    """`copy` with an ARC set on top if its policy says seal and there is a key; else `copy` as it is.
    A large copy is sealed in a thread, holding `large`, as signing does (pipeline/signing.py)."""
    if key is None or not policy.arc.seal:
        return copy
    if copy.size <= _SEAL_INLINE:
        sealed = _seal(key, copy, auth)
    else:
        async with large:
            sealed = await asyncio.to_thread(_seal, key, copy, auth)
    if not sealed.fields:
        logger.log(level(2), "id=%s not ARC-sealed: %s", mail_id, sealed.reason)
        return copy
    logger.log(level(2), "id=%s ARC-sealed: d=%s s=%s cv=%s", mail_id, key.domain, key.selector, auth.arc_cv)
    return SignedMessage(copy, sealed.fields)


def _seal(key: ArcKey, copy: MessageBody, auth: AuthResults) -> Sealed:
    from qsift.auth.sealing import seal  # dkimpy: only where a key is configured

    return seal(key, b"".join(copy.chunks()), auth)
