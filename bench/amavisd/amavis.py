"""amavisd-new (Debian's amavisd 2.13) in the foreground: SMTP in on a loopback port, SMTP out to a sink.

Checks as amavisd-new is normally run: ClamAV through clamd (`ask_daemon`, CONTSCAN of the decoded parts
directory), SpamAssassin embedded (loaded and compiled in the master before it forks), MIME decoding,
banned-name and header checks. Every final destiny is D_PASS and nothing is quarantined or notified, so every
message is forwarded: the benchmark measures throughput, not policy. The checks are *not* bypassed.

amavisd refuses to keep running as root, so it drops to Debian's `amavis` user; its home, temp base and
SpamAssassin helper home are in the benchmark's temporary directory and owned by that user. clamd runs as
root and so can read amavisd's 0750 temp directories.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

AMAVISD = "/usr/sbin/amavisd"
USER = "amavis"

CONFIG = """\
use strict;
$daemon_user  = '{user}';
$daemon_group = '{user}';
$MYHOME   = '{home}';
$TEMPBASE = "$MYHOME/tmp";
$ENV{{TMPDIR}} = $TEMPBASE;
$db_home  = "$MYHOME/db";
$helpers_home = "$MYHOME/helpers";
$pid_file  = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$QUARANTINEDIR = undef;

# External programs as Debian's /etc/amavis/conf.d/01-debian names them (not read with -c): file(1) and
# the decoders. Without $path amavisd finds none of them.
$ENV{{PATH}} = $path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin';
$file   = 'file';
$gzip   = 'gzip';
$bzip2  = 'bzip2';
$lzop   = 'lzop';
$rpm2cpio   = ['rpm2cpio.pl','rpm2cpio'];
$cabextract = 'cabextract';
$uncompress = ['uncompress', 'gzip -d', 'zcat'];
$unfreeze = undef;
$arc        = ['nomarch', 'arc'];
$unarj      = ['arj', 'unarj'];
$unrar      = ['unrar-free'];
$zoo    = 'zoo';
$lha    = undef;
$pax    = 'pax';
$cpio   = 'cpio';
$ar     = 'ar';
$ripole = 'ripole';
$dspam  = undef;

$myhostname = 'bench.example.net';
$mydomain = 'example.net';
@local_domains_maps = (['.']);    # every recipient is local: spam headers are added, as qsift adds them

$max_servers = {servers};
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$unix_socketname = undef;         # no AM.PDP socket
$forward_method = 'smtp:[127.0.0.1]:{sink}';
$notify_method  = 'smtp:[127.0.0.1]:{sink}';

$do_syslog = 0;
$LOGFILE = "$MYHOME/amavisd.log";
$log_level = 0;
$enable_db = 0;                   # no BerkeleyDB nanny/snmp counters
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;

@bypass_virus_checks_maps = (0);
@bypass_spam_checks_maps = ({bypass_spam});   # (1): SpamAssassin is not even loaded
@bypass_banned_checks_maps = (0);
@bypass_header_checks_maps = (0);
$final_virus_destiny      = D_PASS;
$final_banned_destiny     = D_PASS;
$final_unchecked_destiny  = D_PASS;
$final_spam_destiny       = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$spam_admin = undef;
$banned_admin = undef;
$bad_header_admin = undef;
$warnbadhsender = 0;
$virus_quarantine_to = undef;
$banned_quarantine_to = undef;
$unchecked_quarantine_to = undef;
$spam_quarantine_to = undef;
$bad_header_quarantine_to = undef;
$clean_quarantine_to = undef;
$archive_quarantine_to = undef;

# Debian's banned-name rules (20-debian_defaults, not read with -c): qsift checks its own defaults too.
$banned_filename_re = new_RE(
  qr'\\.[^./]*\\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\\.?$'i,
  qr'\\{{[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}\\}}?$'i,
  qr'^application/x-msdownload$'i,
  qr'^application/x-msdos-program$'i,
  qr'^application/hta$'i,
  qr'.\\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$'i,
  qr'^\\.(exe-ms)$',
);

$sa_local_tests_only = 1;
$sa_siteconfigpath = '{sa_site}';
$sa_mail_body_size_limit = 400*1024;   # qsift's [spam] max_size default
$sa_tag_level_deflt  = 2.0;            # qsift's [spam] defaults
$sa_tag2_level_deflt = 6.2;
$sa_kill_level_deflt = 6.9;
$sa_dsn_cutoff_level = 10;

@av_scanners = (
  ['ClamAV-clamd',
    \\&ask_daemon, ["CONTSCAN {{}}\\n", '{clamd_socket}'],
    qr/\\bOK$/m, qr/\\bFOUND$/m,
    qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ],
);
@av_scanners_backup = ();

1;
"""


class Amavisd:
    """One amavisd master and its children, under `workdir/amavis`."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        sink_port: int,
        servers: int,
        clamd_socket: str,
        sa_site: Path,
        spam: bool = True,
    ) -> None:
        self.home = workdir / "amavis"
        self.port = port
        self.workers = servers
        # amavisd insists that its config file belongs to root (and is not writable by its own user).
        self.config = workdir / "amavisd.conf"
        entry = pwd.getpwnam(USER)
        for sub in ("tmp", "db", "helpers"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(
                user=USER,
                home=self.home,
                servers=servers,
                port=port,
                sink=sink_port,
                sa_site=sa_site,
                clamd_socket=clamd_socket,
                bypass_spam=0 if spam else 1,
            )
        )
        for path in [self.home, *self.home.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # The parents must be traversable by the amavis user.
        for parent in self.home.parents:
            if parent == Path("/tmp") or parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        self.process: subprocess.Popen[bytes] | None = None
        self.output = self.home / "amavisd.out"

    @property
    def log(self) -> Path:
        return self.home / "amavisd.log"

    def start(self) -> None:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [AMAVISD, "-c", str(self.config), "foreground"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )

    def failed(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is None:
            return None
        return f"amavisd exited with {self.process.returncode}: {self.tail()}"

    def tail(self) -> str:
        text = self.output.read_text(errors="replace")[-3000:]
        if self.log.exists():
            text += "\n--- log ---\n" + self.log.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # The master passes TERM on to its children and waits for them.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        time.sleep(0.2)

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
