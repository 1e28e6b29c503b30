"""The message as the stages after the dedupe pass it along."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from qsift.act.long_lines import NO_LONG_LINES, FitPlan
from qsift.auth.results import AuthResults
from qsift.model import Envelope
from qsift.pipeline.client import ClientFields
from qsift.policy.settings import Policy
from qsift.spool import MessageBody, MessageSpool


@dataclass(frozen=True)
class InFlight:
    """One message in flight: what every stage after the dedupe needs."""

    mail_id: str
    envelope: Envelope
    spool: MessageSpool
    #: The message as it may leave (without the X-Qsift-Client fields).
    body: MessageBody
    client: ClientFields
    policy: Policy
    body_digest: str | None
    client_gone: asyncio.Event | None
    #: The outcome record's fingerprint of the body: the same on every retry of the message.
    fingerprint: str = ""
    #: Whether a virus scanner looked at it (X-Virus-Scanned); set once the checks ran.
    virus_scanned: bool = False
    #: The mark's digest of the fields that say how the body is read (wire/mark.py).
    reading_digest: str = ""
    #: It carries this daemon's own valid mark: it is passed on unscanned and unchanged.
    scanned_before: bool = False
    #: How its lines over 998 octets are fitted on every forward (act/long_lines.py); `body` and the
    #: quarantine keep them as they came.
    fit: FitPlan = NO_LONG_LINES
    #: Byte ranges cut from every forwarded copy besides the X-Qsift-Client fields: forged
    #: Authentication-Results fields, once the checks found them.
    cut: tuple[tuple[int, int], ...] = ()
    #: The authentication results, once the checks ran: every copy's seal carries them (pipeline/sealing.py).
    auth: AuthResults = field(default_factory=AuthResults)
    #: Authorizes a release of mail_id over AM.PDP (mail_ids.py); written only to the shared quarantine.
    secret_id: str = ""
