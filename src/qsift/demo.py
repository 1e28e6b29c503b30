"""`make demo`: start qsift on embedded defaults, push sample messages through qsift-queue, show outcomes.

The forward target is a maildir in a scratch directory, so the demo needs no MTA. Everything runs on
127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

from qsift.wire.qmail_queue import encode_envelope

_DATE = b"Date: Wed, 25 Nov 2026 12:00:00 +0000\n"


def _banned_sample() -> bytes:
    """A message with a zip holding "invoice.pdf.exe", a DOS program that does nothing."""
    program = b"MZ" + b"\x00" * 62 + b"\xcd\x20" * 100
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("invoice.pdf.exe", program)
    mail = EmailMessage()
    mail["From"] = "billing@example.com"
    mail["To"] = "bob@example.net"
    mail["Subject"] = "Your invoice"
    mail["Message-ID"] = "<demo-5@example.com>"
    mail["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    mail.set_content("Please see the attached invoice.")
    mail.add_attachment(buffer.getvalue(), maintype="application", subtype="zip", filename="invoice.zip")
    return mail.as_bytes()


SAMPLES: tuple[tuple[str, bytes, bytes, list[bytes]], ...] = (
    (
        "a clean message",
        b"From: alice@example.org\nTo: bob@example.net\nSubject: hello\nMessage-ID: <demo-1@example.org>\n"
        + _DATE
        + b"\nHello Bob.\n.leading dot line\n",
        b"alice@example.org",
        [b"bob@example.net"],
    ),
    (
        "a message to three recipients, no final newline",
        b"From: alice@example.org\nSubject: team\nMessage-ID: <demo-2@example.org>\n"
        + _DATE
        + b"\nno newline at the end",
        b"alice@example.org",
        [b"bob@example.net", b"carol@example.net", b"dave@example.net"],
    ),
    (
        "a bounce (null sender)",
        b"From: MAILER-DAEMON@example.org\nSubject: failure notice\n"
        b"Message-ID: <demo-3@example.org>\n" + _DATE + b"\nsorry\n",
        b"",
        [b"alice@example.org"],
    ),
    (
        "a zip holding invoice.pdf.exe (BANNED: bounced, the DSN to the sender lands in the maildir)",
        _banned_sample(),
        b"billing@example.com",
        [b"bob@example.net"],
    ),
    (
        "a message over the demo's 1 MiB size limit",
        b"From: alice@example.org\nSubject: big\nMessage-ID: <demo-4@example.org>\n\n"
        + b"x" * 76
        + b"\n" * 0
        + (b"y" * 76 + b"\n") * 15000,
        b"alice@example.org",
        [b"bob@example.net"],
    ),
)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="qsift-demo-"))
    port = _free_port()
    maildir = workdir / "Maildir"
    config = workdir / "qsift.toml"
    config.write_text(
        f'state_dir = "{workdir / "state"}"\n'
        "log_level = 1\n"
        # The quick start runs as root; a real installation sets `user` and qsift drops to it.
        "allow_root = true\n"
        "[limits]\nmessage_size = 1048576\n"
        "[forward]\n"
        f'method = "maildir:{maildir}"\n'
        "[[listen]]\n"
        'protocol = "qmqp"\n'
        f'address = "127.0.0.1:{port}"\n'
    )
    bindir = Path(sys.executable).parent
    print(f"demo: qsift serve --config {config}  (QMQP on 127.0.0.1:{port}, forward to {maildir})")
    daemon = subprocess.Popen([str(bindir / "qsift"), "serve", "--config", str(config)])
    try:
        _wait_for_port(port, daemon)
        env = dict(os.environ, QMQPSERVERS=f"127.0.0.1:{port}")
        for title, message, sender, recipients in SAMPLES:
            _push(bindir / "qsift-queue", env, title, message, sender, recipients)
        _push_bad_envelope(bindir / "qsift-queue", env)
        delivered = sorted((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []
        print(f"demo: {len(delivered)} message(s) in {maildir}/new")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _push(
    program: Path, env: dict[str, str], title: str, message: bytes, sender: bytes, rcpts: list[bytes]
) -> None:
    code, stderr = _run_queue(program, env, message, encode_envelope(sender, rcpts))
    print(f"demo: {title}: qsift-queue exit {code}: {stderr or '(no text)'}")


def _push_bad_envelope(program: Path, env: dict[str, str]) -> None:
    code, stderr = _run_queue(program, env, b"Subject: x\n\nbody\n", b"Fsender@example.org\0Trcpt@exa")
    print(f"demo: a truncated envelope: qsift-queue exit {code}: {stderr or '(no text)'}")


def _run_queue(program: Path, env: dict[str, str], message: bytes, envelope: bytes) -> tuple[int, str]:
    """Run qsift-queue exactly as qmail-smtpd does: message on fd 0, envelope on fd 1."""
    envelope_r, envelope_w = os.pipe()
    with tempfile.TemporaryFile() as body:
        body.write(message)
        body.seek(0)
        child = subprocess.Popen(
            [str(program)], stdin=body, stdout=envelope_r, stderr=subprocess.PIPE, env=env
        )
        os.close(envelope_r)
        with os.fdopen(envelope_w, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(envelope)
        _, err = child.communicate(timeout=60)
    return child.returncode, err.decode("utf-8", "replace").strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"demo: qsift exited with {daemon.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("demo: qsift did not start listening within 20 s")


if __name__ == "__main__":
    sys.exit(main())
