"""What the authentication checks' results mean for a message: the finding DMARC makes of it, and the SMTP
client the checks judge. Apart from the checks themselves (authentication.py), which load dnspython,
dkimpy and OpenSSL, so that the decisions that read their results do not.

A failure of `p=reject` is the `dmarc` category (its destiny rejects by default, as the large mailbox
providers do); a failure of `p=quarantine` is tagged spammy (X-Spam-Flag: YES and the Subject tag) and
passes, which is what "quarantine" means at a receiver that files mail for its users: their spam folder.
A quarantined copy of every such message would fill the quarantine with mail that was delivered anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsift.auth.results import AuthResults
from qsift.model import Category, Finding

#: A Finding's minor code for a spammy finding made by DMARC (the spam scanner's have 0).
DMARC_QUARANTINE = 1


@dataclass(frozen=True)
class Client:
    """What SPF needs of the SMTP client: its address ("" unknown: no SPF) and HELO name."""

    ip: str
    helo: str
    mail_from: str


def findings(results: AuthResults) -> tuple[Finding, ...]:
    """What the DMARC verdict makes of the message."""
    verdict = results.verdict
    said = results.summary()
    if verdict.disposition == "reject":
        return (Finding(Category.DMARC, 0, f"{verdict.domain} p=reject ({said})"),)
    if verdict.disposition == "quarantine":
        return (
            Finding(Category.SPAMMY, DMARC_QUARANTINE, f"DMARC p=quarantine of {verdict.domain} ({said})"),
        )
    return ()
