"""The pen pals lookup in amavisd-new's message log (msgs, msgrcpt, maddr), in PostgreSQL.

amavisd-new runs two statements per local recipient (reference: amavisd-sql.md §2.2, §2.5):
`sel_penpals_msgid` first, when the message names Message-IDs in In-Reply-To or References (a mail the
recipient sent with one of them, preferring one that went to this sender), then on a miss `sel_penpals`
(the newest mail the recipient sent to this sender). Both only count mail that was not a virus and was
passed (`ds = 'P'`) to that recipient. This is the same question for all of a message's recipients in one
statement, so one round trip a message: each branch is one amavisd-new statement, served by the indexes
README.sql-pg gives for it (`msgs_idx_mess_id` for the Message-IDs, `msgs_idx_sid` for the recipient as
sender, `msgrcpt_idx_rid` and msgrcpt's primary key for the rows it went to).

Addresses are looked up in `partition_tag` 0, the one qsift writes (amavisd-sql.md §0): maddr's only
index on `email` leads with `partition_tag`, so a lookup in every partition would read the whole table.
The mail found may be of any partition (maddr.id is unique across them), as with amavisd-new's
partition-blind statements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qsift.store.amavisd_forms import VARCHAR, maddr_email
from qsift.store.penpals import PenPalQuery, SentMail

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    from qsift.store.pg_worker import WorkerDatabase

    Connection = psycopg.AsyncConnection[TupleRow]

# r: the recipient's address row, as the sender of earlier mail; s: this message's sender.
# Each branch takes at most one row; of the two, a row found by Message-ID wins (amavisd-new asks
# sel_penpals only when sel_penpals_msgid found nothing).
_FIND = """
SELECT DISTINCT ON (r.email) r.email, found.mail_id, found.time_num, found.subject, found.by_reference
  FROM maddr AS r
  LEFT JOIN maddr AS s ON s.partition_tag = 0 AND s.email = %(sender)s::bytea
 CROSS JOIN LATERAL (
       (SELECT m.mail_id, m.time_num, m.subject, true AS by_reference
          FROM msgs AS m JOIN msgrcpt AS c USING (partition_tag, mail_id)
         WHERE m.sid = r.id AND m.content != 'V' AND c.ds = 'P'
           AND m.message_id = ANY(%(references)s::text[]) AND c.rid != m.sid
         ORDER BY c.rid = s.id DESC, m.time_num DESC
         LIMIT 1)
       UNION ALL
       (SELECT m.mail_id, m.time_num, m.subject, false
          FROM msgs AS m JOIN msgrcpt AS c USING (partition_tag, mail_id)
         WHERE m.sid = r.id AND c.rid = s.id
           AND m.content != 'V' AND c.ds = 'P'
         ORDER BY m.time_num DESC
         LIMIT 1)
       ) AS found
 WHERE r.partition_tag = 0 AND r.email = ANY(%(recipients)s::bytea[])
 ORDER BY r.email, found.by_reference DESC, found.time_num DESC
"""


class SharedPenPals:
    """Asks amavisd-new's message log, on the worker's pool: StoreUnreachable when it does not answer."""

    def __init__(self, database: WorkerDatabase) -> None:
        #: This worker's pool, shared with the outcome record and the message log (store/pg_worker.py).
        self._database = database

    async def find(self, query: PenPalQuery) -> dict[str, SentMail]:
        """The mail each recipient sent that makes this message a reply, by recipient; absent: none."""
        if not query.recipients:
            return {}
        asked: dict[bytes, list[str]] = {}
        for recipient in query.recipients:
            asked.setdefault(maddr_email(recipient), []).append(recipient)
        arguments = {
            "sender": maddr_email(query.sender),
            "recipients": list(asked),
            "references": [reference[:VARCHAR] for reference in query.references],
        }

        async def select(db: Connection) -> list[tuple[Any, ...]]:
            cursor = await db.execute(_FIND, arguments)
            return await cursor.fetchall()

        rows = await self._database.run(select, "the pen pals lookup")
        found: dict[str, SentMail] = {}
        for email, mail_id, time_num, subject, by_reference in rows:
            sent = SentMail(
                bytes(mail_id).decode("ascii", "replace"), int(time_num), subject or "", by_reference
            )
            found.update((recipient, sent) for recipient in asked.get(bytes(email), ()))
        return found
