"""The shared store's tables in PostgreSQL, as an ordered list of migrations.

amavisd-new's logging and quarantine tables are created as README.sql-pg of amavisd-new 2.13 documents them
(reference: amavisd-sql.md §1.2), column for column, so the quarantine web front ends and release tools
written for amavisd-new's SQL read a qsift site's database unchanged; `partition_tag` stays 0 (§0). Two
indexes are added that amavisd-new lacks: its own lookups and the front ends' filter on `mail_id` alone,
which the primary keys (leading with `partition_tag`) cannot serve (§1.6). The documented GRANTs to the
`amavis` role are left out: which roles a site has is the site's business (docs/cluster.md).

amavisd-new's tables are created only if missing, so a database an amavisd-new site already has is taken
over as it is. qsift's own state sits beside them in `qsift_*` tables; amavisd-new's tables get no column of
ours, because the front ends `SELECT *` in places (§5).

A migration is applied in one transaction (store/pg_migrate.py): append new ones, never edit an applied one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    statements: tuple[LiteralString, ...]


# README.sql-pg, §1.2 of the reference; its comments shortened to what a reader of this file needs.
_AMAVISD_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS maddr (
      id            serial       PRIMARY KEY,
      partition_tag integer      DEFAULT 0,
      email         bytea        NOT NULL,  -- full address, lowercased domain
      domain        varchar(255) NOT NULL,  -- the domain's labels reversed: com.example
      CONSTRAINT part_email UNIQUE (partition_tag, email)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS msgs (
      partition_tag integer      DEFAULT 0,
      mail_id       bytea        NOT NULL,
      secret_id     bytea        DEFAULT '',  -- authorizes a release of mail_id (AM.PDP)
      am_id         varchar(20)  NOT NULL,    -- the id in the log line
      time_num      integer      NOT NULL CHECK (time_num >= 0),
      time_iso      timestamp WITH TIME ZONE NOT NULL,
      sid           integer      NOT NULL CHECK (sid >= 0),  -- sender: maddr.id
      policy        varchar(255) DEFAULT '',
      client_addr   varchar(255) DEFAULT '',
      size          integer      NOT NULL CHECK (size >= 0),
      originating   char(1)      DEFAULT ' ' NOT NULL,
      content       char(1),      -- V/B/U/S/Y/M/H/O/T/C; NULL while the message is in progress
      quar_type     char(1),      -- ' '/F/Z/B/Q/M/L
      quar_loc      varchar(255) DEFAULT '',
      dsn_sent      char(1),
      spam_level    real,
      message_id    varchar(255) DEFAULT '',
      from_addr     varchar(255) DEFAULT '',
      subject       varchar(255) DEFAULT '',
      host          varchar(255) NOT NULL,  -- where the release server for this message answers
      CONSTRAINT msgs_partition_mail UNIQUE (partition_tag, mail_id),
      PRIMARY KEY (partition_tag, mail_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS msgs_idx_sid ON msgs (sid)",
    "CREATE INDEX IF NOT EXISTS msgs_idx_mess_id ON msgs (message_id)",
    "CREATE INDEX IF NOT EXISTS msgs_idx_time_iso ON msgs (time_iso)",
    "CREATE INDEX IF NOT EXISTS msgs_idx_time_num ON msgs (time_num)",
    """
    CREATE TABLE IF NOT EXISTS msgrcpt (
      partition_tag integer      DEFAULT 0,
      mail_id       bytea        NOT NULL,
      rseqnum       integer      DEFAULT 0 NOT NULL,  -- the recipient's place in the message, 1..n
      rid           integer      NOT NULL,            -- recipient: maddr.id
      is_local      char(1)      DEFAULT ' ' NOT NULL,
      content       char(1)      DEFAULT ' ' NOT NULL,
      ds            char(1)      NOT NULL,  -- delivery status: P/R/B/D/T
      rs            char(1)      NOT NULL,  -- release status: ' ', changed by the front ends only
      bl            char(1)      DEFAULT ' ',
      wl            char(1)      DEFAULT ' ',
      bspam_level   real,
      smtp_resp     varchar(255) DEFAULT '',
      CONSTRAINT msgrcpt_partition_mail_rseq UNIQUE (partition_tag, mail_id, rseqnum),
      PRIMARY KEY (partition_tag, mail_id, rseqnum)
    )
    """,
    "CREATE INDEX IF NOT EXISTS msgrcpt_idx_mail_id ON msgrcpt (mail_id)",
    "CREATE INDEX IF NOT EXISTS msgrcpt_idx_rid ON msgrcpt (rid)",
    """
    CREATE TABLE IF NOT EXISTS quarantine (
      partition_tag integer DEFAULT 0,
      mail_id       bytea   NOT NULL,
      chunk_ind     integer NOT NULL CHECK (chunk_ind >= 0),  -- 1, 2, ...: 16384-byte chunks
      mail_text     bytea   NOT NULL,
      PRIMARY KEY (partition_tag, mail_id, chunk_ind)
    )
    """,
    # Not in README.sql-pg: lookups by mail_id alone were sequential scans (34 ms at 300 000 rows, §1.6).
    "CREATE INDEX IF NOT EXISTS msgs_idx_mail_id ON msgs (mail_id)",
    "CREATE INDEX IF NOT EXISTS quarantine_idx_mail_id ON quarantine (mail_id)",
)

_QSIFT_TABLES = (
    """
    CREATE TABLE qsift_schema_version (
      version     integer     PRIMARY KEY,
      summary     text        NOT NULL,
      applied_at  timestamptz NOT NULL DEFAULT now()
    )
    """,
    # store/outcomes.py's record, shared: a retry that lands on another node is answered from it.
    """
    CREATE TABLE qsift_outcomes (
      key      text             PRIMARY KEY,  -- delivery_key(): body digest, sender, recipient
      mail_id  text             NOT NULL,
      answer   text             NOT NULL,     -- the answer the delivery got
      created  double precision NOT NULL      -- Unix seconds, as time.time() gives them
    )
    """,
    "CREATE INDEX qsift_outcomes_created ON qsift_outcomes (created)",
)

# The shared quarantine's own facts (store/pg_quarantine.py): the message itself is amavisd-new's msgs,
# msgrcpt and quarantine rows; what they have no column for sits here, keyed by the same mail_id.
_QSIFT_QUARANTINE = (
    """
    CREATE TABLE qsift_quarantine (
      mail_id      bytea            PRIMARY KEY,  -- msgs.mail_id (partition_tag 0)
      category     text             NOT NULL,     -- Category.value: "virus", "banned", ...
      reasons      text             NOT NULL,     -- "INFECTED: Eicar-Test-Signature"
      sender       bytea            NOT NULL,     -- the envelope's, exactly (maddr.email is lowercased)
      recipients   bytea[]          NOT NULL,     -- the kept recipients, exactly, in order
      created      double precision NOT NULL,     -- Unix seconds, as time.time() gives them
      fingerprint  text             NOT NULL DEFAULT ''  -- finds the copy a retry left
    )
    """,
    "CREATE INDEX qsift_quarantine_created ON qsift_quarantine (created)",
    "CREATE INDEX qsift_quarantine_fingerprint ON qsift_quarantine (fingerprint)",
    # A release per recipient, idempotent: two nodes given the same release record it once.
    """
    CREATE TABLE qsift_release (
      mail_id    bytea            NOT NULL,
      recipient  bytea            NOT NULL,
      released   double precision NOT NULL,
      PRIMARY KEY (mail_id, recipient)
    )
    """,
)

# amavisd-new's lookup tables (§1.1), read by store/pg_lookups.py and written by the site's admin or its
# policy panel, never by qsift. `users.local` is left out as README.sql-pg leaves it out (commented): a site
# that wants it adds it, and qsift reads it when it is there.
_AMAVISD_LOOKUP_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS policy (
      id            serial PRIMARY KEY,  -- 'id' is the only required field
      policy_name   varchar(32),         -- not used by amavisd-new or qsift, a comment
      virus_lover           char(1) default NULL,  -- Y/N
      spam_lover            char(1) default NULL,
      unchecked_lover       char(1) default NULL,
      banned_files_lover    char(1) default NULL,
      bad_header_lover      char(1) default NULL,
      bypass_virus_checks   char(1) default NULL,
      bypass_spam_checks    char(1) default NULL,
      bypass_banned_checks  char(1) default NULL,
      bypass_header_checks  char(1) default NULL,
      virus_quarantine_to      varchar(64) default NULL,
      spam_quarantine_to       varchar(64) default NULL,
      banned_quarantine_to     varchar(64) default NULL,
      unchecked_quarantine_to  varchar(64) default NULL,
      bad_header_quarantine_to varchar(64) default NULL,
      clean_quarantine_to      varchar(64) default NULL,
      archive_quarantine_to    varchar(64) default NULL,
      spam_tag_level  real default NULL,
      spam_tag2_level real default NULL,
      spam_tag3_level real default NULL,
      spam_kill_level real default NULL,
      spam_dsn_cutoff_level        real default NULL,
      spam_quarantine_cutoff_level real default NULL,
      addr_extension_virus      varchar(64) default NULL,
      addr_extension_spam       varchar(64) default NULL,
      addr_extension_banned     varchar(64) default NULL,
      addr_extension_bad_header varchar(64) default NULL,
      warnvirusrecip      char(1)     default NULL,
      warnbannedrecip     char(1)     default NULL,
      warnbadhrecip       char(1)     default NULL,
      newvirus_admin      varchar(64) default NULL,
      virus_admin         varchar(64) default NULL,
      banned_admin        varchar(64) default NULL,
      bad_header_admin    varchar(64) default NULL,
      spam_admin          varchar(64) default NULL,
      spam_subject_tag    varchar(64) default NULL,
      spam_subject_tag2   varchar(64) default NULL,
      spam_subject_tag3   varchar(64) default NULL,
      message_size_limit  integer     default NULL,  -- bytes, 0: no limit
      banned_rulenames    varchar(64) default NULL,
      disclaimer_options  varchar(64) default NULL,
      forward_method      varchar(64) default NULL,
      sa_userconf         varchar(64) default NULL,
      sa_username         varchar(64) default NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS users (
      id         serial  PRIMARY KEY,
      priority   integer NOT NULL DEFAULT 7,  -- higher wins
      policy_id  integer NOT NULL DEFAULT 1 CHECK (policy_id >= 0) REFERENCES policy(id),
      email      bytea   NOT NULL UNIQUE,     -- a lookup key: user+ext@dom, user@dom, @dom, @.dom, @.
      fullname   varchar(255) DEFAULT NULL    -- not used
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS mailaddr (
      id         serial  PRIMARY KEY,
      priority   integer NOT NULL DEFAULT 9,  -- higher wins
      email      bytea   NOT NULL UNIQUE      -- a sender key: user@dom, @dom, @.dom, @.
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS wblist (
      rid        integer NOT NULL CHECK (rid >= 0) REFERENCES users(id),
      sid        integer NOT NULL CHECK (sid >= 0) REFERENCES mailaddr(id),
      wb         varchar(10) NOT NULL,  -- W or Y / B or N / space: neutral / a score
      PRIMARY KEY (rid,sid)
    )
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "amavisd-new's maddr, msgs, msgrcpt and quarantine; qsift_outcomes",
        _QSIFT_TABLES + _AMAVISD_TABLES,
    ),
    Migration(2, "qsift_quarantine and qsift_release, the shared quarantine's own facts", _QSIFT_QUARANTINE),
    Migration(3, "amavisd-new's lookup tables policy, users, mailaddr and wblist", _AMAVISD_LOOKUP_TABLES),
)

LATEST = MIGRATIONS[-1].version
