"""The stages of one message: dedupe, client, policy bank, checks, per-recipient decisions, acts, answer.

Every listener (QMQP, SMTP, LMTP) hands its Envelope and spooled body to `Pipeline.handle` and gets an
Outcome back; the listener only renders it (K/Z/D or an SMTP code). The answer is decided only once every
recipient's fate is certain (delivered, refused, bounced, discarded, quarantined, or held back with a
temporary failure), and every settled recipient is recorded before the answer leaves (a
delivered one the moment the downstream accepts it: deliveries.py, DESIGN.md §2), so a retry after a
lost answer or a dead worker deals only with what was not settled.

Order matters for "nothing is lost": blocked mail is quarantined first, then clean recipients are
forwarded group by group (each group with its own headers), then blocked recipients are rejected, bounced
or discarded, then notices go out (blocked.py says why in this order).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from qsift.act.forward import Forwarder
from qsift.act.headers import EditedMessage, edit_message, header_fields, subject_tag
from qsift.act.long_lines import FittedMessage, plan_fit
from qsift.answers import Row, reply_for_error
from qsift.checks.content import Verdict
from qsift.checks.headers import header_section
from qsift.errors import ScannerFailure, SpoolError
from qsift.mail_ids import new_mail_ids
from qsift.model import (
    Answer,
    Category,
    Disposition,
    Envelope,
    ForwardResult,
    Outcome,
    Recipient,
)
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.pipeline.answer import combine, decide
from qsift.pipeline.blocked import Bouncer, Keeper, Notifier, reject_bounce_or_discard, send_notices
from qsift.pipeline.checking import Checks
from qsift.pipeline.client import client_fields
from qsift.pipeline.deliveries import Deliveries
from qsift.pipeline.inflight import InFlight
from qsift.pipeline.logged import logged_message, unchecked
from qsift.pipeline.parts import (
    MessageLog,
    NoLookups,
    NoPenPals,
    OutcomeLedger,
    PenPalLog,
    RecipientLookups,
    RefusalNotice,
)
from qsift.pipeline.sealing import sealed_copy
from qsift.pipeline.shared_state import (
    delivered_before,
    log_finished,
    looked_up,
    penpals_found,
    record_delivery,
)
from qsift.pipeline.signing import Signer, signed_copy
from qsift.pipeline.slots import MessageSlots
from qsift.policy.bank import Policies
from qsift.policy.destiny import Destiny
from qsift.policy.recipients import Decision, decide_recipients
from qsift.spool import MessageBody, MessageSpool
from qsift.store.outcomes import OutcomeRecord, body_fingerprint, delivery_key
from qsift.wire import mark
from qsift.wire.long_lines import LongLineFinder

if TYPE_CHECKING:
    from qsift.auth.arc import ArcKey

_P = ParamSpec("_P")
_T = TypeVar("_T")
#: Bodies up to this size are hashed on the event loop (about 0.15 ms at most); a thread hop costs more.
_HASH_INLINE = 256 * 1024
#: How much of the message is searched for the header fields the pipeline reads (X-Qsift-Client).
_HEAD = 256 * 1024


def new_mail_id() -> str:
    """A mail_id for an answer given before a message is taken in (its secret is never needed)."""
    return new_mail_ids().mail_id


@dataclass(frozen=True)
class Pipeline:
    """Carries each message to a certain outcome. Made by `build_pipeline` (build.py); a part a setup goes
    without is a null object (no checks, no quarantine, no outcome record), never a branch here."""

    forwarder: Forwarder
    #: The decoder's checks and the scanners, or none (every message CLEAN).
    checks: Checks
    #: The base policy and the banks (destinies, levels, lovers, quarantine switches, admins).
    policies: Policies
    #: Delivered recipients, to answer a retry without delivering twice.
    outcomes: OutcomeLedger
    #: Where blocked messages of the kept categories go.
    quarantine: Keeper
    #: Every finished message's rows in amavisd-new's log tables, or nothing (a single node).
    message_log: MessageLog
    #: Sends the DSN for bounced recipients and says what to answer.
    bounce: Bouncer
    #: Tells the postmaster (and warned recipients) about blocked mail.
    notices: Notifier
    #: Tells the sender about recipients the downstream refused while others took the message (a DSN).
    refusal_notice: RefusalNotice
    #: This process's share of max_servers, and the messages it took so far.
    slots: MessageSlots
    #: Verifies qsift-queue's X-Qsift-Client field; None: no field is believed.
    client_key: bytes | None
    #: Makes and checks the X-Qsift-Scanned mark; None: no mark ([mark] enabled = false).
    mark_key: bytes | None
    #: Signs originating mail with the keys of its From: domain; with no keys, nothing.
    signer: Signer
    #: Seals checked mail passed on for others, where the policy says so; None: nothing is sealed.
    sealer: ArcKey | None
    #: Named in X-Virus-Scanned.
    hostname: str
    dedupe_window: float
    clock: Callable[[], float]
    #: amavisd-new's message log, asked for pen pals; without `[store] url`, nobody is a pen pal.
    penpals: PenPalLog = field(default_factory=NoPenPals)
    #: Held while a large copy is signed or sealed: each is read whole into memory, the library copies
    #: it several times over, and a worker's messages in progress must not all do that at once.
    large_copies: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    #: Per-recipient settings and sender lists from SQL ([store] sql_lookups), or none.
    lookups: RecipientLookups = field(default_factory=NoLookups)

    @property
    def handled(self) -> int:
        """Messages handed to this pipeline so far (max_requests counts them)."""
        return self.slots.handled

    @property
    def full(self) -> bool:
        """Every one of this process's message slots is taken."""
        return self.slots.full

    async def handle(
        self, envelope: Envelope, spool: MessageSpool, client_gone: asyncio.Event | None = None
    ) -> Outcome:
        """Carry one message to a certain outcome; never raises for trouble downstream."""
        if not await self.slots.take():
            mail_id = new_mail_id()
            logger.warning(
                "id=%s %d messages in progress (max_servers): try later", mail_id, self.slots.max_in_progress
            )
            metrics.busy(envelope.listener)
            reply = Row.TOO_BUSY_IN_WORKER.reply(mail_id=mail_id)
            return Outcome(mail_id, reply, Disposition.TEMPFAILED)
        try:
            return await self._handle(envelope, spool, client_gone)
        finally:
            self.slots.give_back()

    async def close(self) -> None:
        """Close what the pipeline holds open: the forward's idle sessions, the outcome record, the message
        log, the quarantine, the scanners' sessions."""
        self.forwarder.close()
        await self.outcomes.close()
        await self.message_log.close()
        await self.lookups.close()
        self.quarantine.close()
        await self.checks.close()

    async def _handle(
        self, envelope: Envelope, spool: MessageSpool, client_gone: asyncio.Event | None
    ) -> Outcome:
        ids = new_mail_ids()
        mail_id = ids.mail_id
        head = header_section(spool.head(_HEAD))
        now = int(self.clock())
        fields = client_fields(envelope, head, self.client_key, now)
        body: MessageBody = edit_message(spool, [], "", fields.ranges) if fields.ranges else spool
        # The mark's body digest and the search for long lines ride on the same read as the dedupe
        # fingerprint; a long line costs more reads (act/long_lines.py).
        marking = mark.BodyDigest() if self.mark_key is not None else None
        long_lines = LongLineFinder()
        chunks = _feeding(body.chunks(), long_lines, marking)
        digest = await _off_the_loop_if_large(body.size, body_fingerprint, chunks)
        keys = {r.address: delivery_key(digest, envelope.sender, r.address) for r in envelope.recipients}
        already = await delivered_before(
            self.outcomes, mail_id, list(keys.values()), self.clock() - self.dedupe_window
        )
        if isinstance(already, Outcome):
            return already  # the shared record does not answer: try later
        owed = tuple(r for r in envelope.recipients if keys[r.address] not in already)
        if not owed:
            return _duplicate(mail_id, next(iter(already.values())))
        banks = self.policies.select(envelope.listener, fields.client)
        body_digest = marking.hexdigest() if marking is not None else None
        message = InFlight(
            mail_id,
            envelope,
            spool,
            body,
            fields,
            self.policies.policy(banks),
            body_digest,
            client_gone,
            digest,
            reading_digest=mark.reading_digest(head) if marking is not None else "",
            secret_id=ids.secret_id,
        )
        message = replace(message, scanned_before=self._scanned_here_before(message, head, now))
        if long_lines.found:
            message = await self._fitted(message)
        deliveries = Deliveries(
            keys,
            lambda settled, answer: record_delivery(self.outcomes, settled, mail_id, answer, self.clock()),
        )
        decisions: Sequence[Decision] = ()
        try:
            outcome, decisions = await self._judge(
                message, head, owed, len(envelope.recipients) - len(owed), deliveries
            )
        except Exception as exc:
            if not deliveries.accepted:
                raise  # nothing delivered: the dropped connection makes the client retry, as it should
            outcome = deliveries.answer_after_error(mail_id, owed, exc)
            logger.exception("id=%s internal error after the downstream accepted: %s", mail_id, exc)
        outcome = replace(outcome, client=fields.client if fields.vouched else None, banks=banks)
        # Delivered recipients are recorded already; what is left is the bounced and the discarded.
        settled = deliveries.not_recorded(
            [keys[r.recipient.address] for r in outcome.per_recipient if r.reply.answer is Answer.ACCEPT]
        )
        if settled and outcome.reply.answer is not Answer.REJECT:
            await record_delivery(self.outcomes, settled, mail_id, outcome.reply.smtp_line(), self.clock())
        if decisions:  # each recipient's fate is known: not a message held back before the checks decided
            await log_finished(self.message_log, logged_message(message, decisions, outcome, head, now))
        return outcome

    async def _fitted(self, message: InFlight) -> InFlight:
        """The plan for a message with a line over 998 octets. The mark goes on the message as it leaves, so
        its digests are made again over that (a re-encoded part has another Content-Transfer-Encoding)."""
        leaving = mark.BodyDigest() if message.body_digest is not None else None
        fit = await _off_the_loop_if_large(message.body.size, plan_fit, message.body, leaving)
        if leaving is None:
            return replace(message, fit=fit)
        reading = mark.reading_digest(header_section(FittedMessage(message.body, fit).head(_HEAD)))
        return replace(message, fit=fit, body_digest=leaving.hexdigest(), reading_digest=reading)

    def _scanned_here_before(self, message: InFlight, head: bytes, now: int) -> bool:
        """Whether the message carries this daemon's own valid mark and came from no SMTP client we
        know of. qmail-local's forward (qsift-queue run as the recipient's user, who reads no key) does
        not; mail that qsift-queue vouches an SMTP client sent, or that came with an MTA's XFORWARD, is
        a copy coming back from outside (or replayed), and is scanned again."""
        if message.body_digest is None or self.mark_key is None:
            return False
        client = message.client
        if (client.vouched and client.client.ip) or message.envelope.peer_address is not None:
            return False
        value = mark.find_value(head)
        return value is not None and mark.verify(
            self.mark_key, value, message.body_digest, message.reading_digest, now
        )

    async def _judge(
        self,
        message: InFlight,
        head: bytes,
        owed: tuple[Recipient, ...],
        already: int,
        deliveries: Deliveries,
    ) -> tuple[Outcome, Sequence[Decision]]:
        """The outcome, and each owed recipient's fate; no fates for a message held back before they
        were decided (a scanner failed, the quarantine could not keep it). `head` is the message's
        header section, as read once for the whole pipeline."""
        mail_id = message.mail_id
        policy = await looked_up(self.lookups, message, owed)
        if isinstance(policy, Outcome):
            return policy, ()
        message = replace(message, policy=policy)
        try:
            verdict, virus_scanned = await self._check(message, owed)
        except ScannerFailure as exc:
            logger.error("id=%s %s; the message is held back (try later)", mail_id, exc)
            reply = reply_for_error(exc, mail_id=mail_id)
            metrics.message_fate(Category.UNCHECKED.value, "tempfail", len(owed))
            return Outcome(mail_id, reply, Disposition.TEMPFAILED, category="UNCHECKED"), ()
        if verdict is None:
            passed = await self._pass_unchecked(message, owed, already, deliveries)
            return passed, unchecked(message, owed)
        message = replace(message, virus_scanned=virus_scanned, cut=verdict.auth.forged, auth=verdict.auth)
        penpals = await penpals_found(self.penpals, message, head, verdict, owed, self.clock())
        if isinstance(penpals, Outcome):
            return penpals, ()
        decisions = decide_recipients(verdict, message.policy, owed, message.spool.size, penpals)
        _log_listings(mail_id, message.envelope.sender, decisions)
        category = _log_category(decisions)
        blocked = [d for d in decisions if d.blocked]
        try:
            kept = await self.quarantine.keep_once(message, blocked)
        except SpoolError as exc:
            # Not delivered and not kept: the client must keep it (DESIGN.md: nothing is lost).
            logger.error("id=%s cannot quarantine: %s", mail_id, exc)
            reply = Row.QUARANTINE_FAILED.reply(mail_id=mail_id, error=exc)
            held = Outcome(mail_id, reply, Disposition.TEMPFAILED, category=category)
            _count_fates(held, _fates(decisions))
            return held, ()
        passing = [d for d in decisions if not d.blocked]
        forwarded = await self._forward(message, self._edited_groups(message, passing), already, deliveries)
        if forwarded is not None:
            forwarded = await self._after_forward(message, forwarded, category)
        delivered = already > 0 or (forwarded is not None and forwarded.disposition is Disposition.PASSED)
        outcomes, counts = await reject_bounce_or_discard(self.bounce, message, blocked, delivered, forwarded)
        outcome = combine(mail_id, forwarded, outcomes, counts)
        held_back = {
            r.recipient for o in outcomes for r in o.per_recipient if r.reply.answer is Answer.TEMPFAIL
        }
        # Recipients held back come again with the retry, and are told about then.
        await send_notices(self.notices, message, [d for d in blocked if d.recipient not in held_back], kept)
        _count_fates(outcome, _fates(decisions))
        said = verdict.auth.summary()
        notes = (
            *(f"auth: {said}",) * bool(said),
            *(penpal.note(address) for address, penpal in penpals.items()),
            *(f"quarantine: {kept}",) * bool(kept),
        )
        return replace(outcome, category=category, notes=(*outcome.notes, *notes)), decisions

    async def _check(self, message: InFlight, owed: tuple[Recipient, ...]) -> tuple[Verdict | None, bool]:
        """The verdict (None without content checks, or for mail this site scanned before), and whether a
        virus scanner took part."""
        if message.scanned_before:
            return None, False
        return await self.checks.verdict(message, owed)

    async def _pass_unchecked(
        self, message: InFlight, owed: tuple[Recipient, ...], already: int, deliveries: Deliveries
    ) -> Outcome:
        """Mail nothing was checked on goes to every recipient as it came (but for X-Qsift-Client)."""
        forwarded = await self._forward(message, {((), ""): list(owed)}, already, deliveries)
        assert forwarded is not None  # a message owed to nobody was answered as a duplicate
        outcome = await self._after_forward(message, forwarded, "CLEAN")
        if message.scanned_before:
            outcome = replace(outcome, notes=(*outcome.notes, f"scanned here before ({mark.FIELD})"))
        _count_fates(outcome, ((r, Category.CLEAN, Destiny.PASS) for r in owed))
        return outcome

    def _edited_groups(
        self, message: InFlight, passing: list[Decision]
    ) -> dict[tuple[tuple[str, ...], str], list[Recipient]]:
        """The passing recipients by the header fields and Subject tag their copy gets."""
        # One mark for the message, made once: a clock ticking over between recipients must not split
        # them into transactions.
        marked: tuple[str, ...] = ()
        if message.body_digest is not None and self.mark_key is not None:
            value = mark.make_value(
                self.mark_key, message.body_digest, message.reading_digest, int(self.clock())
            )
            marked = (f"{mark.FIELD}: {value}",)
        groups: dict[tuple[tuple[str, ...], str], list[Recipient]] = {}
        for decision in passing:
            fields, tag = self._edits(message, decision)
            mark_field = marked if _earns_mark(decision) else ()
            groups.setdefault((mark_field + fields, tag), []).append(decision.recipient)
        return groups

    async def _forward(
        self,
        message: InFlight,
        groups: Mapping[tuple[tuple[str, ...], str], Sequence[Recipient]],
        already: int,
        deliveries: Deliveries,
    ) -> Outcome | None:
        """Forward each group of recipients its own copy (these header fields, this Subject tag), one
        transaction each; None when no recipient passes."""
        if not groups:
            return None
        results = []
        for (fields, tag), recipients in groups.items():
            fitted = FittedMessage(
                edit_message(message.spool, list(fields), tag, message.client.ranges + message.cut),
                message.fit,
            )
            large = self.large_copies
            signed = await signed_copy(self.signer, message.policy, fitted, message.mail_id, large)
            body = await sealed_copy(
                self.sealer, message.policy, message.auth, signed, message.mail_id, large
            )
            envelope = _outgoing(message, tuple(recipients))
            started = time.monotonic()
            results.append(await self.forwarder.forward(envelope, body, message.client_gone, deliveries))
            metrics.stage_done("forward", started)
        merged = ForwardResult(
            results[0].method,
            tuple(r for result in results for r in result.per_recipient),
            ", ".join(dict.fromkeys(q for result in results if (q := result.queued_as))) or None,
        )
        return decide(message.mail_id, message.envelope, merged, already)

    def _edits(self, message: InFlight, decision: Decision) -> tuple[tuple[str, ...], str]:
        settings = decision.settings
        fields = header_fields(
            decision.view,
            settings.levels,
            self.hostname,
            virus_scanned=message.virus_scanned,
            local=settings.local,
        )
        return tuple(fields), subject_tag(decision.view, local=settings.local)

    async def _after_forward(self, message: InFlight, outcome: Outcome, category: str) -> Outcome:
        outcome = replace(outcome, category=category)
        refused = [r for r in outcome.per_recipient if r.reply.answer is Answer.REJECT]
        if refused and outcome.reply.answer is Answer.ACCEPT:
            # K was earned by the others; the refused ones would otherwise vanish without a word.
            outcome = await self.refusal_notice(outcome, message.envelope, refused, message.body)
        return outcome


