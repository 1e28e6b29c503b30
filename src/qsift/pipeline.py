"""One message from receipt to a certain answer: decode, check, decide, act.

Every listener (QMQP, SMTP, LMTP) hands its Envelope and spooled body here and gets an Outcome back;
the listener only renders it (K/Z/D or an SMTP code). The answer is decided only once the forward's
outcome is known, and accepted recipients are recorded durably before the answer leaves (DESIGN.md §2).

The content checks (decode, banned files, bad headers) run on every message and name its category in
the outcome; per-recipient policy is the next stage, so until it exists every destiny is pass.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from qsift.act.forward import Forwarder
from qsift.act.headers import edit_message, header_fields, subject_tag
from qsift.checks.content import CheckSettings, Verdict, inspect
from qsift.checks.scanner_set import ScannerSet
from qsift.checks.spam_levels import SpamLevels
from qsift.errors import QsiftError, ScannerFailure, SpoolError
from qsift.model import (
    Answer,
    Disposition,
    Envelope,
    ForwardResult,
    Outcome,
    RecipientResult,
    Reply,
)
from qsift.observe.log import logger
from qsift.policy.destiny import Destiny, DestinySettings
from qsift.spool import MessageBody, MessageSpool
from qsift.store.outcomes import OutcomeRecord, OutcomeStore, body_fingerprint, delivery_key
from qsift.store.quarantine import Quarantine
from qsift.wire import mark

#: Bodies up to this size are hashed on the event loop (about 0.15 ms at most); a thread hop costs more.
_HASH_INLINE = 256 * 1024


class Bouncer(Protocol):
    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageSpool
    ) -> Outcome: ...


class AdminNotice(Protocol):
    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str
    ) -> None: ...


class RefusalNotice(Protocol):
    async def __call__(
        self, outcome: Outcome, envelope: Envelope, refused: list[RecipientResult], spool: MessageSpool
    ) -> Outcome: ...


def new_mail_id() -> str:
    """A short random id for logs, answers and (later) quarantine file names, as amavisd-new's mail_id."""
    return secrets.token_urlsafe(9)


