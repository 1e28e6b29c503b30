"""The content checks a pipeline runs on one message: the decoder's checks and the scanners, or none.

`NoChecks` stands for a setup without content checks (forward only, and tests): every message is
CLEAN and passes unchanged.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Protocol

from qsift.auth.results import AuthResults
from qsift.checks.auth_verdict import Client, findings
from qsift.checks.content import CheckSettings, Verdict, check_message, decoder_threads, inspect
from qsift.checks.scanner_set import ScannerSet
from qsift.checks.scanners import SpamEnvelope
from qsift.errors import ScannerFailure
from qsift.model import Category, Finding, Recipient
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline.inflight import InFlight

if TYPE_CHECKING:
    from qsift.checks.authentication import MailAuthentication


class Checks(Protocol):
    async def verdict(self, message: InFlight, owed: tuple[Recipient, ...]) -> tuple[Verdict | None, bool]:
        """The verdict (None: nothing was checked), and whether a virus scanner took part; raises
        ScannerFailure when a scanner the verdict needs did not answer."""
        ...

    async def offline(self, message: bytes) -> Verdict:
        """The verdict on a whole message in memory, for `qsift scan`: a scanner failure is a finding."""
        ...

    async def health(self) -> list[tuple[str, str]]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ContentChecks:
    settings: CheckSettings
    #: The virus and spam scanners (none configured: an empty set).
    scanners: ScannerSet = field(default_factory=ScannerSet)
    #: DKIM, SPF, DMARC and ARC, for mail whose policy asks for them; None: no resolver was built.
    authentication: MailAuthentication | None = None
    #: The threads messages are decoded in (content.DECODER_THREADS of them, started when first needed).
    decoder: ThreadPoolExecutor = field(default_factory=decoder_threads, compare=False, repr=False)

    async def verdict(self, message: InFlight, owed: tuple[Recipient, ...]) -> tuple[Verdict | None, bool]:
        addresses = tuple(r.address for r in owed)
        scanners = self.scanners
        # A check every recipient bypasses is not run at all.
        if message.policy.bypassed_by_all(Category.VIRUS, addresses):
            scanners = replace(scanners, primary=[], backup=[])
        if message.policy.bypassed_by_all(Category.SPAM, addresses):
            scanners = replace(scanners, spam=None)
        envelope, spool = message.envelope, message.spool
        smtputf8 = any(key == "SMTPUTF8" for key, _ in envelope.mail_params)
        # The copies for the scanners are made before the decoder's thread starts reading the spool.
        copies = spool.independent_readers()
        started = time.monotonic()
        verdict, auth = await asyncio.gather(
            inspect(
                spool.reader(),
                copies,
                spool.size,
                self.settings,
                scanners,
                smtputf8=smtputf8,
                envelope=spam_envelope(message),
                decoder=self.decoder,
            ),
            self._authenticate(message, copies),
        )
        verdict = replace(verdict, findings=(*verdict.findings, *findings(auth)), auth=auth)
        metrics.stage_done("checks", started)
        for result in verdict.scanner_errors:
            logger.warning("id=%s scanner %s", message.mail_id, result)
        for finding in verdict.findings:
            logger.info("id=%s %s: %s", message.mail_id, finding.category.log_word, finding.detail)
        return verdict, bool(scanners.primary or scanners.backup)

    async def _authenticate(self, message: InFlight, copies: Callable[[], IO[bytes]]) -> AuthResults:
        policy = message.policy
        if self.authentication is None or not policy.auth.check or policy.originating:
            return AuthResults()
        return await self.authentication.results(copies, message.spool.size, smtp_client(message))

    async def offline(self, message: bytes) -> Verdict:
        auth = AuthResults()
        if self.authentication is not None:
            # A file has no SMTP client: DKIM, ARC and DMARC without SPF.
            auth = await self.authentication.results(
                lambda: io.BytesIO(message), len(message), Client("", "", "")
            )
        try:
            verdict = await inspect(
                io.BytesIO(message),
                lambda: io.BytesIO(message),
                len(message),
                self.settings,
                self.scanners,
                decoder=self.decoder,
            )
            return replace(verdict, findings=(*verdict.findings, *findings(auth)), auth=auth)
        except ScannerFailure as exc:
            # The daemon would answer "try later"; offline, say what the decoder saw and why no more.
            verdict = check_message(message, self.settings)
            failure = Finding(Category.UNCHECKED, 0, str(exc))
            return Verdict(verdict.parts, (*verdict.findings, failure))

    async def health(self) -> list[tuple[str, str]]:
        return await self.scanners.health()

    async def close(self) -> None:
        # The daemon has drained its messages by now; a decoding still running is one nobody waits for.
        self.decoder.shutdown(wait=False)
        await self.scanners.close()


def spam_envelope(message: InFlight) -> SpamEnvelope:
    """The envelope and the client the spam scanner is told of: the sender and recipients, and the
    client `smtp_client` vouches for (none when only the handing-on MTA is known)."""
    client = smtp_client(message)
    return SpamEnvelope(
        sender=message.envelope.sender,
        recipients=tuple(r.address for r in message.envelope.recipients),
        ip=client.ip or None,
        helo=client.helo or None,
    )


def smtp_client(message: InFlight) -> Client:
    """The client SPF judges: the one qsift-queue vouched for, or the one an MTA named with XFORWARD.
    Otherwise the connection's peer is the MTA that handed the message on (qmail-qmqpc, Postfix's smtp
    client), whose address says nothing of the sender: no SPF then."""
    envelope, fields = message.envelope, message.client
    if fields.vouched:
        return Client(fields.client.ip, "", envelope.sender)
    if envelope.peer_address is not None:
        return Client(envelope.client_address or "", envelope.helo or "", envelope.sender)
    return Client("", "", envelope.sender)


class NoChecks:
    async def verdict(self, message: InFlight, owed: tuple[Recipient, ...]) -> tuple[Verdict | None, bool]:
        return None, False

    async def offline(self, message: bytes) -> Verdict:
        return Verdict((), ())

    async def health(self) -> list[tuple[str, str]]:
        return []

    async def close(self) -> None:
        pass