def _outgoing(message: InFlight, recipients: tuple[Recipient, ...]) -> Envelope:
    """The envelope as it goes downstream, to these recipients, naming the client qsift-queue vouched for
    (a QMQP peer is only qmail-smtpd's host), so XFORWARD tells the next MTA the real one, and our
    mail_id, which Postfix logs as orig_queue_id: one grep follows the message across both logs."""
    envelope = replace(message.envelope, recipients=recipients, ident=message.mail_id)
    vouched = message.client
    if vouched.vouched:
        client = vouched.client
        envelope = replace(envelope, client_address=client.ip or None, client_name=client.host or None)
    return envelope


def _log_listings(mail_id: str, sender: str, decisions: Iterable[Decision]) -> None:
    """amavisd-new's `wbl:` lines: which recipients white- or blacklist the sender, or soft-list it."""
    for decision in decisions:
        listing = decision.settings.listing
        said = "whitelisted" if listing.whitelisted else "blacklisted" if listing.blacklisted else ""
        if listing.score_boost:
            said = f"{said} score {listing.score_boost:+g}".strip()
        if said:
            address = decision.recipient.address
            logger.info("id=%s wbl: sender <%s> %s by <%s>", mail_id, sender, said, address)


def _fates(decisions: Iterable[Decision]) -> Iterator[tuple[Recipient, Category, Destiny]]:
    return ((d.recipient, d.view.category, d.destiny) for d in decisions)


