"""Headers added to passed mail, and the Subject tag, leaving every other byte as it came."""

from __future__ import annotations

from qsift.act.headers import SPAM_TAG, edit_message, header_fields, subject_tag
from qsift.checks.content import Verdict
from qsift.checks.scanners import SpamResult
from qsift.checks.spam_levels import SpamLevels
from qsift.model import Category, Finding
from qsift.spool import MessageSpool

MESSAGE = b"Received: x\r\nSubject: hello there\r\nFrom: a@x\r\n\r\nSubject: not a header\r\nbody\r\n"


def verdict(score: float | None = None, *findings: Finding) -> Verdict:
    spam = SpamResult("spamd", score=score, rules=("GTUBE", "MISSING_DATE")) if score is not None else None
    return Verdict((), findings, spam)


def edited(message: bytes, fields: list[str], tag: str) -> bytes:
    with MessageSpool.from_bytes(message) as spool:
        body = edit_message(spool, fields, tag)
        data = b"".join(body.chunks(7))
        assert body.size == len(data)
        return data


def test_spam_fields_as_amavisd_new_writes_them() -> None:
    fields = header_fields(verdict(7.5), SpamLevels(), "mx.test", virus_scanned=True)
    assert fields == [
        "X-Virus-Scanned: qsift at mx.test",
        "X-Spam-Flag: YES",
        "X-Spam-Score: 7.500",
        "X-Spam-Level: *******",
        "X-Spam-Status: Yes, score=7.500 tagged_above=2 required=6.2 tests=[GTUBE,MISSING_DATE]",
    ]


def test_below_tag_level_no_spam_fields_and_not_scanned_no_virus_field() -> None:
    assert header_fields(verdict(1.0), SpamLevels(), "mx", virus_scanned=False) == []
    flag = header_fields(verdict(3.0), SpamLevels(), "mx", virus_scanned=False)
    assert flag[0] == "X-Spam-Flag: NO"


def test_unchecked_gets_an_alert_and_a_tag() -> None:
    unchecked = verdict(None, Finding(Category.UNCHECKED, 1, "2: encrypted: Passphrase required\r\nX: y"))
    fields = header_fields(unchecked, SpamLevels(), "mx", virus_scanned=False)
    assert fields == ["X-Qsift-Alert: UNCHECKED, 2: encrypted: Passphrase required??X: y"]
    assert subject_tag(unchecked) == "***UNCHECKED*** "
    assert subject_tag(verdict(7.0, Finding(Category.SPAMMY, 0, "score"))) == SPAM_TAG
    assert subject_tag(verdict()) == ""


def test_fields_on_top_tag_in_the_subject_and_nothing_else_changed() -> None:
    data = edited(MESSAGE, ["X-Spam-Flag: YES"], SPAM_TAG)
    assert data == (
        b"X-Spam-Flag: YES\r\nReceived: x\r\nSubject: ***Spam*** hello there\r\nFrom: a@x\r\n\r\n"
        b"Subject: not a header\r\nbody\r\n"
    )


def test_no_subject_gets_one_and_lf_messages_stay_lf() -> None:
    data = edited(b"From: a@x\n\nbody\n", ["X-A: 1"], SPAM_TAG)
    assert data == b"X-A: 1\nSubject: ***Spam***\nFrom: a@x\n\nbody\n"


def test_nothing_to_add_is_the_message_itself() -> None:
    assert edited(MESSAGE, [], "") == MESSAGE


def test_a_large_message_streams_unchanged_behind_the_new_head() -> None:
    big = b"Subject: s\n\n" + b"x" * 3_000_000
    data = edited(big, ["X-A: 1"], SPAM_TAG)
    assert data == b"X-A: 1\nSubject: ***Spam*** s\n\n" + b"x" * 3_000_000


def test_head_is_the_start_of_the_edited_message_across_the_new_fields() -> None:
    with MessageSpool.from_bytes(MESSAGE) as spool:
        body = edit_message(spool, ["X-Spam-Flag: YES"], SPAM_TAG)
        whole = b"".join(body.chunks())
        for limit in (0, 5, len("X-Spam-Flag: YES\r\n") + 3, len(whole), len(whole) + 10):
            assert body.head(limit) == whole[:limit]


def test_a_bare_cr_is_a_line_end_for_the_subject_tag() -> None:
    # The forward sends a bare CR as CRLF: the Subject after one is a field, and a header ended by
    # CR CR LF ends there (the Subject below it is body) at the next hop, as for the decoder.
    after_bare_cr = edited(b"From: a@x\r\nX-A: y\rSubject: buy now\r\n\r\nbody\r\n", [], SPAM_TAG)
    assert after_bare_cr == b"From: a@x\r\nX-A: y\rSubject: ***Spam*** buy now\r\n\r\nbody\r\n"
    below_the_end = edited(b"From: a@x\r\n\r\r\nSubject: buy now\r\n", [], SPAM_TAG)
    assert below_the_end == b"Subject: ***Spam***\r\nFrom: a@x\r\n\r\r\nSubject: buy now\r\n"
