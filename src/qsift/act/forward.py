"""Choose the forward method from its amavisd-new style name and hand clean mail to it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from qsift.act.maildir import MaildirForwarder
from qsift.act.qmail_queue import QmailQueueForwarder
from qsift.act.smtp_forward import IdleSessions, SmtpTimeouts, forward_via_smtp, parse_forward_method
from qsift.config import Forward
from qsift.model import Delivered, Envelope, ForwardResult
from qsift.spool import MessageBody


class Forwarder(Protocol):
    """Delivers one message to every envelope recipient and says, per recipient, what happened; tells
    `delivered` about the accepted ones as soon as the downstream has accepted them."""

    method: str

    async def forward(
        self,
        envelope: Envelope,
        spool: MessageBody,
        client_gone: asyncio.Event | None = None,
        delivered: Delivered | None = None,
    ) -> ForwardResult: ...

    def close(self) -> None:
        """Let go of what is kept open between messages."""


class SmtpForwarder:
    """SMTP or LMTP to a downstream MTA: a re-injection qmail-smtpd, Postfix's 10025, an LMTP server."""

    def __init__(self, settings: Forward, helo_name: str) -> None:
        self._target = parse_forward_method(settings.method)
        self._settings = settings
        self._helo_name = helo_name
        self._timeouts = SmtpTimeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            data_block=settings.data_timeout,
            final_reply=settings.final_timeout,
        )
        self.method = self._target.describe()
        self._sessions = IdleSessions(settings.idle_sessions) if settings.idle_sessions > 0 else None

    async def forward(
        self,
        envelope: Envelope,
        spool: MessageBody,
        client_gone: asyncio.Event | None = None,
        delivered: Delivered | None = None,
    ) -> ForwardResult:
        return await forward_via_smtp(
            self._target,
            envelope,
            spool,
            helo_name=self._helo_name,
            timeouts=self._timeouts,
            max_recipients_per_transaction=self._settings.max_recipients_per_transaction,
            client_gone=client_gone,
            delivered=delivered,
            sessions=self._sessions,
        )

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()


def make_forwarder(settings: Forward, helo_name: str) -> Forwarder:
    scheme, _, rest = settings.method.partition(":")
    if scheme == "maildir":
        return MaildirForwarder(rest)
    if scheme == "qmail-queue":
        return QmailQueueForwarder(rest, timeout=settings.final_timeout)
    return SmtpForwarder(settings, helo_name)
