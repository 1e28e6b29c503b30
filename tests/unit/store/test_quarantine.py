from __future__ import annotations

import gzip
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qsift.errors import SpoolError
from qsift.spool import MessageSpool
from qsift.store.quarantine import Quarantine, QuarantineEntry, check_mail_id

MESSAGE = b"From: a@example.org\r\nSubject: caf\xe9\r\n\r\n\x00\xff\xfe body\r\n.\r\nno final newline"
# An address that is not UTF-8: the byte 0xE9 came in raw and is carried as a surrogate escape.
SENDER = b"caf\xe9@example.org".decode("utf-8", "surrogateescape")
RECIPIENTS = ("bob@example.net", '"odd,name"@example.net')


@pytest.fixture
def quarantine(tmp_path: Path) -> Iterator[Quarantine]:
    q = Quarantine(str(tmp_path / "q"))
    yield q
    q.close()


def keep(q: Quarantine, mail_id: str, category: str = "virus", now: float = 1000.0) -> QuarantineEntry:
    return q.store(mail_id, category, "INFECTED: Eicar-Test-Signature", SENDER, RECIPIENTS, [MESSAGE], now)


class FailingDb:
    """A stand-in for the index connection that fails statements starting with `verb`."""

    def __init__(self, real: sqlite3.Connection, verb: str) -> None:
        self.real = real
        self.verb = verb

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(self.verb):
            raise sqlite3.OperationalError("disk I/O error")
        return self.real.execute(sql, params)

    def close(self) -> None:
        self.real.close()


def break_index(q: Quarantine, verb: str) -> None:
    assert q._db is not None
    q._db = FailingDb(q._db, verb)  # type: ignore[assignment]


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} - {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm"}


def test_a_stored_message_round_trips_exactly(tmp_path: Path, quarantine: Quarantine) -> None:
    with MessageSpool.from_bytes(MESSAGE) as spool:
        entry = quarantine.store(
            "Ab3_x-9",
            "virus",
            "INFECTED: Eicar-Test-Signature",
            SENDER,
            list(RECIPIENTS),
            spool.chunks(7),
            1234.5,
        )
    expected = QuarantineEntry(
        "Ab3_x-9",
        1234.5,
        SENDER,
        RECIPIENTS,
        "virus",
        "INFECTED: Eicar-Test-Signature",
        len(MESSAGE),
        str(tmp_path / "q" / "virus-Ab3_x-9.gz"),
    )
    assert entry == expected
    assert quarantine.get("Ab3_x-9") == expected
    assert quarantine.list() == [expected]
    assert quarantine.read("Ab3_x-9") == (SENDER, RECIPIENTS, MESSAGE)
    assert gzip.decompress(Path(entry.file).read_bytes()) == (
        b"X-Qsift-Envelope-From: caf\xe9@example.org\n"
        b"X-Qsift-Envelope-To: bob@example.net\n"
        b'X-Qsift-Envelope-To: "odd,name"@example.net\n'
        b"X-Qsift-Mail-Id: Ab3_x-9\n"
        b"X-Qsift-Category: virus\n"
        b"\n" + MESSAGE
    )
    quarantine.close()
    reopened = Quarantine(str(tmp_path / "q"))
    assert reopened.read("Ab3_x-9") == (SENDER, RECIPIENTS, MESSAGE)
    reopened.close()


def test_an_empty_message_and_no_recipients_round_trip(quarantine: Quarantine) -> None:
    entry = quarantine.store("empty01", "spam", "", "", [], [], 1.0)
    assert entry.size == 0
    assert quarantine.read("empty01") == ("", (), b"")


def test_files_are_private_gzip_in_a_private_directory(tmp_path: Path, quarantine: Quarantine) -> None:
    entry = keep(quarantine, "perm0001")
    directory = tmp_path / "q"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(entry.file).st_mode) == 0o600
    assert stat.S_IMODE((directory / "index.sqlite").stat().st_mode) == 0o600
    assert Path(entry.file).read_bytes()[:2] == b"\x1f\x8b"
    assert names(directory) == {"virus-perm0001.gz"}  # no temp file left


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o750)  # noqa: S103 - a group-readable directory on purpose
    q = Quarantine(str(directory))
    keep(q, "shared01")
    q.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