@dataclass
class Pipeline:
    forwarder: Forwarder
    outcomes: OutcomeStore | None = None
    dedupe_window: float = 3600.0
    clock: Callable[[], float] = field(default=time.time)
    #: None: no content checks (every message CLEAN), for forward-only setups and tests.
    checks: CheckSettings | None = None
    #: The virus and spam scanners (None or empty: none configured).
    scanners: ScannerSet | None = None
    destinies: DestinySettings = field(default_factory=DestinySettings)
    #: Sends the DSN for a bounced message and says what to answer; None: bounce acts as discard.
    bounce: Bouncer | None = None
    #: Tells the postmaster about blocked mail (virus_admin, banned_admin, spam_admin).
    admin_notice: AdminNotice | None = None
    #: Tells the sender about recipients the downstream refused while others took the message (a DSN).
    refusal_notice: RefusalNotice | None = None
    #: For the X-Spam fields and the subject tag of passed mail.
    spam_levels: SpamLevels = field(default_factory=SpamLevels)
    #: Named in X-Virus-Scanned.
    hostname: str = "localhost"
    #: Where blocked messages of the kept categories go; None: nowhere.
    quarantine: Quarantine | None = None
    quarantine_keeps: Callable[[str], bool] = field(default=lambda category: False)
    #: The key of the X-Qsift-Scanned mark on passed mail; None: no mark.
    mark_key: bytes | None = None

    async def handle(
        self, envelope: Envelope, spool: MessageSpool, client_gone: asyncio.Event | None = None
    ) -> Outcome:
        """Carry one message to a certain outcome; never raises for trouble downstream."""
        mail_id = new_mail_id()
        # The mark's body digest rides on the same read of the spool as the dedupe fingerprint.
        marking = mark.BodyDigest() if self.mark_key is not None else None
        chunks = spool.chunks() if marking is None else _feeding(spool.chunks(), marking)
        if spool.size <= _HASH_INLINE:
            digest = body_fingerprint(chunks)
        else:
            digest = await asyncio.to_thread(body_fingerprint, chunks)
        keys = [delivery_key(digest, envelope.sender, a) for a in envelope.addresses]
        already = await self._delivered_before(keys)
        owed = tuple(r for r, k in zip(envelope.recipients, keys, strict=True) if k not in already)
        if not owed:
            return _duplicate(mail_id, next(iter(already.values())))
        try:
            verdict = await self._check(envelope, spool, mail_id)
        except ScannerFailure as exc:
            logger.error("id=%s %s; the message is held back (try later)", mail_id, exc)
            reply = Reply.tempfail(exc.enhanced_status, f"id={mail_id} - {exc}")
            return Outcome(mail_id, reply, Disposition.TEMPFAILED, category="UNCHECKED")
        destiny = self.destinies.of(verdict.category) if verdict else Destiny.PASS
        if destiny is not Destiny.PASS and verdict is not None:
            outcome = await self._block(destiny, verdict, mail_id, replace(envelope, recipients=owed), spool)
            if outcome.reply.answer is Answer.ACCEPT:
                # Answered K: a retry of this message must not be bounced (or discarded) again.
                await self._record(keys, mail_id, outcome.reply.smtp_line())
            return outcome
        body: MessageBody = spool
        if verdict is not None:
            virus_scanned = bool(self.scanners and (self.scanners.primary or self.scanners.backup))
            fields = header_fields(verdict, self.spam_levels, self.hostname, virus_scanned=virus_scanned)
            if self.mark_key is not None and marking is not None:
                value = mark.make_value(self.mark_key, marking.hexdigest(), int(self.clock()))
                fields.insert(0, f"{mark.FIELD}: {value}")
            body = edit_message(spool, fields, subject_tag(verdict))
        result = await self.forwarder.forward(replace(envelope, recipients=owed), body, client_gone)
        accepted_keys = [
            delivery_key(digest, envelope.sender, r.recipient.address)
            for r in result.per_recipient
            if r.reply.answer is Answer.ACCEPT
        ]
        outcome = decide(mail_id, envelope, result, already_delivered=len(envelope.recipients) - len(owed))
        outcome = replace(outcome, category=verdict.log_text() if verdict else "CLEAN")
        if accepted_keys:
            await self._record(accepted_keys, mail_id, outcome.reply.smtp_line())
        refused = [r for r in result.per_recipient if r.reply.answer is Answer.REJECT]
        if refused and outcome.reply.answer is Answer.ACCEPT and self.refusal_notice is not None:
            # K was earned by the others; the refused ones would otherwise vanish without a word.
            outcome = await self.refusal_notice(outcome, envelope, refused, spool)
        return outcome

    async def _block(
        self, destiny: Destiny, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageSpool
    ) -> Outcome:
        """Reject, discard or bounce the whole message (per-recipient policy comes next)."""
        reason = verdict.reason()
        category = verdict.log_text()
        try:
            kept = await self._quarantine(verdict, mail_id, envelope, spool)
        except SpoolError as exc:
            # Not delivered and not kept: the client must keep it (DESIGN.md: nothing is lost).
            logger.error("id=%s cannot quarantine: %s", mail_id, exc)
            reply = Reply.tempfail("4.3.0", f"id={mail_id} - cannot quarantine: {exc}")
            return Outcome(mail_id, reply, Disposition.TEMPFAILED, category=category)
        outcome = await self._destiny(destiny, verdict, mail_id, envelope, spool, reason, category)
        if self.admin_notice is not None and outcome.disposition is Disposition.BLOCKED:
            quarantined = kept[0].removeprefix("quarantine: ") if kept else ""
            await self.admin_notice(verdict, mail_id, envelope, destiny.value, quarantined)
        return replace(outcome, notes=(*outcome.notes, *kept))

    async def _quarantine(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageSpool
    ) -> tuple[str, ...]:
        """Keep a blocked message if its category is kept (and spam is under the cutoff)."""
        if self.quarantine is None or not self.quarantine_keeps(verdict.category.value):
            return ()
        cutoff = self.spam_levels.quarantine_cutoff_level
        score = verdict.spam.score if verdict.spam is not None else None
        if cutoff is not None and score is not None and score >= cutoff:
            return ()
        entry = await asyncio.to_thread(
            self.quarantine.store,
            mail_id,
            verdict.category.value,
            verdict.reason(),
            envelope.sender,
            envelope.addresses,
            spool.chunks(),
            self.clock(),
        )
        return (f"quarantine: {os.path.basename(entry.file)}",)

    async def _destiny(
        self,
        destiny: Destiny,
        verdict: Verdict,
        mail_id: str,
        envelope: Envelope,
        spool: MessageSpool,
        reason: str,
        category: str,
    ) -> Outcome:
        if destiny is Destiny.REJECT:
            reply = Reply.reject("5.7.0", f"Reject, id={mail_id} - {reason}")
            return Outcome(mail_id, reply, Disposition.BLOCKED, category=category)
        if destiny is Destiny.BOUNCE and self.bounce is not None:
            return await self.bounce(verdict, mail_id, envelope, spool)
        reply = Reply(Answer.ACCEPT, 250, "2.7.0", f"Ok, discarded, id={mail_id} - {reason}")
        return Outcome(mail_id, reply, Disposition.BLOCKED, category=category)

    async def _check(self, envelope: Envelope, spool: MessageSpool, mail_id: str) -> Verdict | None:
        if self.checks is None:
            return None
        smtputf8 = any(key == "SMTPUTF8" for key, _ in envelope.mail_params)
        # The copies for the scanners are made before the decoder's thread starts reading the spool.
        copies = spool.independent_readers()
        verdict = await inspect(
            spool.reader(), copies, spool.size, self.checks, self.scanners, smtputf8=smtputf8
        )
        for result in verdict.scanner_errors:
            logger.warning("id=%s scanner %s", mail_id, result)
        for finding in verdict.findings:
            logger.info("id=%s %s: %s", mail_id, finding.category.log_word, finding.detail)
        return verdict

    async def _delivered_before(self, keys: Sequence[str]) -> dict[str, OutcomeRecord]:
        if self.outcomes is None:
            return {}
        not_before = self.clock() - self.dedupe_window
        try:
            return await asyncio.to_thread(self.outcomes.lookup, keys, not_before)
        except Exception as exc:  # a broken record must not stop mail
            logger.error("outcome record lookup failed, forwarding anyway: %s", exc)
            return {}

    async def _record(self, keys: Sequence[str], mail_id: str, answer: str) -> None:
        if self.outcomes is None:
            return
        try:
            await asyncio.to_thread(self.outcomes.record, keys, mail_id, answer, self.clock())
        except QsiftError as exc:
            # The downstream has the message: answering Z now would make the retry a duplicate for sure,
            # while a missing record only makes a duplicate possible if the client also loses our K.
            logger.error("id=%s delivered but not recorded for dedupe: %s", mail_id, exc)


