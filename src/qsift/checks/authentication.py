"""The authentication checks of one inbound message, together: DKIM, SPF, ARC, then DMARC over them.

DKIM (every signature), SPF (the client's address, MAIL FROM, HELO for the null sender) and ARC run side
by side on the shared resolver; DMARC then judges the From: domain by their results, and what it asks
becomes a finding (auth_verdict.py). A valid ARC chain sealed by a domain in `arc_trusted_sealers` lifts
a DMARC failure.

Every DNS failure is a temperror in the results, never a finding: mail passes while DNS is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import IO

from qsift.auth.arc import ArcValidation, validate_arc
from qsift.auth.dkim import MAX_VERIFY_SIZE, verify_dkim, verify_dkim_body
from qsift.auth.dmarc import author_domain, check_dmarc
from qsift.auth.dns import Resolver
from qsift.auth.headers import authentication_results_ranges
from qsift.auth.results import AuthResults, DmarcVerdict, MethodResult
from qsift.auth.settings import AuthSettings
from qsift.auth.spf import check_spf, spf_domain
from qsift.checks.auth_verdict import Client
from qsift.spool import DEFAULT_CHUNK

#: The head read for the From: field when a message is too large to read whole.
_HEAD = 256 * 1024
#: Messages larger than this are checked one at a time per worker (their copies in memory add up).
LARGE = 1024 * 1024


class MailAuthentication:
    """The checks, with the worker's resolver and the site's settings."""

    def __init__(self, resolver: Resolver, settings: AuthSettings, authserv_id: str) -> None:
        self.resolver = resolver
        self.settings = settings
        self.authserv_id = authserv_id
        # A message is held whole in memory to verify it, and dkimpy makes about four copies: at up to
        # 40 MiB a message, a worker's 64 messages in progress could take gigabytes. Large ones take turns.
        self._large = asyncio.Semaphore(1)

    async def results(self, opener: Callable[[], IO[bytes]], size: int, client: Client) -> AuthResults:
        """`opener` gives a reader of the whole message of its own (so the decoder may read beside it)."""
        if size <= LARGE:
            return await self._results(opener, size, client)
        async with self._large:
            return await self._results(opener, size, client)

    async def _results(self, opener: Callable[[], IO[bytes]], size: int, client: Client) -> AuthResults:
        whole = size <= MAX_VERIFY_SIZE
        message = await asyncio.to_thread(_read, opener, size if whole else _HEAD)
        resolver = self.resolver
        dkim, spf, arc = await asyncio.gather(
            verify_dkim(resolver, message) if whole else verify_dkim_body(resolver, _Head(message, size)),
            self._spf(client),
            self._arc(message, client) if whole else _nothing(),
        )
        arc_result = arc.result if arc is not None else None
        dmarc, verdict = await check_dmarc(
            resolver,
            author_domain(message[:_HEAD]),
            spf,
            spf_domain(client.mail_from, client.helo),
            dkim,
        )
        if verdict.disposition != "none" and self._vouched_for(arc):
            assert arc is not None
            verdict = DmarcVerdict("none", verdict.domain)
            reason = f"{dmarc.reason}; ARC sealed by {arc.sealer} (trusted)"
            dmarc = MethodResult(dmarc.method, dmarc.result, reason, dmarc.properties)
        forged = tuple(authentication_results_ranges(message[:_HEAD], self.authserv_id))
        arc_cv = arc.cv if arc is not None and not arc.temporary else ""
        return AuthResults(dkim, spf, dmarc, arc_result, verdict, self.authserv_id, forged, arc_cv)

    def _vouched_for(self, arc: ArcValidation | None) -> bool:
        """A valid chain whose newest seal is a trusted sealer's: a list or forwarder that broke DMARC."""
        trusted = self.settings.arc_trusted_sealers
        return arc is not None and arc.cv == "pass" and arc.sealer.lower() in trusted

    async def _spf(self, client: Client) -> MethodResult | None:
        """Without the client's address (QMQP with no qsift-queue context) SPF has nothing to judge."""
        if not client.ip:
            return None
        return await check_spf(self.resolver, client.ip, client.mail_from, client.helo)

    async def _arc(self, message: bytes, client: Client) -> ArcValidation | None:
        return await validate_arc(self.resolver, message, client.ip)


async def _nothing() -> None:
    return None


def _read(opener: Callable[[], IO[bytes]], limit: int) -> bytes:
    with opener() as reader:
        return reader.read(limit)


class _Head:
    """A message too large to verify, as verify_dkim_body reads it: its size and its head."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head_bytes = head
        self.size = size

    def head(self, limit: int) -> bytes:
        return self.head_bytes[:limit]

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        yield self.head_bytes
