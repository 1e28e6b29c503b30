"""The bounce destiny: a delivery status notification to the sender, unless that would be backscatter.

amavisd-new's D_BOUNCE: the message is not delivered, the client is answered 250 (the filter took
responsibility), and the sender gets an RFC 3464 DSN with the original header (never the body: it may
be the virus). The DSN is suppressed, and the message simply discarded, where it would only reach an
innocent third party or a machine: a null sender, a virus known to fake its sender (by default every
virus, as modern amavisd-new assumes; the HOWTO's list is an example to extend), spam scored at or above
`dsn_cutoff_level`, and mail from lists (Precedence bulk/list/junk, List-Id).

If the DSN cannot be handed to the notify method (the downstream tempfails), the answer is "try later":
the client keeps the message and nothing is lost; the retry bounces it again.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, replace

from qsift.act.forward import Forwarder
from qsift.answers import Row
from qsift.checks.content import Verdict
from qsift.checks.headers import header_section
from qsift.model import Answer, Category, Disposition, Envelope, Outcome, Recipient, RecipientResult
from qsift.observe import metrics
from qsift.observe.log import logger
from qsift.spool import MessageBody, MessageSpool
from qsift.wire.dsn import DsnRequest, FailedRecipient, build_dsn

_HEAD = 256 * 1024
_LIST_PRECEDENCE = frozenset({"bulk", "list", "junk"})


@dataclass
class DsnBouncer:
    notifier: Forwarder
    hostname: str
    #: Virus names that fake their sender: no DSN for them.
    viruses_that_fake_sender: re.Pattern[str]

    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, spool: MessageBody, dsn_cutoff: float
    ) -> Outcome:
        """Bounce the message for the recipients in `envelope`; no DSN for spam scored at or above
        `dsn_cutoff` (the recipients' `dsn_cutoff_level`)."""
        category = verdict.log_text()
        head = header_section(spool.head(_HEAD))
        suppressed = self._suppressed(verdict, envelope, head, dsn_cutoff)
        if suppressed:
            logger.info("id=%s bounce without DSN: %s", mail_id, suppressed)
            metrics.dsn("suppressed")
            reply = Row.BOUNCE_SUPPRESSED.reply(mail_id=mail_id, reason=suppressed)
            return Outcome(mail_id, reply, Disposition.BLOCKED, category=category)
        try:
            dsn = build_dsn(self._request(verdict, mail_id, envelope, head))
        except ValueError as exc:  # a sender no DSN can be addressed to: as suppressed, never a crash
            logger.warning("id=%s no DSN possible: %s", mail_id, exc)
            metrics.dsn("suppressed")
            reply = Row.BOUNCE_SUPPRESSED.reply(mail_id=mail_id, reason=exc)
            return Outcome(mail_id, reply, Disposition.BLOCKED, category=category)
        notice = Envelope("", (Recipient(envelope.sender),), protocol="ESMTP")
        with MessageSpool.from_bytes(dsn) as dsn_spool:
            result = await self.notifier.forward(notice, dsn_spool)
        answers = {r.reply.answer for r in result.per_recipient}
        if Answer.TEMPFAIL in answers:
            reply = Row.DSN_FAILED.reply(mail_id=mail_id, text=result.per_recipient[0].reply.text)
            metrics.dsn("failed")
            return Outcome(mail_id, reply, Disposition.TEMPFAILED, category=category)
        if Answer.REJECT in answers:
            # The sender's own MTA refuses its notice: nothing more can be done; the message stays blocked.
            logger.error(
                "id=%s DSN to <%s> refused: %s", mail_id, envelope.sender, result.per_recipient[0].reply.text
            )
        metrics.dsn("sent")
        reply = Row.BOUNCED.reply(mail_id=mail_id)
        return Outcome(mail_id, reply, Disposition.BLOCKED, category=category, queued_as=result.queued_as)

    async def refused(
        self, outcome: Outcome, envelope: Envelope, refused: list[RecipientResult], spool: MessageBody
    ) -> Outcome:
        """A DSN for the recipients the downstream refused while others were delivered (amavisd-new's
        "but 1 REJECT" with its "Delivery status notification"); if it cannot be sent, try later: the
        delivered recipients are recorded, so the retry goes only to the refused ones."""
        mail_id = outcome.mail_id
        head = header_section(spool.head(_HEAD))
        suppressed = self._suppressed_for_refusal(envelope, head)
        if suppressed:
            logger.info("id=%s no DSN for the refused recipients: %s", mail_id, suppressed)
            metrics.dsn("suppressed")
            return outcome
        failed = tuple(
            FailedRecipient(
                r.recipient.address,
                r.reply.enhanced_status if r.reply.enhanced_status.startswith("5") else "5.0.0",
                f"{r.reply.smtp_code} {r.reply.enhanced_status} {r.reply.text}",
                original_recipient=dict(r.recipient.params).get("ORCPT"),
            )
            for r in refused
        )
        request = DsnRequest(
            reporting_mta=self.hostname,
            sender=envelope.sender,
            from_address=f"MAILER-DAEMON@{self.hostname}",
            mail_id=mail_id,
            category_text="Undeliverable mail",
            reason="refused by the next mail server",
            recipients=failed,
            original_headers=head,
            envelope_id=dict(envelope.mail_params).get("ENVID"),
            arrival_date=email.utils.formatdate(localtime=True),
            message_id=email.utils.make_msgid(idstring=f"{mail_id}.r", domain=self.hostname),
        )
        try:
            dsn = build_dsn(request)
        except ValueError as exc:
            logger.warning("id=%s no DSN possible for the refused recipients: %s", mail_id, exc)
            metrics.dsn("suppressed")
            return outcome
        notice = Envelope("", (Recipient(envelope.sender),), protocol="ESMTP")
        with MessageSpool.from_bytes(dsn) as dsn_spool:
            result = await self.notifier.forward(notice, dsn_spool)
        if any(r.reply.answer is Answer.TEMPFAIL for r in result.per_recipient):
            reply = Row.REFUSAL_DSN_FAILED.reply(mail_id=mail_id, count=len(refused))
            metrics.dsn("failed")
            return replace(outcome, reply=reply, disposition=Disposition.TEMPFAILED)
        metrics.dsn("sent")
        return replace(outcome, notes=(*outcome.notes, f"DSN sent for {len(refused)} refused recipient(s)"))

    def _suppressed_for_refusal(self, envelope: Envelope, head: bytes) -> str:
        if not envelope.sender:
            return "null sender"
        return "mail from a list" if _from_list(head) else ""

    def _suppressed(self, verdict: Verdict, envelope: Envelope, head: bytes, dsn_cutoff: float) -> str:
        if not envelope.sender:
            return "null sender"
        if verdict.category is Category.VIRUS:
            names = verdict.lead.detail if verdict.lead is not None else ""
            if self.viruses_that_fake_sender.search(names):
                return "virus that fakes its sender"
        score = verdict.spam.score if verdict.spam is not None else None
        if verdict.category is Category.SPAM and score is not None and score >= dsn_cutoff:
            return f"spam score {score:.1f} at or above the DSN cutoff"
        return "mail from a list" if _from_list(head) else ""

    def _request(self, verdict: Verdict, mail_id: str, envelope: Envelope, head: bytes) -> DsnRequest:
        diagnostic = f"554 5.7.0 Reject, id={mail_id} - {verdict.reason()}"
        # The subject reads "BANNED contents from you (.exe-ms,invoice.pdf.exe ...)", as amavisd-new's does.
        reason = verdict.lead.detail if verdict.lead is not None else ""
        return DsnRequest(
            reporting_mta=self.hostname,
            sender=envelope.sender,
            from_address=f"MAILER-DAEMON@{self.hostname}",
            mail_id=mail_id,
            category_text=_CATEGORY_WORDS.get(verdict.category, verdict.category.log_word),
            reason=reason,
            recipients=tuple(_failed(r, diagnostic) for r in envelope.recipients),
            original_headers=head,
            envelope_id=dict(envelope.mail_params).get("ENVID"),
            arrival_date=email.utils.formatdate(localtime=True),
            message_id=email.utils.make_msgid(idstring=mail_id, domain=self.hostname),
        )


def _from_list(head: bytes) -> bool:
    header = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    precedence = str(header.get("Precedence", "")).strip().lower()
    return precedence in _LIST_PRECEDENCE or header.get("List-Id") is not None


_CATEGORY_WORDS = {
    Category.VIRUS: "VIRUS",
    Category.BANNED: "BANNED contents",
    Category.DMARC: "DMARC failure",
    Category.SPAM: "SPAM",
    Category.UNCHECKED: "UNCHECKED contents",
    Category.BAD_HEADER: "BAD HEADER",
    Category.OVERSIZED: "OVERSIZED message",
}


def _failed(recipient: Recipient, diagnostic: str) -> FailedRecipient:
    original = dict(recipient.params).get("ORCPT")
    return FailedRecipient(recipient.address, "5.7.0", diagnostic, original_recipient=original)
