"""Notices to the postmaster about blocked mail: `virus_admin`, `banned_admin`, `spam_admin` (amavisd-new's).

One template per kind, plain text with `$name` placeholders (string.Template), the first lines being the
header. Built-in defaults live here; a site puts its own `virus_admin.txt`, `banned_admin.txt`,
`spam_admin.txt` in `[notify] templates` to change them. The facts are amavisd-new's: category, details
(virus names, the banned part, the spam score), sender, recipients, client IP, mail_id, quarantine file.
A notice that cannot be sent is logged and never changes the answer: the message itself is dealt with.
"""

from __future__ import annotations

import email.utils
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass

from qsift.act.forward import Forwarder
from qsift.checks.content import Verdict
from qsift.model import Answer, Category, Envelope, Recipient, single_line
from qsift.observe.log import logger
from qsift.spool import MessageSpool

KINDS = {Category.VIRUS: "virus_admin", Category.BANNED: "banned_admin", Category.SPAM: "spam_admin"}

_DEFAULT = """From: qsift content filter <postmaster@$hostname>
To: $admin
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

DEFAULT_TEMPLATES = {"virus_admin": _DEFAULT, "banned_admin": _DEFAULT, "spam_admin": _DEFAULT}


@dataclass
class AdminNotifier:
    notifier: Forwarder
    hostname: str
    #: Kind ("virus_admin", ...) to the address notices go to; a kind not here sends nothing.
    admins: Mapping[str, str]
    templates_dir: str = ""

    async def __call__(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str
    ) -> None:
        kind = KINDS.get(verdict.category)
        admin = self.admins.get(kind or "")
        if kind is None or not admin:
            return
        facts = self._facts(verdict, mail_id, envelope, destiny, quarantine, admin)
        try:
            text = string.Template(self._template(kind)).safe_substitute(facts)
        except (ValueError, OSError) as exc:
            logger.error("id=%s %s template: %s", mail_id, kind, exc)
            return
        message = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
        notice = Envelope("", (Recipient(admin),), protocol="ESMTP")
        with MessageSpool.from_bytes(message) as spool:
            result = await self.notifier.forward(notice, spool)
        if not all(r.reply.answer is Answer.ACCEPT for r in result.per_recipient):
            why = result.per_recipient[0].reply.text
            logger.error("id=%s %s notice to <%s> not sent: %s", mail_id, kind, admin, why)

    def _template(self, kind: str) -> str:
        if self.templates_dir:
            path = os.path.join(self.templates_dir, f"{kind}.txt")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as stream:
                    return stream.read()
        return DEFAULT_TEMPLATES[kind]

    def _facts(
        self, verdict: Verdict, mail_id: str, envelope: Envelope, destiny: str, quarantine: str, admin: str
    ) -> dict[str, str]:
        details = "; ".join(f.detail for f in verdict.findings if f.category is verdict.category)
        return {
            name: single_line(value)
            for name, value in {
                "hostname": self.hostname,
                "admin": admin,
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
                "message_id": email.utils.make_msgid(idstring=f"{mail_id}.admin", domain=self.hostname),
            }.items()
        }
