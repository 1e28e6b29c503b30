"""`qsift quarantine list|show` and `qsift release`: look into the quarantine, and let a message out.

The quarantine is the one the configuration names: local, or shared in PostgreSQL when `[store] url` is set,
so any node lists, shows and releases what any node kept. A release sends the message as it was
quarantined (the envelope fields the quarantine put before it are not part of it; lines over 998 octets
fitted as on any forward, act/long_lines.py) through the configured forward method, to all its recipients
or to those given, bypassing every check: the postmaster has decided. The release is recorded in the
quarantine, with the recipients it went to.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from qsift.act.forward import Forwarder
from qsift.act.long_lines import fitted
from qsift.config import Config
from qsift.errors import SpoolError
from qsift.model import Answer, Envelope, ForwardResult, Recipient
from qsift.pipeline import build_pipeline, open_quarantine
from qsift.spool import MessageSpool
from qsift.store.quarantine import QuarantineEntry, QuarantineStore


def list_quarantine(config: Config, *, category: str | None, as_json: bool, limit: int, out: TextIO) -> int:
    quarantine = open_quarantine(config)
    try:
        for entry in quarantine.list(limit=limit, category=category):
            out.write(_entry_json(entry) + "\n" if as_json else _entry_line(entry) + "\n")
    finally:
        quarantine.close()
    return 0


def purge(config: Config, days: float, out: TextIO) -> int:
    """Delete what was quarantined more than `days` days ago (for cron, when max_age_days is not set)."""
    quarantine = open_quarantine(config)
    try:
        gone = quarantine.purge(time.time() - days * 86400)
    finally:
        quarantine.close()
    out.write(f"{gone} quarantined message(s) older than {days:g} days deleted\n")
    return 0


def show(config: Config, mail_id: str, out: TextIO) -> int:
    quarantine = open_quarantine(config)
    try:
        entry = quarantine.get(mail_id)
        if entry is None:
            print(f"qsift: no quarantined message {mail_id}", file=sys.stderr)
            return 1
        _, _, message = quarantine.read(mail_id)
    finally:
        quarantine.close()
    out.write(_entry_line(entry) + "\n\n")
    out.write(message.decode("utf-8", "replace"))
    return 0


def release(config: Config, mail_id: str, recipients: Sequence[str], out: TextIO) -> int:
    """Forward the quarantined message; 0 when every recipient took it, 1 otherwise."""
    quarantine = open_quarantine(config)
    forwarder = build_pipeline(config, durable=False).forwarder
    try:
        try:
            released = asyncio.run(release_quarantined(quarantine, forwarder, mail_id, recipients))
        except (KeyError, ValueError):
            print(f"qsift: no quarantined message {mail_id}", file=sys.stderr)
            return 1
    finally:
        quarantine.close()
    for item in released.result.per_recipient:
        reply = item.reply
        out.write(f"<{item.recipient.address}>: {reply.smtp_code} {reply.enhanced_status} {reply.text}\n")
    if released.unrecorded is not None:
        raise released.unrecorded
    return 0 if released.result.all_accepted else 1


@dataclass(frozen=True)
class Released:
    """What the downstream said per recipient, and whether the release could be recorded."""

    result: ForwardResult
    #: Why the recipients that took the message are not recorded as released (the store failed after
    #: the forward); None when they are. The message went out either way.
    unrecorded: SpoolError | None = None

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(
            r.recipient.address for r in self.result.per_recipient if r.reply.answer is Answer.ACCEPT
        )


async def release_quarantined(
    quarantine: QuarantineStore,
    forwarder: Forwarder,
    mail_id: str,
    recipients: Sequence[str] = (),
    sender: str | None = None,
) -> Released:
    """Forward a quarantined message to `recipients` (none: the ones it was kept for), from `sender` (None:
    its own), and record the release. KeyError if it is not quarantined, ValueError for a mail_id that
    cannot be one, SpoolError (StoreUnreachable) if it cannot be read. The store's calls block, so they run
    in threads: the daemon's AM.PDP server shares its event loop with mail."""
    stored_sender, kept_for, message = await asyncio.to_thread(quarantine.read, mail_id)
    targets = tuple(recipients) or kept_for
    envelope = Envelope(
        stored_sender if sender is None else sender,
        tuple(Recipient(r) for r in targets),
        protocol="ESMTP",
    )
    with MessageSpool.from_bytes(message) as spool:
        result = await forwarder.forward(envelope, fitted(spool))
    released = Released(result)
    if released.delivered:
        try:
            await asyncio.to_thread(quarantine.mark_released, mail_id, released.delivered)
        except SpoolError as exc:
            return Released(result, exc)
    return released


def _entry_line(entry: QuarantineEntry) -> str:
    when = datetime.datetime.fromtimestamp(entry.time, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    released = f" released to {','.join(entry.released)}" if entry.released else ""
    recipients = ",".join(f"<{r}>" for r in entry.recipients)
    return (
        f"{entry.mail_id} {when} {entry.category} <{entry.sender}> -> {recipients} "
        f"{entry.size} B: {entry.reasons}{released}"
    )


def _entry_json(entry: QuarantineEntry) -> str:
    return json.dumps(
        {
            "mail_id": entry.mail_id,
            "time": entry.time,
            "sender": entry.sender,
            "recipients": list(entry.recipients),
            "category": entry.category,
            "reasons": entry.reasons,
            "size": entry.size,
            "file": entry.file,
            "released": list(entry.released),
        },
        ensure_ascii=False,
    )