def test_list_is_newest_first_and_filters_by_category(quarantine: Quarantine) -> None:
    keep(quarantine, "first001", "virus", now=10.0)
    keep(quarantine, "second01", "spam", now=30.0)
    keep(quarantine, "third001", "banned", now=20.0)
    keep(quarantine, "fourth01", "spam", now=30.0)  # same time: the later store comes first
    assert [e.mail_id for e in quarantine.list()] == ["fourth01", "second01", "third001", "first001"]
    assert [e.mail_id for e in quarantine.list(limit=2)] == ["fourth01", "second01"]
    assert [e.mail_id for e in quarantine.list(category="spam")] == ["fourth01", "second01"]
    assert quarantine.list(category="clean") == []
    assert quarantine.list(limit=0) == []
    with pytest.raises(ValueError, match="negative"):
        quarantine.list(limit=-1)
    assert quarantine.get("nosuchid") is None


def test_releases_are_recorded_durably_and_without_repeats(tmp_path: Path, quarantine: Quarantine) -> None:
    keep(quarantine, "release1")
    quarantine.mark_released("release1", ["bob@example.net"])
    quarantine.mark_released("release1", [SENDER, "bob@example.net", SENDER])
    quarantine.close()
    reopened = Quarantine(str(tmp_path / "q"))
    entry = reopened.get("release1")
    assert entry is not None and entry.released == ("bob@example.net", SENDER)
    with pytest.raises(KeyError):
        reopened.mark_released("unknown1", ["bob@example.net"])
    reopened.close()


@pytest.mark.parametrize(
    "mail_id", ["", "abc", "a" * 33, "../../etc/passwd", "abcdef\n", "abc def", "abcdé1", "a/b/c/d"]
)
def test_a_mail_id_that_could_make_a_path_is_refused(quarantine: Quarantine, mail_id: str) -> None:
    with pytest.raises(ValueError, match="mail_id"):
        keep(quarantine, mail_id)
    with pytest.raises(ValueError, match="mail_id"):
        quarantine.get(mail_id)
    with pytest.raises(ValueError, match="mail_id"):
        quarantine.read(mail_id)
    with pytest.raises(ValueError, match="mail_id"):
        quarantine.mark_released(mail_id, [])
    assert check_mail_id("A" * 32) == "A" * 32


def test_a_bad_category_or_an_address_with_a_line_break_is_refused(
    tmp_path: Path, quarantine: Quarantine
) -> None:
    with pytest.raises(ValueError, match="category"):
        keep(quarantine, "category", category="../x")
    with pytest.raises(ValueError, match="line break"):
        quarantine.store("linebrk1", "spam", "", "a@b\nX-Qsift-Category: clean", [], [b"x"], 1.0)
    with pytest.raises(ValueError, match="line break"):
        quarantine.store("linebrk1", "spam", "", "a@b", ["c@d\r"], [b"x"], 1.0)
    assert names(tmp_path / "q") == set()
    assert quarantine.list() == []


def test_reasons_that_are_not_valid_unicode_are_kept_readable(quarantine: Quarantine) -> None:
    entry = quarantine.store("reason01", "banned", "BANNED: \udce9vil.exe", "a@b", ["c@d"], [b"x"], 1.0)
    assert entry.reasons == "BANNED: \\udce9vil.exe"
    assert quarantine.get("reason01") == entry


def test_a_directory_that_cannot_be_made_fails_on_use_not_on_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the quarantine directory should be")
    q = Quarantine(str(blocker / "q"))
    with pytest.raises(SpoolError, match="cannot open quarantine"):
        keep(q, "blocked1")
    with pytest.raises(SpoolError):
        q.list()
    q.close()


