"""Headers on passed mail: what the checks found, for the recipients' filters; the rest left as it came.

amavisd-new's fields, so that sieve rules and mail clients written for it keep working: X-Virus-Scanned;
X-Spam-Flag, X-Spam-Score, X-Spam-Level, X-Spam-Status from `tag_level` on (X-Spam-Flag: YES from
`tag2_level`), for local recipients only; the subject tag `***Spam*** ` on spammy and spam mail;
`***UNCHECKED*** ` and an X-Qsift-Alert field on unchecked mail, saying why, and the like on a virus, a
banned file or a bad header that a recipient loves (accepts). New fields go on top of the header section;
the only existing line ever changed is the Subject, by inserting the tag, and the only ones removed are
the pipeline's own (the X-Qsift-Client field qsift-queue adds). Every other byte of the message is passed
on as it came: `EditedMessage` streams the original spool behind the new head (and the forward then reads
it through act/long_lines.py, which changes only lines over 998 octets).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from qsift.checks.auth_verdict import DMARC_QUARANTINE
from qsift.checks.content import Verdict
from qsift.checks.spam_levels import SpamLevels
from qsift.model import Category
from qsift.spool import DEFAULT_CHUNK, MessageSpool, head_of_chunks

SPAM_TAG = "***Spam*** "
UNCHECKED_TAG = "***UNCHECKED*** "
INFECTED_TAG = "***INFECTED*** "
BANNED_TAG = "***BANNED*** "
#: How much of the message is searched for the Subject field; a header larger than this keeps its Subject.
_HEAD_LIMIT = 256 * 1024
# A bare CR is a line end too: the forward sends it as CRLF, and the decoder reads it as one.
_LINE_END = rb"(?:\r\n|\n|\r(?!\n))"
_SUBJECT = re.compile(rb"(?:\A|(?<=[\r\n]))subject:[ \t]?", re.IGNORECASE)
_HEADER_END = re.compile(_LINE_END + _LINE_END)


def header_fields(
    verdict: Verdict, levels: SpamLevels, hostname: str, *, virus_scanned: bool, local: bool = True
) -> list[str]:
    """The fields to add for this verdict, as "Name: value" strings (one line each). The X-Spam fields
    go only to local recipients, as amavisd-new's do: a remote site judges spam by its own levels."""
    fields = [f"X-Virus-Scanned: qsift at {_clean(hostname)}"] if virus_scanned else []
    auth = verdict.auth
    if auth.all:
        # On top, above qsift's other fields (RFC 8601 §5: the receiver's own field comes first).
        from qsift.auth.headers import render_authentication_results  # authres, for checked mail only

        rendered = render_authentication_results(auth.authserv_id, auth.all, linesep=b"\n")
        fields.insert(0, rendered.decode("ascii").removesuffix("\n"))
    spam = verdict.spam
    if local and spam is not None and spam.score is not None and spam.score >= levels.tag_level:
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
    flagged_by_dmarc = any(
        f.category is Category.SPAMMY and f.minor == DMARC_QUARANTINE for f in verdict.findings
    )
    if local and flagged_by_dmarc and not any(field.startswith("X-Spam-Flag:") for field in fields):
        fields.append("X-Spam-Flag: YES")  # the From: domain asks for its spam folder (DMARC p=quarantine)
    for category, words in _ALERTS.items():
        found = [f for f in verdict.findings if f.category is category]
        if found:
            fields.append(f"X-Qsift-Alert: {words}{_clean(found[0].detail)[:300]}")
    return fields


#: What a recipient who loves (or bypasses nothing but accepts) a blocked category is told it got.
_ALERTS = {
    Category.VIRUS: "INFECTED, message contains virus: ",
    Category.BANNED: "BANNED, message contains ",
    Category.DMARC: "DMARC FAIL, ",
    Category.UNCHECKED: "UNCHECKED, ",
    Category.BAD_HEADER: "BAD HEADER SECTION, ",
}
_TAGS = {
    Category.VIRUS: INFECTED_TAG,
    Category.BANNED: BANNED_TAG,
    Category.UNCHECKED: UNCHECKED_TAG,
    Category.SPAM: SPAM_TAG,
    Category.SPAMMY: SPAM_TAG,
}


def subject_tag(verdict: Verdict, *, local: bool = True) -> str:
    """The Subject tag for passed mail of this category, for local recipients only (amavisd-new's)."""
    return _TAGS.get(verdict.category, "") if local else ""


def _clean(text: str) -> str:
    return "".join(ch if " " <= ch < "\x7f" else "?" for ch in text)


@dataclass
class EditedMessage:
    """A spool with new fields on top and, maybe, a tagged Subject: what the forward methods read."""

    spool: MessageSpool
    prefix: bytes
    #: Where in the spool the original bytes resume after `prefix`.
    resume_at: int

    @property
    def size(self) -> int:
        return len(self.prefix) + self.spool.size - self.resume_at

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        skipped = 0
        for chunk in self.spool.chunks(chunk_size):
            if skipped < self.resume_at:
                take = min(len(chunk), self.resume_at - skipped)
                skipped += take
                chunk = chunk[take:]
            if chunk:
                yield chunk

    def head(self, limit: int) -> bytes:
        """The first `limit` bytes of the edited message."""
        return head_of_chunks(self.chunks(), limit)


def edit_message(
    spool: MessageSpool, fields: list[str], tag: str, remove: Sequence[tuple[int, int]] = ()
) -> EditedMessage:
    """Prepend `fields`, put `tag` in front of the Subject (adding one if there is none), and cut out
    the header fields at the byte ranges in `remove` (within the first 256 KiB)."""
    original = spool.head(_HEAD_LIMIT)
    newline = b"\r\n" if b"\r\n" in original[:4096] else b"\n"
    # A folded field (Authentication-Results) comes with LF between its lines: the message's own line end.
    head = b"".join(f.encode("ascii", "replace").replace(b"\n", newline) + newline for f in fields)
    edits = sorted((start, end, b"") for start, end in remove if 0 <= start < end <= len(original))
    if tag:
        blank = _HEADER_END.search(original)
        section_end = blank.start() if blank else len(original)
        subject = _SUBJECT.search(original, 0, section_end)
        if subject is None:
            head += b"Subject: " + tag.strip().encode() + newline
        else:
            edits = sorted([*edits, (subject.end(), subject.end(), tag.encode())])
    if not edits:
        return EditedMessage(spool, head, 0)
    # The original is copied up to the last edit, edited; the spool resumes after it.
    resume_at = max(end for _, end, _ in edits)
    pieces: list[bytes] = []
    at = 0
    for start, stop, insert in edits:
        pieces += [original[at : max(start, at)], insert]
        at = max(at, stop)
    pieces.append(original[at:resume_at])
    return EditedMessage(spool, head + b"".join(pieces), resume_at)
