"""Who sent the message: the X-Qsift-Client field qsift-queue adds, checked, and cut out of the message.

QMQP carries no client. qsift-queue, which runs in qmail-smtpd's environment, prepends a field with the
client's address, name, RELAYCLIENT and SMTP AUTH user, signed with this site's secret over the envelope
(wire/client_context.py). The first such field is believed when its signature holds for this envelope and
it is fresh; any other one, or one that does not verify (a sender forging its way into the outbound policy
bank), is ignored. Every one of them is cut out before the message goes anywhere (delivery, quarantine,
the DSN's copy of the header): the field is between qsift-queue and the daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qsift.model import Client, Envelope, address_bytes
from qsift.observe.log import logger
from qsift.wire import client_context


@dataclass(frozen=True)
class ClientFields:
    client: Client
    #: Whether qsift-queue vouched for `client` (else it is the connection's peer).
    vouched: bool
    #: Byte ranges of every X-Qsift-Client field in the message, to cut out.
    ranges: tuple[tuple[int, int], ...]


def client_fields(envelope: Envelope, header: bytes, key: bytes | None, now: int) -> ClientFields:
    """What the first X-Qsift-Client field in the header section vouches for, if `key` signed it."""
    peer = Client(ip=envelope.client_address or "")
    found = client_context.find_fields(header)
    if not found:
        return ClientFields(peer, False, ())
    ranges = tuple((start, end) for start, end, _ in found)
    context = None
    if key is not None:
        recipients: Sequence[bytes] = [address_bytes(a) for a in envelope.addresses]
        context = client_context.verify(key, found[0][2], address_bytes(envelope.sender), recipients, now)
    if context is None:
        logger.warning(
            "%s field from [%s] ignored and removed: %s",
            client_context.FIELD,
            envelope.client_address or "-",
            "not signed by this site's client key for this envelope"
            if key is not None
            else "no client key to check it with ([client_context] key_file)",
        )
        return ClientFields(peer, False, ranges)
    client = Client(context.ip, context.host, context.relay_client, context.auth_user)
    return ClientFields(client, True, ranges)
