"""The pipeline's record of outcomes, its message log (written, and asked for pen pals), its SQL lookups
and its notice about refused recipients, as protocols, with the null object that stands for each where a
setup goes without (`qsift scan`, `qsift release`, a single node without `[store] url`, tests).

The blocked acts (quarantine, bounce, notices) have theirs in blocked.py, the checks in checking.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from qsift.model import Envelope, Outcome, RecipientResult
from qsift.spool import MessageBody
from qsift.store.amavisd_lookups import FoundSettings
from qsift.store.message_log import LoggedMessage
from qsift.store.outcomes import OutcomeRecord
from qsift.store.penpals import PenPalQuery, SentMail


class OutcomeLedger(Protocol):
    """What was delivered to whom, to answer a retry without delivering twice: on one node in SQLite
    (store/outcomes.py, in threads), shared in PostgreSQL (store/pg_outcomes.py). None of the calls may
    block the event loop. The shared one raises StoreUnreachable when it cannot answer."""

    async def lookup(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]: ...

    async def record(self, keys: Sequence[str], mail_id: str, answer: str, now: float) -> None: ...

    async def purge(self, older_than: float) -> int: ...

    async def close(self) -> None: ...


class NoOutcomeRecord:
    """Nothing is remembered: every retry is delivered again."""

    async def lookup(self, keys: Sequence[str], not_before: float) -> dict[str, OutcomeRecord]:
        return {}

    async def record(self, keys: Sequence[str], mail_id: str, answer: str, now: float) -> None:
        pass

    async def purge(self, older_than: float) -> int:
        return 0

    async def close(self) -> None:
        pass


class MessageLog(Protocol):
    """Every finished message in amavisd-new's msgs, msgrcpt and maddr tables (store/pg_log.py), written
    once its outcome is certain. It raises StoreUnreachable when it cannot; the answer stands regardless."""

    async def log(self, message: LoggedMessage) -> None: ...

    async def purge(self, older_than: float) -> int: ...

    async def close(self) -> None: ...


class RecipientLookups(Protocol):
    """Per-recipient settings and sender lists from amavisd-new's SQL tables (store/pg_lookups.py); raises
    StoreUnreachable when it cannot answer."""

    async def found(
        self, sender: str, recipients: Sequence[str], delimiter: str = ""
    ) -> dict[str, FoundSettings]: ...

    async def close(self) -> None: ...


class NoMessageLog:
    """Nothing is logged but the summary line: a single node keeps no message log."""

    async def log(self, message: LoggedMessage) -> None:
        pass

    async def purge(self, older_than: float) -> int:
        return 0

    async def close(self) -> None:
        pass


class NoLookups:
    """No SQL lookups: the TOML alone decides."""

    async def found(
        self, sender: str, recipients: Sequence[str], delimiter: str = ""
    ) -> dict[str, FoundSettings]:
        return {}

    async def close(self) -> None:
        pass


class PenPalLog(Protocol):
    """amavisd-new's message log, asked whether recipients wrote to the sender before (store/pg_penpals.py).
    Raises StoreUnreachable when it cannot answer."""

    async def find(self, query: PenPalQuery) -> dict[str, SentMail]: ...


class NoPenPals:
    """No message log to ask (no `[store] url`): nobody is anyone's pen pal."""

    async def find(self, query: PenPalQuery) -> dict[str, SentMail]:
        return {}


class RefusalNotice(Protocol):
    """Tells the sender about recipients the downstream refused while others took the message."""

    async def __call__(
        self, outcome: Outcome, envelope: Envelope, refused: list[RecipientResult], spool: MessageBody
    ) -> Outcome: ...


class NoRefusalNotice:
    """The refused recipients go unmentioned (no DSN can be sent)."""

    async def __call__(
        self, outcome: Outcome, envelope: Envelope, refused: list[RecipientResult], spool: MessageBody
    ) -> Outcome:
        return outcome
