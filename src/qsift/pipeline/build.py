"""`build_pipeline`: every part of a pipeline, made once from the configuration.

The one place a pipeline is made: by each daemon worker, by `qsift scan` (its checks) and `qsift release`
(its forward), and by the tests. A part a use goes without is its null object (`durable=False`: no
outcome record and no quarantine, for the commands that must not open the daemon's state).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from qsift.act.bounce import DsnBouncer
from qsift.act.forward import make_forwarder
from qsift.act.notices import Notices
from qsift.checks.scanner_set import ScannerSet
from qsift.config import Config
from qsift.pipeline.blocked import Keeper, NoQuarantine, QuarantineKeeper
from qsift.pipeline.checking import ContentChecks
from qsift.pipeline.parts import (
    MessageLog,
    NoLookups,
    NoMessageLog,
    NoOutcomeRecord,
    NoPenPals,
    OutcomeLedger,
    PenPalLog,
    RecipientLookups,
)
from qsift.pipeline.signing import NoSigner, Signer
from qsift.pipeline.slots import MessageSlots
from qsift.pipeline.stages import Pipeline
from qsift.store.outcomes import LocalOutcomes, OutcomeStore
from qsift.store.quarantine import Quarantine, QuarantineStore

if TYPE_CHECKING:
    from qsift.auth.arc import ArcKey
    from qsift.auth.signing import SigningKey
    from qsift.checks.authentication import MailAuthentication

OUTCOMES_FILE = "outcomes.sqlite"


def build_pipeline(
    config: Config,
    *,
    client_key: bytes | None = None,
    mark_key: bytes | None = None,
    dkim_keys: tuple[SigningKey, ...] = (),
    arc_key: ArcKey | None = None,
    workers: int = 1,
    durable: bool = True,
    clock: Callable[[], float] = time.time,
) -> Pipeline:
    """The pipeline `config` describes, for one of `workers` processes sharing max_servers.

    `client_key`, `mark_key`, `dkim_keys` and `arc_key` are the site's keys (serve/keys.py); without them
    no X-Qsift-Client field is believed, no mark is made and nothing is DKIM-signed or ARC-sealed. With
    `durable` the outcome record and the quarantine are opened (in state_dir, made if missing, or in
    PostgreSQL when `[store] url` is set, with the message log): `Pipeline.close` closes them.
    """
    # Notices are few and far between: a session kept for the next one would mostly wait to expire.
    notifier = make_forwarder(replace(config.notify_forward, idle_sessions=0), config.myhostname)
    bouncer = DsnBouncer(
        notifier, config.myhostname, re.compile(config.dsn.viruses_that_fake_sender, re.IGNORECASE)
    )
    outcomes: OutcomeLedger = NoOutcomeRecord()
    message_log: MessageLog = NoMessageLog()
    lookups: RecipientLookups = NoLookups()
    quarantine: Keeper = NoQuarantine()
    penpals: PenPalLog = NoPenPals()
    if durable:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        local = None if config.store.url else OutcomeStore(os.path.join(config.state_dir, OUTCOMES_FILE))
        try:
            kept = open_quarantine(config)
        except BaseException:
            if local is not None:
                local.close()
            raise
        if local is not None:
            outcomes = LocalOutcomes(local)
        else:
            outcomes, message_log, penpals, lookups = _shared_parts(config)
        quarantine = QuarantineKeeper(kept, config.dedupe_window, clock)
    return Pipeline(
        forwarder=make_forwarder(config.forward, config.myhostname),
        checks=ContentChecks(
            config.check_settings(),
            ScannerSet.build(config.virus, config.spam, config.tmp_dir or None),
            _authentication(config),
        ),
        policies=config.policies,
        outcomes=outcomes,
        quarantine=quarantine,
        message_log=message_log,
        bounce=bouncer,
        notices=Notices(notifier, config.myhostname, config.notify.templates),
        refusal_notice=bouncer.refused,
        slots=MessageSlots(-(-config.max_servers // max(1, workers)), config.limits.busy_wait),
        client_key=client_key,
        mark_key=mark_key if config.mark.enabled else None,
        signer=_signer(dkim_keys),
        sealer=arc_key,
        hostname=config.myhostname,
        dedupe_window=config.dedupe_window,
        clock=clock,
        penpals=penpals,
        lookups=lookups,
    )


def open_quarantine(config: Config) -> QuarantineStore:
    """The quarantine `config` names: in PostgreSQL when `[store] url` is set, so every node lists and
    releases every message; otherwise the gzip files and their index under quarantine_dir."""
    if not config.store.url:
        return Quarantine(config.quarantine_dir)
    # Imported here: a site without a shared store never loads the driver.
    from qsift.store.pg_quarantine import SharedQuarantine

    return SharedQuarantine(config.store, config.myhostname)


def _authentication(config: Config) -> MailAuthentication | None:
    """The checks of inbound mail, with one resolver (and its cache) for the worker's messages; None when
    neither the base policy nor any bank turns them on."""
    banks = config.policies.banks.values()
    if not config.auth.policy.check and not any(bank.auth.get("check") for bank in banks):
        return None
    # Imported here: a site without the checks never loads dnspython, dkimpy or OpenSSL.
    from qsift.auth.dns import Resolver
    from qsift.checks.authentication import MailAuthentication

    return MailAuthentication(Resolver(config.dns), config.auth, config.authserv_id)


def _shared_parts(config: Config) -> tuple[OutcomeLedger, MessageLog, PenPalLog, RecipientLookups]:
    """The outcome record, the message log, the pen pals lookup and (with `[store] sql_lookups`) the
    per-recipient lookups in PostgreSQL, on one pool that connects on first use, in the worker, after the
    fork."""
    # Imported here: a site without a shared store never loads the driver.
    from qsift.store.pg_log import SharedMessageLog
    from qsift.store.pg_lookups import SqlLookups
    from qsift.store.pg_outcomes import SharedOutcomes
    from qsift.store.pg_penpals import SharedPenPals
    from qsift.store.pg_worker import WorkerDatabase

    database = WorkerDatabase(config.store)
    lookups: RecipientLookups = (
        SqlLookups(database, config.store) if config.store.sql_lookups else NoLookups()
    )
    log = SharedMessageLog(database, config.myhostname)
    return SharedOutcomes(database), log, SharedPenPals(database), lookups


def _signer(keys: tuple[SigningKey, ...]) -> Signer:
    if not keys:
        return NoSigner()
    from qsift.auth.signing import DkimSigner  # dkimpy and OpenSSL: only where a key is configured

    return DkimSigner(keys)