def _count_fates(outcome: Outcome, fates: Iterable[tuple[Recipient, Category, Destiny]]) -> None:
    """Count each group of recipients that shared a category and a fate, for the metrics."""
    if not metrics.enabled():
        return
    answers = {r.recipient: r.reply.answer for r in outcome.per_recipient}
    groups = Counter(
        (category.value, _fate(destiny, answers.get(recipient, outcome.reply.answer)))
        for recipient, category, destiny in fates
    )
    for (category, fate), recipients in groups.items():
        metrics.message_fate(category, fate, recipients)


def _fate(destiny: Destiny, answer: Answer) -> str:
    """What became of a recipient: its destiny, unless its own answer says it was held back or refused."""
    if answer is Answer.TEMPFAIL:
        return "tempfail"
    if answer is Answer.REJECT:
        return "reject"
    # A rejection among delivered recipients can only be told by a DSN (blocked.reject_bounce_or_discard).
    return Destiny.BOUNCE.value if destiny is Destiny.REJECT else destiny.value


def _log_category(decisions: list[Decision]) -> str:
    """The summary line's category: the most severe any recipient saw (amavisd-new's main ccat)."""
    worst = min(decisions, key=lambda d: d.view.category.rank)
    return worst.view.log_text()


class _Reader(Protocol):
    def update(self, chunk: bytes) -> None: ...


