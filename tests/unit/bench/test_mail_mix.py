"""The benchmarks' generated mail: the same bytes every run, attachments of the sizes the mix promises."""

from __future__ import annotations

import email
import email.policy
import random
from email.message import EmailMessage

import pytest
from bench.mail_mix import ATTACHMENT_SIZE, LARGE_EVERY, LARGE_SIZE, business_mail, stamped


def attachments(message: bytes) -> list[bytes]:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    found = []
    for part in parsed.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append(payload)
    return found


def test_the_same_seed_gives_the_same_bytes() -> None:
    assert business_mail(3, random.Random(1)) == business_mail(3, random.Random(1))


def test_ordinary_attachments_stay_within_the_promised_sizes() -> None:
    rng = random.Random(1)
    low, high = ATTACHMENT_SIZE
    for index in range(12):
        sizes = [len(data) for data in attachments(business_mail(index, rng))]
        assert 1 <= len(sizes) <= 3
        # Zips come out smaller or larger than the size drawn, depending on how their text compresses.
        assert all(low // 4 <= size <= 2 * high for size in sizes), sizes


@pytest.mark.slow  # builds a message of up to 13 MB
def test_every_large_every_th_message_carries_a_large_attachment() -> None:
    sizes = [len(data) for data in attachments(business_mail(LARGE_EVERY - 1, random.Random(5)))]
    assert LARGE_SIZE[0] // 4 <= max(sizes) <= 2 * LARGE_SIZE[1]


def test_stamped_messages_are_all_different() -> None:
    pool = [("a", b"Subject: a\n\nx\n"), ("b", b"Subject: b\n\ny\n")]
    first, second = stamped(pool, 5, "t"), stamped(pool, 5, "t", start=5)
    assert len(set(first + second)) == 10
    assert second[0].startswith(b"X-Bench-Id: t-5 (b)\n")
