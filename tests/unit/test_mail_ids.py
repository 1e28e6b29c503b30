"""mail_ids are made as amavisd-new makes them: its release check must accept our secret_id."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from qsift.mail_ids import new_mail_ids, secret_matches
from qsift.store.quarantine import check_mail_id


def test_ids_are_safe_on_the_command_line_and_in_file_names() -> None:
    ids = [new_mail_ids() for _ in range(5000)]  # about 78 would start with "-" if drawn once
    assert all(check_mail_id(i.mail_id) == i.mail_id and len(i.mail_id) == 12 for i in ids)
    assert all(i.mail_id[0].isalnum() and i.mail_id[-1].isalnum() for i in ids)
    assert len({i.mail_id for i in ids}) == len(ids)


def test_the_mail_id_is_amavisd_news_md5_of_the_secret() -> None:
    # Util.pm generate_mail_id, written out independently of mail_ids.py.
    for _ in range(200):
        ids = new_mail_ids()
        secret = base64.b64decode(ids.secret_id.replace("-", "+").replace("_", "/"))
        assert len(secret) == 9
        expected = base64.b64encode(hashlib.md5(secret, usedforsecurity=False).digest()).decode()[:12]
        assert ids.mail_id == expected.replace("+", "-").replace("/", "_")
        assert secret_matches(ids.mail_id, ids.secret_id)


def test_another_secret_does_not_release_the_message() -> None:
    one, other = new_mail_ids(), new_mail_ids()
    assert not secret_matches(one.mail_id, other.secret_id)
    assert not secret_matches(one.mail_id, "")
    assert not secret_matches(one.mail_id, one.mail_id)


@given(st.text(max_size=40))
def test_any_text_as_a_secret_is_answered_without_an_error(secret_id: str) -> None:
    assert secret_matches(new_mail_ids().mail_id, secret_id) in (True, False)