#: What a copy may hold and still be marked: what passes for everyone under amavisd-new's defaults.
_MARKABLE = frozenset({Category.CLEAN, Category.SPAMMY, Category.BAD_HEADER})


def _earns_mark(decision: Decision) -> bool:
    """Whether this recipient's copy may carry the mark, so that its forwards pass unscanned: only when
    nothing in it was let through for this recipient or this bank alone. A lover's pass (a virus to a
    virus lover), a check the recipient bypasses, or a bank that passes banned files is a choice for this
    delivery, not for whoever it is forwarded to; such a copy is scanned again when it comes back."""
    categories = set(decision.view.categories)
    settings = decision.settings
    return not settings.bypasses and not categories & settings.loves and categories <= _MARKABLE


def _feeding(chunks: Iterator[bytes], *readers: _Reader | None) -> Iterator[bytes]:
    present = [reader for reader in readers if reader is not None]
    for chunk in chunks:
        for reader in present:
            reader.update(chunk)
        yield chunk


async def _off_the_loop_if_large(
    size: int, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run a pass over a message: on the event loop up to _HASH_INLINE bytes, in a thread above."""
    if size <= _HASH_INLINE:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


def _duplicate(mail_id: str, record: OutcomeRecord) -> Outcome:
    reply = Row.DUPLICATE.reply(mail_id=mail_id, earlier=record.mail_id)
    return Outcome(mail_id, reply, Disposition.DUPLICATE)


__all__ = ["EditedMessage", "Pipeline", "decide", "new_mail_id"]
