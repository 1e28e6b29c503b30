"""The AM.PDP release requests as rules: what each request asks for, or why it is refused."""

from __future__ import annotations

import ipaddress

import pytest

from qsift.serve.release_server import Refused, ReleaseOrder, _allowed, failure, release_order
from qsift.wire.ampdp import Request

MAIL_ID = "AbCdEfGhIj12"


def request(**attributes: str | tuple[str, ...]) -> Request:
    return Request({k: v if isinstance(v, tuple) else (v,) for k, v in attributes.items()})


@pytest.mark.parametrize(
    ("asked", "order"),
    [
        (request(request="release", mail_id=MAIL_ID), ReleaseOrder(MAIL_ID, "", (), None, "")),
        (
            request(
                request="release",
                mail_id=MAIL_ID,
                secret_id="S",
                quar_type="Q",
                recipient=("<a@example.org>", "b@example.org", "a@example.org"),
                sender="<>",
                requested_by="admin@example.net",
                partition_tag="0",
            ),
            ReleaseOrder(MAIL_ID, "S", ("a@example.org", "b@example.org"), "", "admin@example.net"),
        ),
        # amavisd-release: quar_type Z or F and mail_file, which qsift never opens.
        (
            request(request="release", mail_id=MAIL_ID, quar_type="Z", mail_file="../../etc/passwd"),
            ReleaseOrder(MAIL_ID, "", (), None, ""),
        ),
        (request(request="release", mail_id="abc=="), ReleaseOrder("abc==", "", (), None, "")),
    ],
)
def test_orders(asked: Request, order: ReleaseOrder) -> None:
    assert release_order(asked) == order


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (request(mail_id=MAIL_ID), "no request given"),
        (request(request="delete", mail_id=MAIL_ID), "unknown request 'delete'"),
        (request(request="requeue", mail_id=MAIL_ID), "request=requeue is not served by qsift"),
        (request(request="report", mail_id=MAIL_ID), "request=report is not served by qsift"),
        (request(request="release"), "no mail_id given"),
        (request(request="release", mail_id="-rf"), "invalid mail_id '-rf'"),
        (request(request="release", mail_id="a/b"), "invalid mail_id"),
        (request(request="release", mail_id="a\r\nb"), "invalid mail_id 'a  b'"),
        (request(request="release", mail_id="a" * 65), "invalid mail_id"),
        (request(request="release", mail_id=MAIL_ID, quar_type="M"), "quar_type=M is not served"),
        (
            request(request="release", mail_id=MAIL_ID, partition_tag="3"),
            "no quarantined message AbCdEfGhIj12 in partition 3",
        ),
        (request(request="release", mail_id=MAIL_ID, recipient="a@b\r\nRCPT TO:<c@d>"), "invalid address"),
        (request(request="release", mail_id=MAIL_ID, recipient="a" * 1001), "invalid address"),
        (request(request="release", mail_id=MAIL_ID, sender="a\x00b"), "invalid address"),
    ],
)
def test_refusals(asked: Request, reason: str) -> None:
    with pytest.raises(Refused, match="^" + reason.replace("(", r"\(")):
        release_order(asked)


@pytest.mark.parametrize(
    ("client", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.5", True), ("192.0.2.1", False), ("unix", False)],
)
def test_acl(client: str, allowed: bool) -> None:
    acl = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert _allowed(client, acl) is allowed


def test_failure_is_amavisd_news_form() -> None:
    assert failure("no quarantined message X") == (
        b"setreply=450 4.5.0 Failure:%20no%20quarantined%20message%20X\r\n"
        b"return_value=tempfail\r\nexit_code=75\r\n\r\n"
    )
