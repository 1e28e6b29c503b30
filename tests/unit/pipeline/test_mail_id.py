"""mail_ids are safe on the command line: `qsift release MAIL_ID` must never see an option."""

from __future__ import annotations

from qsift.pipeline.stages import new_mail_id
from qsift.store.quarantine import check_mail_id


def test_no_mail_id_starts_with_a_dash() -> None:
    ids = [new_mail_id() for _ in range(5000)]  # about 78 of them would have started with "-" before
    assert not [i for i in ids if i.startswith("-")]
    assert all(check_mail_id(i) == i and len(i) == 12 for i in ids)
