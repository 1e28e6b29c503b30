"""Notices about blocked mail: to the postmaster (`virus_admin`, `banned_admin`, `spam_admin`,
`bad_header_admin`) and, where the policy says so, to the local recipients who did not get it
(amavisd-new's `$warnvirusrecip`, `$warnbannedrecip`, `$warnbadhrecip`).

One template per kind, plain text with `$name` placeholders (string.Template), the first lines being the
header. Built-in defaults live here; a site puts its own `<kind>.txt` (`virus_admin.txt`,
`virus_recip.txt`, ...) in `[notify] templates` to change them. The facts are amavisd-new's: category,
details (virus names, the banned part, the spam score), sender, recipients, client IP, mail_id, quarantine
file. A notice that cannot be sent is logged and never changes the answer: the message itself is dealt
with. Notices go from the null sender, so they can never bounce back and forth.
"""

from __future__ import annotations

import email.utils
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass

from qsift.act.forward import Forwarder
from qsift.checks.content import Verdict
from qsift.model import Answer, Category, Envelope, Recipient, single_line
from qsift.observe.log import logger
from qsift.spool import MessageSpool

ADMIN_KINDS = {
    Category.VIRUS: "virus_admin",
    Category.BANNED: "banned_admin",
    Category.SPAM: "spam_admin",
    Category.BAD_HEADER: "bad_header_admin",
}
RECIPIENT_KINDS = {
    Category.VIRUS: "virus_recip",
    Category.BANNED: "banned_recip",
    Category.BAD_HEADER: "bad_header_recip",
}

_ADMIN = """From: qsift content filter <postmaster@$hostname>
To: $to
Subject: $category_word from <$sender> (id=$mail_id)
Date: $date
Message-ID: $message_id
Auto-Submitted: auto-generated
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

A message was blocked ($destiny).

Category:      $category_word
Details:       $details
Sender:        <$sender>
Recipients:    $recipients
Client:        [$client]
Mail id:       $mail_id
Quarantine:    $quarantine
"""

_RECIPIENT = """From: qsift content filter <postmaster@$hostname>
To: undisclosed-recipients:;
Subject: $category_word message for you from <$sender> was blocked (id=$mail_id)
Date: $date
Message-ID: $message_id
Auto-Submitted: auto-generated
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

A message addressed to you was not delivered: it was found to be $category_word.

Details:       $details
Sender:        <$sender>
Mail id:       $mail_id
Quarantine:    $quarantine

If you expected this message, ask your postmaster to release it, quoting the mail id.
"""

DEFAULT_TEMPLATES = {
    **dict.fromkeys(ADMIN_KINDS.values(), _ADMIN),
    **dict.fromkeys(RECIPIENT_KINDS.values(), _RECIPIENT),
}


@dataclass
class Notices:
    notifier: Forwarder
    hostname: str
    templates_dir: str = ""

    async def admin(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str, admin: str
    ) -> None:
        """Tell `admin` about a message blocked for `verdict.category` (nothing for a kind without one)."""
        kind = ADMIN_KINDS.get(verdict.category)
        if kind is not None and admin:
            await self._send(kind, [admin], verdict, mail_id, envelope, destiny, quarantine)

    async def recipients(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, quarantine: str, warned: Sequence[str]
    ) -> None:
        """Tell the recipients in `warned` that a message to them was blocked (one notice, Bcc-style)."""
        kind = RECIPIENT_KINDS.get(verdict.category)
        if kind is not None and warned:
            await self._send(kind, warned, verdict, mail_id, envelope, "", quarantine)

    async def _send(
        self,
        kind: str,
        to: Sequence[str],
        verdict: Verdict,
        mail_id: str,
        envelope: Envelope,
        destiny: str,
        quarantine: str,
    ) -> None:
        facts = self._facts(verdict, mail_id, envelope, destiny, quarantine, kind, ", ".join(to))
        try:
            text = string.Template(self._template(kind)).safe_substitute(facts)
        except (ValueError, OSError) as exc:
            logger.error("id=%s %s template: %s", mail_id, kind, exc)
            return
        message = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
        notice = Envelope("", tuple(Recipient(address) for address in to), protocol="ESMTP")
        with MessageSpool.from_bytes(message) as spool:
            result = await self.notifier.forward(notice, spool)
        for refused in (r for r in result.per_recipient if r.reply.answer is not Answer.ACCEPT):
            logger.error(
                "id=%s %s notice to <%s> not sent: %s",
                mail_id,
                kind,
                refused.recipient.address,
                refused.reply.text,
            )

    def _template(self, kind: str) -> str:
        if self.templates_dir:
            path = os.path.join(self.templates_dir, f"{kind}.txt")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as stream:
                    return stream.read()
        return DEFAULT_TEMPLATES[kind]

    def _facts(
        self,
        verdict: Verdict,
        mail_id: str,
        envelope: Envelope,
        destiny: str,
        quarantine: str,
        kind: str,
        to: str,
    ) -> dict[str, str]:
        details = "; ".join(f.detail for f in verdict.findings if f.category is verdict.category)
        return {
            name: single_line(value)
            for name, value in {
                "hostname": self.hostname,
                "to": to,
                "admin": to,
                "kind": kind,
                "category": verdict.category.value,
                "category_word": verdict.category.log_word,
                "details": details or "-",
                "sender": envelope.sender,
                "recipients": ", ".join(f"<{a}>" for a in envelope.addresses),
                "client": envelope.client_address or "-",
                "mail_id": mail_id,
                "quarantine": quarantine or "not kept",
                "destiny": destiny,
                "date": email.utils.formatdate(localtime=True),
                "message_id": email.utils.make_msgid(idstring=f"{mail_id}.{kind}", domain=self.hostname),
            }.items()
        }
