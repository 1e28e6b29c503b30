"""Message ids made as amavisd-new makes them, so its release tools accept ours.

A message gets a random secret and a mail_id derived from it: the mail_id names the message in logs,
answers and the quarantine, and whoever holds the secret_id (the quarantine's `msgs.secret_id`, which
the web front ends read) may release it over AM.PDP. The release check recomputes the mail_id from the
secret (amavisd-new's Util.pm generate_mail_id and In/AMPDP.pm; reference amavisd-sql.md §3.3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

#: 72 random bits, amavisd-new's $mail_id_size_bits: 12 base64url characters each.
_SECRET_BYTES = 9
_MAIL_ID_CHARS = 12


@dataclass(frozen=True)
class MailIds:
    mail_id: str
    #: Authorizes a release of mail_id; never written to a log or an answer.
    secret_id: str


def _mail_id_of(secret: bytes) -> str:
    digest = hashlib.md5(secret, usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:_MAIL_ID_CHARS]


def _plain(char: str) -> bool:
    return char.isascii() and char.isalnum()


def new_mail_ids() -> MailIds:
    """A fresh secret and its mail_id. As amavisd-new, drawn again until the mail_id starts and ends with
    a letter or digit: never "-" first, so `qsift release MAIL_ID` cannot take one for an option."""
    while True:
        secret = secrets.token_bytes(_SECRET_BYTES)
        mail_id = _mail_id_of(secret)
        if _plain(mail_id[0]) and _plain(mail_id[-1]):
            return MailIds(mail_id, base64.urlsafe_b64encode(secret).decode("ascii"))


def secret_matches(mail_id: str, secret_id: str) -> bool:
    """Whether secret_id is the secret mail_id was made from (amavisd-new's base64url form; its pre-2.7
    form, with "+", is refused: qsift never made one)."""
    if len(secret_id) != 12 or not secret_id.isascii() or "+" in secret_id:
        return False
    try:
        secret = base64.urlsafe_b64decode(secret_id.encode("ascii"))
    except (binascii.Error, ValueError):
        return False
    return secrets.compare_digest(_mail_id_of(secret), mail_id[:_MAIL_ID_CHARS])


__all__ = ["MailIds", "new_mail_ids", "secret_matches"]
