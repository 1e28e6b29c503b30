"""Headers on passed mail: what the checks found, for the recipients' filters; the rest left as it came.

amavisd-new's fields, so that sieve rules and mail clients written for it keep working: X-Virus-Scanned;
X-Spam-Flag, X-Spam-Score, X-Spam-Level, X-Spam-Status from `tag_level` on (X-Spam-Flag: YES from
`tag2_level`); the subject tag `***Spam*** ` on spammy and spam mail; `***UNCHECKED*** ` and an
X-Qsift-Alert field on unchecked mail, saying why. New fields go on top of the header section; the only
existing line ever changed is the Subject, by inserting the tag. Every other byte of the message is passed
on as it came: `EditedMessage` streams the original spool behind the new head.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from qsift.checks.content import Verdict
from qsift.checks.spam_levels import SpamLevels
from qsift.model import Category
from qsift.spool import DEFAULT_CHUNK, MessageSpool

SPAM_TAG = "***Spam*** "
UNCHECKED_TAG = "***UNCHECKED*** "
#: How much of the message is searched for the Subject field; a header larger than this keeps its Subject.
_HEAD_LIMIT = 256 * 1024
_SUBJECT = re.compile(rb"^subject:[ \t]?", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_fields(verdict: Verdict, levels: SpamLevels, hostname: str, *, virus_scanned: bool) -> list[str]:
    """The fields to add for this verdict, as "Name: value" strings (one line each)."""
    fields = [f"X-Virus-Scanned: qsift at {_clean(hostname)}"] if virus_scanned else []
    spam = verdict.spam
    if spam is not None and spam.score is not None and spam.score >= levels.tag_level:
        score = spam.score
        flagged = score >= levels.tag2_level
        tests = ",".join(_clean(rule) for rule in spam.rules[:50]) or "none"
        fields += [
            f"X-Spam-Flag: {'YES' if flagged else 'NO'}",
            f"X-Spam-Score: {score:.3f}",
            f"X-Spam-Level: {'*' * max(0, min(64, int(score)))}",
            f"X-Spam-Status: {'Yes' if flagged else 'No'}, score={score:.3f} "
            f"tagged_above={levels.tag_level:g} required={levels.tag2_level:g} tests=[{tests}]",
        ]
    unchecked = [f for f in verdict.findings if f.category is Category.UNCHECKED]
    if unchecked:
        fields.append(f"X-Qsift-Alert: UNCHECKED, {_clean(unchecked[0].detail)[:300]}")
    return fields


def subject_tag(verdict: Verdict) -> str:
    if verdict.category in (Category.SPAM, Category.SPAMMY):
        return SPAM_TAG
    if verdict.category is Category.UNCHECKED:
        return UNCHECKED_TAG
    return ""


def _clean(text: str) -> str:
    return "".join(ch if " " <= ch < "\x7f" else "?" for ch in text)


@dataclass
class EditedMessage:
    """A spool with new fields on top and, maybe, a tagged Subject: what the forward methods read."""

    spool: MessageSpool
    head: bytes
    #: Where in the spool the original bytes resume after `head`.
    resume_at: int

    @property
    def size(self) -> int:
        return len(self.head) + self.spool.size - self.resume_at

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        if self.head:
            yield self.head
        skipped = 0
        for chunk in self.spool.chunks(chunk_size):
            if skipped < self.resume_at:
                take = min(len(chunk), self.resume_at - skipped)
                skipped += take
                chunk = chunk[take:]
            if chunk:
                yield chunk


def edit_message(spool: MessageSpool, fields: list[str], tag: str) -> EditedMessage:
    """Prepend `fields` and put `tag` in front of the Subject (adding one if there is none)."""
    original = spool.head(_HEAD_LIMIT)
    newline = b"\r\n" if b"\r\n" in original[:4096] else b"\n"
    head = b"".join(f.encode("ascii", "replace") + newline for f in fields)
    if not tag:
        return EditedMessage(spool, head, 0)
    end = _HEADER_END.search(original)
    section_end = end.start() if end else len(original)
    subject = _SUBJECT.search(original, 0, section_end)
    if subject is None:
        head += b"Subject: " + tag.strip().encode() + newline
        return EditedMessage(spool, head, 0)
    # Everything up to the Subject's value is copied, the tag inserted, and the spool resumes there.
    return EditedMessage(spool, head + original[: subject.end()] + tag.encode(), subject.end())
