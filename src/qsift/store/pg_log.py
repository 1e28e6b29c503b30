"""The message log in PostgreSQL: a `msgs` row, a `msgrcpt` row per recipient and the `maddr` rows of every
message the pipeline finishes, as amavisd-new writes them with its default $sql_store_info_for_all_msgs
(reference: amavisd-sql.md §1.3-1.4, §2.3). The front ends' "all mail" views and pen pals read them.

One statement a message, so one round trip, in autocommit: the addresses are found, the missing ones added
(INSERT ... ON CONFLICT DO NOTHING, in sorted order, only for those the SELECT did not find, so no sequence
value is spent on an address already there), and the msgs and msgrcpt rows written, all in data-modifying
CTEs. An address another node adds at the same moment is not seen by this statement's snapshot: its
sid or rid comes out NULL, the NOT NULL constraint refuses the statement, and it goes once more, when the
other node's row is visible.

A message the shared quarantine kept has its msgs row and its kept recipients' msgrcpt rows already
(store/pg_quarantine.py, before the answer): the log's rows meet them on (partition_tag, mail_id) and
(partition_tag, mail_id, rseqnum) and complete them (the final content, dsn_sent, policy, the reply each
recipient got, the recipients that were not kept), leaving quar_type, quar_loc and rs as they are.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from qsift.store.amavisd_forms import VARCHAR, header_fields, maddr_domain, maddr_email
from qsift.store.message_log import LoggedMessage
from qsift.store.pg_worker import WorkerDatabase

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    Connection = psycopg.AsyncConnection[TupleRow]

# Any constant every node agrees on, apart from pg_migrate's and pg_outcomes'; "qsml" in ASCII.
_PURGE_LOCK = 0x71736D6C

_LOG = """
WITH wanted (email, domain) AS (
    SELECT * FROM unnest(%(emails)s::bytea[], %(domains)s::text[])
), found AS (
    SELECT m.email, m.id FROM maddr m JOIN wanted w ON m.email = w.email WHERE m.partition_tag = 0
), added AS (
    INSERT INTO maddr (partition_tag, email, domain)
    SELECT 0, w.email, w.domain FROM wanted w WHERE w.email NOT IN (SELECT email FROM found)
    ORDER BY w.email
    ON CONFLICT (partition_tag, email) DO NOTHING
    RETURNING email, id
), ids AS (
    SELECT email, id FROM found UNION ALL SELECT email, id FROM added
), msg AS (
    INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, policy, client_addr,
        size, originating, content, quar_type, quar_loc, dsn_sent, spam_level, message_id, from_addr,
        subject, host)
    VALUES (0, %(mail_id)s, %(secret_id)s, %(am_id)s, %(time_num)s, %(time_iso)s,
        (SELECT id FROM ids WHERE email = %(sender)s), %(policy)s, %(client_addr)s, %(size)s,
        %(originating)s, %(content)s, ' ', '', %(dsn_sent)s, %(spam_level)s, %(message_id)s,
        %(from_addr)s, %(subject)s, %(host)s)
    ON CONFLICT (partition_tag, mail_id) DO UPDATE SET
        policy = EXCLUDED.policy, client_addr = EXCLUDED.client_addr, originating = EXCLUDED.originating,
        content = EXCLUDED.content, dsn_sent = EXCLUDED.dsn_sent, spam_level = EXCLUDED.spam_level
    RETURNING 1
), rcpt AS (
    INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs, bl, wl,
        bspam_level, smtp_resp)
    SELECT 0, %(mail_id)s, r.rseqnum, ids.id, r.is_local, r.content, r.ds, ' ', r.bl, r.wl, r.bspam_level,
        r.smtp_resp
    FROM unnest(%(rseqnums)s::int[], %(recipients)s::bytea[], %(locals)s::text[], %(contents)s::text[],
        %(statuses)s::text[], %(spam_levels)s::real[], %(replies)s::text[], %(bls)s::text[], %(wls)s::text[])
        AS r(rseqnum, email, is_local, content, ds, bspam_level, smtp_resp, bl, wl)
    LEFT JOIN ids ON ids.email = r.email
    ON CONFLICT (partition_tag, mail_id, rseqnum) DO UPDATE SET
        rid = EXCLUDED.rid, is_local = EXCLUDED.is_local, content = EXCLUDED.content, ds = EXCLUDED.ds,
        bl = EXCLUDED.bl, wl = EXCLUDED.wl, bspam_level = EXCLUDED.bspam_level,
        smtp_resp = EXCLUDED.smtp_resp
    RETURNING 1
)
SELECT (SELECT count(*) FROM msg), (SELECT count(*) FROM rcpt)
"""

# Log rows of mail whose copy is still kept, by qsift or by amavisd-new, stay: the quarantine's purge
# (or the front end's) takes them with the copy.
_PURGE = """
WITH gone AS (
    DELETE FROM msgs m WHERE m.partition_tag = 0 AND m.time_num < %s
    AND NOT EXISTS (SELECT 1 FROM qsift_quarantine q WHERE q.mail_id = m.mail_id)
    AND NOT EXISTS (SELECT 1 FROM quarantine c WHERE c.partition_tag = 0 AND c.mail_id = m.mail_id)
    RETURNING m.mail_id
), r AS (
    DELETE FROM msgrcpt WHERE partition_tag = 0 AND mail_id IN (SELECT mail_id FROM gone)
)
SELECT count(*) FROM gone
"""


class SharedMessageLog:
    """Every finished message's rows in amavisd-new's log tables; one statement a message."""

    def __init__(self, database: WorkerDatabase, host: str) -> None:
        """`host` goes into msgs.host: the name under which the front ends reach this node."""
        #: This worker's pool, shared with the outcome record (store/pg_worker.py).
        self._database = database
        self._host = host[:VARCHAR]

    async def log(self, message: LoggedMessage) -> None:
        """Write the message's rows; StoreUnreachable if they cannot be committed."""
        parameters = self._parameters(message)

        async def write(db: Connection) -> None:
            for attempt in range(2):
                try:
                    await db.execute(_LOG, parameters)
                    return
                except psycopg.errors.NotNullViolation:
                    if attempt:
                        raise  # not a race over an address: a row this statement cannot make

        await self._database.run(write, "the message log")

    async def purge(self, older_than: float) -> int:
        """Delete the rows of messages logged before `older_than` whose copy is not kept; how many went
        (0 while another node purges)."""

        return await self._database.purge_alone(
            _PURGE_LOCK, _PURGE, int(older_than), "the message log's purge"
        )

    async def close(self) -> None:
        await self._database.close()

    def _parameters(self, message: LoggedMessage) -> dict[str, Any]:
        recipients = message.recipients
        emails = sorted({maddr_email(a) for a in (message.sender, *(r.address for r in recipients))})
        from_addr, subject, message_id = header_fields(message.head)
        received = int(message.received)
        return {
            "emails": emails,
            "domains": [maddr_domain(e) for e in emails],
            "mail_id": message.mail_id.encode("ascii"),
            "secret_id": message.secret_id.encode("ascii"),
            "am_id": message.mail_id[:20],
            "time_num": received,
            # Whole seconds, as amavisd-new's YYYYMMDDTHHMMSSZ: the same instant as time_num.
            "time_iso": datetime.datetime.fromtimestamp(received, datetime.UTC),
            "sender": maddr_email(message.sender),
            "policy": message.policy[:VARCHAR],
            "client_addr": message.client_address[:VARCHAR],
            "size": message.size,
            "originating": "Y" if message.originating else "N",
            "content": message.content,
            "dsn_sent": message.dsn_sent,
            "spam_level": message.spam_level,
            "message_id": message_id,
            "from_addr": from_addr,
            "subject": subject,
            "host": self._host,
            "rseqnums": [r.number for r in recipients],
            "recipients": [maddr_email(r.address) for r in recipients],
            "locals": ["Y" if r.local else "N" for r in recipients],
            "contents": [r.content for r in recipients],
            "statuses": [r.delivery_status for r in recipients],
            "spam_levels": [r.spam_level for r in recipients],
            "replies": [_seven_bit(r.reply) for r in recipients],
            "bls": ["Y" if r.blacklisted else "N" for r in recipients],
            "wls": ["Y" if r.whitelisted else "N" for r in recipients],
        }


def _seven_bit(text: str) -> str:
    """smtp_resp as amavisd-new keeps it: 7-bit, at most 255 characters."""
    return text.encode("ascii", "replace").decode("ascii").replace("\0", "")[:VARCHAR]