def _feeding(chunks: Iterator[bytes], body: mark.BodyDigest) -> Iterator[bytes]:
    for chunk in chunks:
        body.update(chunk)
        yield chunk


def decide(mail_id: str, envelope: Envelope, result: ForwardResult, already_delivered: int = 0) -> Outcome:
    """Fold the per-recipient results of the forward into the one answer QMQP and SMTP can give."""
    results = result.per_recipient
    temp = [r for r in results if r.reply.answer is Answer.TEMPFAIL]
    rejected = [r for r in results if r.reply.answer is Answer.REJECT]
    accepted = len(results) - len(temp) - len(rejected) + already_delivered
    via = f"from MTA({result.method})"
    if temp:
        first = temp[0].reply
        reply = Reply(
            Answer.TEMPFAIL,
            first.smtp_code if 400 <= first.smtp_code < 500 else 451,
            first.enhanced_status,
            f"id={mail_id} - forward failed, {via}: {first.smtp_code} {first.enhanced_status} {first.text}",
        )
        kept: tuple[str, ...] = (f"{accepted} delivered, kept for the retry",) if accepted else ()
        return Outcome(mail_id, reply, Disposition.TEMPFAILED, per_recipient=results, notes=kept)
    if rejected and not accepted:
        first = rejected[0].reply
        reply = Reply(
            Answer.REJECT,
            first.smtp_code,
            first.enhanced_status,
            f"id={mail_id} - rejected by next-hop MTA, {via}: "
            f"{first.smtp_code} {first.enhanced_status} {first.text}",
        )
        return Outcome(mail_id, reply, Disposition.BLOCKED, per_recipient=results)
    text = f"Ok, id={mail_id}, {via}: {result.queued_as or 'accepted'}"
    notes: tuple[str, ...] = ()
    if rejected:
        text += f", but {len(rejected)} REJECT"
        notes = tuple(_rejection_note(r) for r in rejected)
    reply = Reply(Answer.ACCEPT, 250, "2.0.0", text)
    return Outcome(
        mail_id, reply, Disposition.PASSED, per_recipient=results, queued_as=result.queued_as, notes=notes
    )


def _rejection_note(result: RecipientResult) -> str:
    reply = result.reply
    return f"rejected <{result.recipient.address}>: {reply.smtp_code} {reply.enhanced_status} {reply.text}"


def _duplicate(mail_id: str, record: OutcomeRecord) -> Outcome:
    reply = Reply(
        Answer.ACCEPT,
        250,
        "2.0.0",
        f"Ok, id={mail_id}, already delivered as id={record.mail_id} (identical retry, not forwarded again)",
    )
    return Outcome(mail_id, reply, Disposition.DUPLICATE)
