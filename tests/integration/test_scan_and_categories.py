"""`qsift scan` as a program, and the daemon naming each message's category in its summary line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from tests.fakes.mta import fake_mta
from tests.harness import qmqp_send, running_daemon

if TYPE_CHECKING:
    import pytest

QSIFT = str(Path(sys.executable).parent / "qsift")
PROGRAM = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100


def message(*attachments: tuple[str, bytes], date: bool = True) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@example.org"
    if date:
        mail["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    mail["Subject"] = "files"
    mail.set_content("see attached")
    for name, data in attachments:
        mail.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return mail.as_bytes()


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QSIFT, "scan", *args], capture_output=True, text=True, timeout=60, check=False)


def test_scan_json_names_category_details_and_parts(tmp_path: Path) -> None:
    files = {
        "clean.eml": message(("notes.txt", b"plain notes\n")),
        "banned.eml": message(("invoice.zip", zipped("invoice.pdf.exe", PROGRAM))),
        "badheader.eml": message(date=False),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    result = scan("--json", *(str(tmp_path / name) for name in files))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {Path(v["file"]).name: v for v in verdicts}
    assert by_file["clean.eml"]["category"] == "clean" and by_file["clean.eml"]["categories"] == ["clean"]
    banned = by_file["banned.eml"]
    assert banned["category"] == "banned"
    assert banned["details"][0]["part"] == "2/invoice.pdf.exe"
    assert "invoice.pdf.exe" in banned["details"][0]["detail"]
    member = next(p for p in banned["parts"] if p["path"] == "2/invoice.pdf.exe")
    assert member["detected_type"] == "exe-ms" and member["depth"] == 1
    assert by_file["badheader.eml"]["category"] == "bad-header"
    assert by_file["badheader.eml"]["details"] == [
        {"category": "bad-header", "minor": 7, "detail": "Date: missing", "part": ""}
    ]
    for verdict in verdicts:
        assert set(verdict) >= {"file", "category", "categories", "details", "parts"}


def test_scan_text_output_and_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(message(("run.exe", PROGRAM)))
    result = scan(str(tmp_path / "m.eml"))
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith(f"{tmp_path / 'm.eml'}: BANNED (")
    missing = scan(str(tmp_path / "nope.eml"))
    assert missing.returncode == 2 and "nope.eml" in missing.stderr
    assert scan().returncode == 2  # no message given: a usage error
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[[banned]]\nfilename = '('\n")
    result = scan("--config", str(bad_config), str(tmp_path / "m.eml"))
    assert result.returncode == 2 and "[[banned]] #1" in result.stderr


def test_a_site_rule_allows_what_the_defaults_ban(tmp_path: Path) -> None:
    config = tmp_path / "q.toml"
    config.write_text("[[banned]]\ndescription = 'our installer'\nfilename = '^setup\\.exe$'\nallow = true\n")
    (tmp_path / "m.eml").write_bytes(message(("setup.exe", PROGRAM)))
    verdict = json.loads(scan("--json", "--config", str(config), str(tmp_path / "m.eml")).stdout)
    assert verdict["category"] == "clean"


async def test_the_daemon_names_the_category_and_still_passes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qsift")
    async with (
        fake_mta() as mta,
        running_daemon(
            tmp_path,
            f"smtp:[127.0.0.1]:{mta.port}",
            protocols=("qmqp",),
            top={"destiny": {"banned": "pass"}},
        ) as daemon,
    ):
        answer = await qmqp_send(
            daemon.qmqp,
            message(("invoice.zip", zipped("invoice.pdf.exe", PROGRAM))),
            b"a@x.org",
            [b"b@y.net"],
        )
    assert answer.startswith("K250"), answer  # destiny pass for banned here: delivered, and named
    assert len(mta.deliveries) == 1
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Passed "))
    assert summary.startswith(
        "Passed BANNED (.exe-ms,invoice.pdf.exe (Windows program by its content)), QMQP"
    ), summary


def test_scan_with_a_command_line_scanner(tmp_path: Path) -> None:
    program = tmp_path / "scanner"
    program.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "d = sys.argv[-1]\n"
        "hit = any(b'EICAR-STANDARD' in open(os.path.join(d, n), 'rb').read() for n in os.listdir(d))\n"
        "print(f'{d}/email.txt: Eicar-Test-Signature FOUND' if hit else f'{d}/email.txt: OK')\n"
        "sys.exit(1 if hit else 0)\n"
    )
    program.chmod(0o755)
    config = tmp_path / "q.toml"
    config.write_text(
        f'[[virus.scanners]]\ntype = "command"\nname = "fake"\ncommand = "{program}"\nargs = ["{{}}"]\n'
    )
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    # In the body as it is: this fake scanner, unlike a real one, does not decode MIME.
    (tmp_path / "v.eml").write_bytes(b"From: a@x\nDate: Wed, 25 Nov 2026 12:00:00 +0000\n\n" + eicar + b"\n")
    (tmp_path / "c.eml").write_bytes(message(("notes.txt", b"notes")))
    result = scan("--json", "--config", str(config), str(tmp_path / "v.eml"), str(tmp_path / "c.eml"))
    infected, clean = (json.loads(line) for line in result.stdout.splitlines())
    assert infected["category"] == "virus" and infected["details"][0]["detail"] == "Eicar-Test-Signature"
    assert clean["category"] == "clean"
    config.write_text('[[virus.scanners]]\ntype = "command"\ncommand = "/nonexistent/scanner"\n')
    failed = json.loads(scan("--json", "--config", str(config), str(tmp_path / "c.eml")).stdout)
    assert failed["category"] == "unchecked" and "virus scanner failure" in failed["details"][-1]["detail"]
