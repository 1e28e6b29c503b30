"""The message as every forward reads it: fitted, with its size and the mark's digest of what is sent."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from qsift.act.headers import edit_message
from qsift.act.long_lines import NO_LONG_LINES, FittedMessage, fitted, plan_fit
from qsift.spool import MessageSpool
from qsift.wire.mark import BodyDigest

LONG_BODY = b"Subject: s\n\n" + b"\xe9" * 2000 + b"\n"


def test_a_subject_tag_past_the_limit_is_folded_and_the_body_left_alone() -> None:
    subject = b"Subject: " + b"word " * 198 + b"end\n"
    message = subject + b"\n" + b"x" * 5000 + b"\n"  # a body line the plan says is not there
    with MessageSpool.from_bytes(message) as spool:
        fitted = FittedMessage(edit_message(spool, ["X-Added: 1"], "***Spam*** "), NO_LONG_LINES)
        sent = b"".join(fitted.chunks(100))
        assert fitted.head(30) == sent[:30]
        assert fitted.head(len(sent) + 10) == sent
    head, _, body = sent.partition(b"\n\n")
    assert max(len(line) for line in head.split(b"\n")) <= 998
    assert head.replace(b"\n ", b" ") == b"X-Added: 1\n" + b"Subject: ***Spam*** " + subject[9:-1]
    assert body == b"x" * 5000 + b"\n"


def test_the_plan_knows_the_size_and_the_digest_of_what_is_sent() -> None:
    with MessageSpool.from_bytes(LONG_BODY) as spool:
        digest = BodyDigest()
        plan = plan_fit(spool, digest)
        fitted = FittedMessage(spool, plan)
        sent = b"".join(fitted.chunks())
        assert plan.long_lines and plan.refit == frozenset({0})
        assert fitted.size == len(sent) > spool.size
        assert plan_fit(spool, None) == plan
    expected = BodyDigest()
    expected.update(sent)
    assert digest.hexdigest() == expected.hexdigest()
    assert b"Content-Transfer-Encoding: quoted-printable\n" in sent


def test_a_message_outside_the_pipeline_is_planned_by_its_own_reads() -> None:
    with MessageSpool.from_bytes(LONG_BODY) as spool:
        assert fitted(spool).plan == plan_fit(spool, None)
    with MessageSpool.from_bytes(b"Subject: s\n\nshort\n") as spool:
        assert fitted(spool).plan == NO_LONG_LINES


def test_memory_stays_bounded_for_a_line_of_many_megabytes(tmp_path: Path) -> None:
    spool = MessageSpool(str(tmp_path), memory_limit=64 * 1024)
    with spool:
        spool.write(b"Subject: one line\r\n\r\n")
        for _ in range(64):
            spool.write(b"\xe9 x=" * 16384)  # 4 MiB, one line
        tracemalloc.start()
        try:
            plan = plan_fit(spool, None)
            sent = sum(len(chunk) for chunk in FittedMessage(spool, plan).chunks())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert plan.refit == frozenset({0}) and sent == spool.size + plan.growth
    assert peak < 1536 * 1024, peak  # the same for any length