def test_an_index_that_is_not_a_database_is_a_spool_error(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    directory.mkdir()
    (directory / "index.sqlite").write_bytes(b"this is not an SQLite database, not at all" * 100)
    q = Quarantine(str(directory))
    with pytest.raises(SpoolError, match="cannot open quarantine"):
        q.get("whatever")
    q.close()


def test_a_failed_file_fsync_leaves_no_file_and_no_row(
    tmp_path: Path, quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SpoolError, match="Input/output error"):
        keep(quarantine, "fsyncerr")
    monkeypatch.undo()
    assert quarantine.get("fsyncerr") is None
    assert names(tmp_path / "q") == set()


def test_a_failed_directory_fsync_leaves_no_file_and_no_row(
    tmp_path: Path, quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync_files_only(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_files_only)
    with pytest.raises(SpoolError, match="cannot sync quarantine directory"):
        keep(quarantine, "dirsync1")
    monkeypatch.undo()
    assert quarantine.get("dirsync1") is None
    assert names(tmp_path / "q") == set()


def test_a_message_that_cannot_be_read_leaves_no_temp_file(tmp_path: Path, quarantine: Quarantine) -> None:
    def failing_chunks() -> Iterator[bytes]:
        yield b"Subject: half\r\n"
        raise OSError(5, "Input/output error")

    with pytest.raises(SpoolError, match="cannot write quarantine file"):
        quarantine.store("readerr1", "spam", "", "a@b", ["c@d"], failing_chunks(), 1.0)

    def crashing_chunks() -> Iterator[bytes]:
        yield b"Subject: half\r\n"
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        quarantine.store("readerr2", "spam", "", "a@b", ["c@d"], crashing_chunks(), 1.0)
    assert names(tmp_path / "q") == set()
    assert quarantine.list() == []


def test_an_index_failure_removes_the_new_file(tmp_path: Path, quarantine: Quarantine) -> None:
    keep(quarantine, "warmup01")  # opens the index
    break_index(quarantine, "INSERT")
    with pytest.raises(SpoolError, match="cannot index"):
        keep(quarantine, "indexerr")
    assert names(tmp_path / "q") == {"virus-warmup01.gz"}
    assert [e.mail_id for e in quarantine.list()] == ["warmup01"]


def test_an_index_failure_on_a_retry_keeps_the_indexed_copy(quarantine: Quarantine) -> None:
    first = keep(quarantine, "retry001")
    break_index(quarantine, "INSERT")
    with pytest.raises(SpoolError, match="cannot index"):
        keep(quarantine, "retry001")
    assert os.path.exists(first.file)
    assert quarantine.read("retry001")[2] == MESSAGE


def test_storing_a_mail_id_again_replaces_the_earlier_copy(tmp_path: Path, quarantine: Quarantine) -> None:
    keep(quarantine, "again001", "spam", now=1.0)
    keep(quarantine, "again001", "spam", now=2.0)
    assert [(e.mail_id, e.time) for e in quarantine.list()] == [("again001", 2.0)]
    entry = keep(quarantine, "again001", "virus", now=3.0)
    assert quarantine.list() == [entry]
    assert names(tmp_path / "q") == {"virus-again001.gz"}


def test_index_read_and_release_failures_are_spool_errors(quarantine: Quarantine) -> None:
    keep(quarantine, "failing1")
    break_index(quarantine, "UPDATE")
    with pytest.raises(SpoolError, match="cannot record the release"):
        quarantine.mark_released("failing1", ["bob@example.net"])
    break_index(quarantine, "SELECT")
    with pytest.raises(SpoolError, match="cannot read quarantine index"):
        quarantine.list()


def test_a_missing_or_damaged_file_is_a_spool_error(quarantine: Quarantine) -> None:
    with pytest.raises(KeyError):
        quarantine.read("unknown1")
    gone = keep(quarantine, "missing1")
    os.unlink(gone.file)
    with pytest.raises(SpoolError, match="cannot read quarantine file"):
        quarantine.read("missing1")
    truncated = keep(quarantine, "truncat1")
    data = Path(truncated.file).read_bytes()
    Path(truncated.file).write_bytes(data[: len(data) // 2])
    with pytest.raises(SpoolError, match="cannot read quarantine file"):
        quarantine.read("truncat1")
    edited = keep(quarantine, "edited01")
    Path(edited.file).write_bytes(gzip.compress(b"X-Qsift-Envelope-From: someone@else\n\n" + MESSAGE))
    with pytest.raises(SpoolError, match="does not match"):
        quarantine.read("edited01")
    shorter = keep(quarantine, "shorter1")
    content = gzip.decompress(Path(shorter.file).read_bytes())
    Path(shorter.file).write_bytes(gzip.compress(content[:-1]))
    with pytest.raises(SpoolError, match="does not match"):
        quarantine.read("shorter1")


def test_a_closed_quarantine_refuses_work(quarantine: Quarantine) -> None:
    quarantine.close()
    quarantine.close()
    with pytest.raises(SpoolError, match="closed"):
        quarantine.list()
    with pytest.raises(SpoolError, match="closed"):
        keep(quarantine, "closed01")


def test_two_writers_share_one_directory(tmp_path: Path) -> None:
    writers = [Quarantine(str(tmp_path / "q")) for _ in range(2)]
    errors: list[BaseException] = []

    def work(q: Quarantine, prefix: str) -> None:
        try:
            for i in range(20):
                keep(q, f"{prefix}{i:04d}", now=float(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(q, f"w{n}x")) for n, q in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(writers[0].list(limit=100)) == 40
    for q in writers:
        q.close()


def test_a_thousand_entries_are_listed_fast(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # filling is not what is measured
    for i in range(1000):
        quarantine.store(f"many{i:05d}", "spam" if i % 2 else "virus", "", "a@b", ["c@d"], [b"x"], float(i))
    started = time.perf_counter()
    entries = quarantine.list(limit=1000)
    spam = quarantine.list(limit=1000, category="spam")
    elapsed = time.perf_counter() - started
    assert len(entries) == 1000 and entries[0].mail_id == "many00999" and entries[-1].mail_id == "many00000"
    assert len(spam) == 500
    assert elapsed < 1.0


def test_a_retry_finds_the_copy_kept_for_the_same_message(quarantine: Quarantine) -> None:
    kept = quarantine.store("retry0000001", "banned", "x", SENDER, RECIPIENTS, [MESSAGE], 1000.0, "f" * 64)
    quarantine.store("other0000001", "banned", "x", SENDER, RECIPIENTS, [MESSAGE], 1001.0, "e" * 64)
    found = quarantine.kept_before("f" * 64, SENDER, 900.0)
    assert found is not None and found.mail_id == kept.mail_id and found.file == kept.file
    assert quarantine.kept_before("f" * 64, SENDER, 1000.5) is None  # too old
    assert quarantine.kept_before("f" * 64, "someone@else.example", 900.0) is None
    assert quarantine.kept_before("", SENDER, 0.0) is None  # no fingerprint: never the same


def test_an_index_from_before_fingerprints_gets_the_column(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    directory.mkdir(mode=0o700)
    old = sqlite3.connect(directory / "index.sqlite")
    old.executescript(
        """
        CREATE TABLE quarantine (mail_id TEXT PRIMARY KEY, time REAL NOT NULL, sender TEXT NOT NULL,
            recipients TEXT NOT NULL, category TEXT NOT NULL, reasons TEXT NOT NULL, size INTEGER NOT NULL,
            file TEXT NOT NULL, released TEXT NOT NULL DEFAULT '[]');
        INSERT INTO quarantine VALUES ('old000000001', 5.0, '"a@example.org"', '[]', 'virus', 'x', 1,
            'virus-old000000001.gz', '[]');
        """
    )
    old.close()
    upgraded = Quarantine(str(directory))
    try:
        assert [e.mail_id for e in upgraded.list()] == ["old000000001"]
        upgraded.store("new000000001", "virus", "x", "a@example.org", [], [b"m"], 6.0, "d" * 64)
        assert upgraded.kept_before("d" * 64, "a@example.org", 0.0) is not None
    finally:
        upgraded.close()


def test_purge_deletes_what_is_older_and_sweeps_unlisted_files(
    tmp_path: Path, quarantine: Quarantine
) -> None:
    old = quarantine.store("old000000001", "virus", "x", SENDER, RECIPIENTS, [MESSAGE], 1000.0)
    new = quarantine.store("new000000001", "virus", "x", SENDER, RECIPIENTS, [MESSAGE], 3000.0)
    orphan = Path(quarantine.directory) / "spam-orphan000001.gz"  # a crash between file and index
    orphan.write_bytes(b"")
    os.utime(orphan, (1500.0, 1500.0))
    assert quarantine.purge(2000.0) == 1
    assert [e.mail_id for e in quarantine.list()] == ["new000000001"]
    assert not os.path.exists(old.file) and os.path.exists(new.file) and not orphan.exists()
    assert quarantine.get("old000000001") is None
    assert quarantine.purge(2000.0) == 0


def test_a_purge_that_cannot_reach_the_index_says_so(tmp_path: Path) -> None:
    q = Quarantine(str(tmp_path / "q"))
    q.close()
    with pytest.raises(SpoolError):
        q.purge(0.0)
