"""`qsift serve` with an SMTP listener, forwarding to the sink, scanning with clamd and spamd, rspamd or
no spam scanner."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

from qsift.config import Config

DESTINIES = ("virus", "banned", "unchecked", "spam", "spammy", "bad_header", "oversized", "clean")


def config_text(
    workdir: Path,
    *,
    port: int,
    sink_port: int,
    clamd_socket: str,
    spam: tuple[str, str] | None,
    concurrency: int,
    workers: int,
    virus_scan: str = "parts",
) -> str:
    """`spam`: the spam scanner's type and address (spamd, unix:/path; rspamd, host:port), or None.
    `virus_scan`: what clamd is given, `[virus] scan` (a qsift without the setting gives the message)."""
    text = (
        f'log_level = 0\nstate_dir = "{workdir}/state"\ntmp_dir = "{workdir}/tmp"\n'
        # As many worker processes as amavisd-new has children ($max_servers): the default (one per CPU)
        # compared 2 qsift workers with 4 amavisd-new children (issue 14). The bench runs as root.
        f"workers = {workers}\nallow_root = true\n"
        f'[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:{port}"\n'
        f'[forward]\nmethod = "smtp:[127.0.0.1]:{sink_port}"\n'
        # As many clamd sessions and spamd checks in flight as amavisd-new has children.
        + (f'[virus]\nscan = "{virus_scan}"\n' if _knows_virus_scan() else "")
        + f'[[virus.scanners]]\ntype = "clamd"\naddress = "unix:{clamd_socket}"\n'
        f"sessions = {concurrency}\nconcurrency = {concurrency}\n"
    )
    if spam is not None:
        kind, address = spam
        text += f'[spam]\ntype = "{kind}"\naddress = "{address}"\nconcurrency = {concurrency}\n'
    known = {f.name for f in dataclasses.fields(Config)}
    if "destiny" in known:
        # Every category passes, as amavisd-new's $final_*_destiny = D_PASS: throughput, not policy.
        text += "[destiny]\n" + "".join(f'{name} = "pass"\n' for name in DESTINIES)
    if "notify_method" in known or "notify" in known:
        text += f'[notify]\nmethod = "smtp:[127.0.0.1]:{sink_port}"\n'
    return text


def _knows_virus_scan() -> bool:
    from qsift.checks.scanner_config import VirusSettings

    return "scan" in {f.name for f in dataclasses.fields(VirusSettings)}


class Qsift:
    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        sink_port: int,
        clamd_socket: str,
        spam: tuple[str, str] | None,
        concurrency: int,
        workers: int,
        virus_scan: str = "parts",
    ) -> None:
        self.workers = workers
        self.home = workdir / "qsift"
        self.home.mkdir(parents=True, exist_ok=True)
        # qsift refuses to start on a state or temp directory that others may read: they hold mail and keys.
        (self.home / "state").mkdir(mode=0o700, exist_ok=True)
        (self.home / "tmp").mkdir(mode=0o700, exist_ok=True)
        self.config = self.home / "qsift.toml"
        self.config.write_text(
            config_text(
                self.home,
                port=port,
                sink_port=sink_port,
                clamd_socket=clamd_socket,
                spam=spam,
                concurrency=concurrency,
                workers=workers,
                virus_scan=virus_scan,
            )
        )
        self.log = self.home / "qsift.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "qsift"), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def failed(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is None:
            return None
        return f"qsift exited with {self.process.returncode}: {self.log.read_text(errors='replace')[-3000:]}"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
