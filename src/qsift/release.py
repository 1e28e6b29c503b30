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
from typing import TextIO

from qsift.act.long_lines import fitted
from qsift.config import Config
from qsift.model import Answer, Envelope, Recipient
from qsift.pipeline import build_pipeline, open_quarantine
from qsift.spool import MessageSpool
from qsift.store.quarantine import QuarantineEntry


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
    try:
        try:
            sender, original, message = quarantine.read(mail_id)
        except (KeyError, ValueError):
            print(f"qsift: no quarantined message {mail_id}", file=sys.stderr)
            return 1
        targets = tuple(recipients) or original
        envelope = Envelope(sender, tuple(Recipient(r) for r in targets), protocol="ESMTP")
        forwarder = build_pipeline(config, durable=False).forwarder
        with MessageSpool.from_bytes(message) as spool:
            result = asyncio.run(forwarder.forward(envelope, fitted(spool)))
        delivered = [r.recipient.address for r in result.per_recipient if r.reply.answer is Answer.ACCEPT]
        for item in result.per_recipient:
            reply = item.reply
            out.write(f"<{item.recipient.address}>: {reply.smtp_code} {reply.enhanced_status} {reply.text}\n")
        if delivered:
            quarantine.mark_released(mail_id, delivered)
    finally:
        quarantine.close()
    return 0 if len(delivered) == len(targets) else 1


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
