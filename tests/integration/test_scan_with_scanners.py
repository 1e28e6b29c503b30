"""`qsift scan` and the daemon with real scanners: clamd on ClamAV's test files, clamscan as a command
scanner and as a backup, spamd on GTUBE; and what a dead scanner does to the answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.clamd_daemon import DATABASE, running_clamd
from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon
from tests.spamd_daemon import running_spamd, spamd_path

QSIFT = str(Path(sys.executable).parent / "qsift")
TESTFILES = Path("/usr/share/clamav-testfiles")
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLAMSCAN = shutil.which("clamscan")


def mail(name: str, payload: bytes) -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    message["Subject"] = "test file"
    message.set_content("attached")
    message.add_attachment(payload, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes()


def clamd_config(address: str, scan: str) -> str:
    return f'[virus]\nscan = "{scan}"\n[[virus.scanners]]\ntype = "clamd"\naddress = "{address}"\n'


def scan_json(config: Path, *files: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [QSIFT, "scan", "--json", "--config", str(config), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.skipif(not TESTFILES.is_dir(), reason="Debian package clamav-testfiles is not installed")
@pytest.mark.parametrize("scan", ["message", "parts"])
def test_every_clamav_test_file_is_found_through_qsift_scan_with_clamd(tmp_path: Path, scan: str) -> None:
    files = []
    for test_file in sorted(TESTFILES.iterdir()):
        message = tmp_path / f"{test_file.name}.eml"
        message.write_bytes(mail(test_file.name, test_file.read_bytes()))
        files.append(message)
    with running_clamd(tmp_path / "clamd") as clamd:
        config = tmp_path / "qsift.toml"
        config.write_text(clamd_config(clamd.unix_address, scan))
        verdicts = scan_json(config, *files)
    missed = [v["file"] for v in verdicts if v["category"] != "virus"]
    assert not missed
    assert len(verdicts) == len(files) >= 40


@pytest.mark.skipif(CLAMSCAN is None, reason="clamscan (Debian package clamav) is not installed")
def test_clamscan_as_a_command_line_backup_when_clamd_is_down(tmp_path: Path) -> None:
    config = tmp_path / "qsift.toml"
    config.write_text(
        '[[virus.scanners]]\ntype = "clamd"\naddress = "unix:/nonexistent/clamd.sock"\n'
        "[[virus.backup_scanners]]\n"
        'type = "command"\nname = "ClamAV-clamscan"\n'
        f'command = "clamscan"\nargs = ["--stdout", "--no-summary", "-d", "{DATABASE}", "-r", "{{}}"]\n'
        "clean = [0]\ninfected = [1]\n"
    )
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    (tmp_path / "v.eml").write_bytes(mail("eicar.com", eicar))
    (tmp_path / "c.eml").write_bytes(mail("notes.txt", b"plain notes\n"))
    infected, clean = scan_json(config, tmp_path / "v.eml", tmp_path / "c.eml")
    assert infected["category"] == "virus", infected
    assert "Eicar-Test-Signature" in str(infected["details"])
    assert clean["category"] == "clean", clean


@pytest.mark.skipif(spamd_path() is None, reason="spamd (Debian package spamassassin) is not installed")
def test_gtube_is_spam_and_a_note_is_not(tmp_path: Path) -> None:
    (tmp_path / "gtube.eml").write_bytes(
        b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: test\n\n" + GTUBE + b"\n"
    )
    (tmp_path / "note.eml").write_bytes(
        b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: lunch\n\nLunch at noon?\n"
    )
    with running_spamd() as spamd:
        config = tmp_path / "qsift.toml"
        config.write_text(f'[spam]\ntype = "spamd"\naddress = "{spamd.unix_address}"\n')
        gtube, note = scan_json(config, tmp_path / "gtube.eml", tmp_path / "note.eml")
    assert gtube["category"] == "spam" and "GTUBE" in str(gtube["details"]), gtube
    assert note["category"] == "clean", note


@pytest.mark.parametrize("scan", ["message", "parts"])
async def test_the_daemon_with_clamd_names_the_virus_and_holds_mail_when_clamd_dies(
    tmp_path: Path, scan: str
) -> None:
    clean = mail("notes.txt", b"plain notes\n")
    infected = mail("clam.exe", (TESTFILES / "clam.exe").read_bytes()) if TESTFILES.is_dir() else None
    with running_clamd(tmp_path / "clamd") as clamd:
        virus = {"scan": scan, "scanners": [{"type": "clamd", "address": clamd.unix_address, "timeout": 5}]}
        async with (
            fake_mta() as mta,
            running_daemon(
                tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top={"virus": virus}
            ) as daemon,
        ):
            assert (await qmqp_send(daemon.qmqp, clean, b"a@x.org", [b"b@y.net"])).startswith("K")
            if infected is not None:
                answer = await qmqp_send(daemon.qmqp, infected, b"a@x.org", [b"b@y.net"])
                # virus: bounce, and no DSN (every virus is taken to fake its sender): not delivered
                assert "DISCARD(bounce.suppressed: virus that fakes its sender)" in answer, answer
            clamd.stop()
            held = await qmqp_send(daemon.qmqp, clean + b"again\n", b"a@x.org", [b"b@y.net"])
    assert held.startswith("Z451 4.5.0") and "virus scanner failure" in held, held
    assert len(mta.deliveries) == 1


@pytest.mark.skipif(not TESTFILES.is_dir(), reason="Debian package clamav-testfiles is not installed")
@pytest.mark.parametrize("scan", ["message", "parts"])
def test_members_clamd_cannot_reach_are_scanned_separately(tmp_path: Path, scan: str) -> None:
    import lzma

    program = (TESTFILES / "clam.exe").read_bytes()
    packed = {
        # clamd 1.4 does not unpack raw LZMA (measured); qsift's decoder does, and passes the member on.
        "clam.exe.lzma": lzma.compress(program, format=lzma.FORMAT_ALONE),
        # A zip it does open: scanned in the raw message only.
        "clam.zip": (TESTFILES / "clam.zip").read_bytes(),
        # A zip whose member is LZMA-compressed, which clamd does not inflate (measured).
        "lzma.zip": _zip_lzma(program),
    }
    files = []
    for name, data in packed.items():
        (tmp_path / f"{name}.eml").write_bytes(mail(name, data))
        files.append(tmp_path / f"{name}.eml")
    with running_clamd(tmp_path / "clamd") as clamd:
        config = tmp_path / "qsift.toml"
        config.write_text(clamd_config(clamd.unix_address, scan))
        lzma_verdict, zip_verdict, zip_lzma_verdict = scan_json(config, *files)
    assert lzma_verdict["category"] == "virus", lzma_verdict
    virus = next(d for d in lzma_verdict["details"] if d["category"] == "virus")  # type: ignore[attr-defined]
    assert virus["part"] == "2/clam.exe" and "ClamAV-Test-File" in virus["detail"]
    assert zip_verdict["category"] == "virus"
    assert zip_lzma_verdict["category"] == "virus", zip_lzma_verdict


EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def test_given_the_parts_clamd_names_the_part_and_gets_what_qsift_could_not_read(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message.set_content("first")
    message.add_attachment(b"harmless", maintype="application", subtype="octet-stream", filename="a.bin")
    message.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="b.bin")
    (tmp_path / "v.eml").write_bytes(message.as_bytes())
    with running_clamd(tmp_path / "clamd") as clamd:
        config = tmp_path / "parts.toml"
        config.write_text(clamd_config(clamd.unix_address, "parts"))
        (named,) = scan_json(config, tmp_path / "v.eml")
        # Two parts is all qsift reads here: the third, which it lists by name only, holds the virus. The
        # message is given to clamd whole as well, and clamd reads it.
        config.write_text("[decode]\nmax_parts = 2\n" + clamd_config(clamd.unix_address, "parts"))
        (unread,) = scan_json(config, tmp_path / "v.eml")
    virus = next(d for d in named["details"] if d["category"] == "virus")  # type: ignore[attr-defined]
    assert virus["part"] == "3" and "Eicar-Test-Signature" in virus["detail"], named
    # Had clamd been given the two parts only, the message would be unchecked, not a virus.
    assert unread["category"] == "virus", unread


def _zip_lzma(data: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("clam.exe", data)
    return buffer.getvalue()


@pytest.mark.skipif(spamd_path() is None, reason="spamd (Debian package spamassassin) is not installed")
async def test_passed_spam_carries_amavisd_news_fields_and_the_subject_tag(tmp_path: Path) -> None:
    gtube = b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: offer\n\n" + GTUBE + b"\n"
    with running_spamd() as spamd:
        top = {"spam": {"type": "spamd", "address": spamd.unix_address}, "destiny": {"spam": "pass"}}
        async with (
            fake_mta() as mta,
            running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
        ):
            answer = await qmqp_send(daemon.qmqp, gtube, b"a@x.org", [b"b@y.net"])
    assert answer.startswith("K250"), answer
    [delivered] = mta.deliveries
    head = delivered.body.split(b"\r\n\r\n", 1)[0]
    assert b"X-Spam-Flag: YES\r\n" in head and b"X-Spam-Status: Yes, score=" in head and b"GTUBE" in head
    assert head.endswith(b"\r\nSubject: ***Spam*** offer")
    assert delivered.body.endswith(GTUBE + b"\r\n")


@pytest.mark.skipif(spamd_path() is None, reason="spamd (Debian package spamassassin) is not installed")
async def test_spam_is_rejected_by_default(tmp_path: Path) -> None:
    gtube = b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\nSubject: offer\n\n" + GTUBE + b"\n"
    with running_spamd() as spamd:
        top = {"spam": {"type": "spamd", "address": spamd.unix_address}}
        async with (
            fake_mta() as mta,
            running_daemon(tmp_path, f"smtp:[127.0.0.1]:{mta.port}", protocols=("qmqp",), top=top) as daemon,
        ):
            answer = await qmqp_send(daemon.qmqp, gtube, b"a@x.org", [b"b@y.net"])
    assert answer.startswith("D554 5.7.0 Reject, id=") and answer.endswith(" - SPAM"), answer
    assert mta.deliveries == []
