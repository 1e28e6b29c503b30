"""`qsift setup`: the files it writes for given options, how it writes them, and that the programs that
read them (sh, shellcheck, tcprules, systemd-analyze, qsift-queue's and qsift's own parsers) accept them.

The tcprules lines are read back by a parser written here from ucspi-tcp's tcprules.c, and by the real
tcprules when ucspi-tcp is installed (its cdb read back by a reader written from cdb's format).
"""

from __future__ import annotations

import io
import ipaddress
import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from qsift import cli, config
from qsift.errors import ConfigError
from qsift.queue_client.servers import Server, parse_control_file, parse_env
from qsift.serve.privileges import prepare_private_dirs
from qsift.setup import postfix, qmail, site, systemd, tcprules
from qsift.setup.command import installed_program
from qsift.setup.plan import Plan, PlannedDir, PlannedFile, carry_out

QSIFT = "/opt/qsift/bin/qsift"
QSIFT_QUEUE = "/opt/qsift/bin/qsift-queue"
INSTALLED_QSIFT = shutil.which("qsift", path=str(Path(sys.executable).parent))


def qmail_options(tmp_path: Path, **changes: object) -> qmail.QmailOptions:
    options = qmail.QmailOptions(
        qsift=QSIFT,
        qsift_queue=QSIFT_QUEUE,
        qmail_home=str(tmp_path / "qmail"),
        service_dir=str(tmp_path / "service"),
        log_dir=str(tmp_path / "log"),
        config="/etc/qsift/qsift.toml",
    )
    return replace(options, **changes)  # type: ignore[arg-type]


# --- tcprules lines, read back as tcprules.c reads them ---------------------------------------------


def parse_rule(line: str) -> tuple[str, bool, dict[str, str]]:
    """(address, allowed, variables) from one rule line, as tcprules.c's main loop takes it apart."""
    colon = line.index(":")
    while not line.startswith(("allow", "deny"), colon + 1):
        colon = line.index(":", colon + 1)
    address, rest = line[:colon], line[colon + 1 :]
    allowed = rest.startswith("allow")
    rest = rest[5:] if allowed else rest[4:]
    variables = {}
    while rest:
        assert rest[0] == ",", rest
        name, _, rest = rest[1:].partition("=")
        delimiter, rest = rest[0], rest[1:]
        value, found, rest = rest.partition(delimiter)
        assert found, f"unterminated value of {name}"
        variables[name] = value
    return address, allowed, variables


def rule_lines(fragment: str) -> list[str]:
    return [line for line in fragment.splitlines() if line and not line.startswith("#")]


def read_cdb(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, data) record of a cdb, in the order written (cr.yp.to/cdb/cdb.txt)."""
    data = path.read_bytes()
    end = min(position for position, _ in struct.iter_unpack("<II", data[:2048]))
    records, offset = [], 2048
    while offset < end:
        key_length, data_length = struct.unpack_from("<II", data, offset)
        offset += 8
        key = data[offset : offset + key_length]
        records.append((key, data[offset + key_length : offset + key_length + data_length]))
        offset += key_length + data_length
    return records


def cdb_variables(data: bytes) -> dict[str, str]:
    """tcpserver's view of a rule's data: `D` for deny, then `+NAME=value` strings, NUL-terminated."""
    entries = [entry for entry in data.split(b"\0") if entry.startswith(b"+")]
    return dict(entry[1:].decode().split("=", 1) for entry in entries)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", '""'),
        ("/var/qmail/bin/qsift-queue", '"/var/qmail/bin/qsift-queue"'),
        ("127.0.0.1:10628, 10.0.0.2 3", '"127.0.0.1:10628, 10.0.0.2 3"'),
        ('say "hi"', "'say \"hi\"'"),
        ("\"'", "|\"'|"),
    ],
)
def test_a_tcprules_value_is_quoted_with_a_delimiter_it_does_not_contain(value: str, expected: str) -> None:
    assert tcprules.quoted(value) == expected
    assert parse_rule(f":allow,X={expected}")[2] == {"X": value}


@pytest.mark.parametrize("value", ["two\nlines", "nul\0byte", "\"'|%^~+@"])
def test_a_value_tcprules_cannot_carry_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        tcprules.quoted(value)


@pytest.mark.parametrize(
    ("address", "name"), [("1.2.3.4 5", "X"), ("#127.", "X"), ("127.", "1X"), ("", "A-B")]
)
def test_a_rule_needs_a_tcprules_address_and_variable_names(address: str, name: str) -> None:
    with pytest.raises(ConfigError):
        tcprules.rule(address, [(name, "v")])


# --- qsift setup qmail: contents ---------------------------------------------------------------------


def test_run_script_sends_stderr_to_the_log_and_starts_qsift_as_its_user(tmp_path: Path) -> None:
    assert qmail.run_script(qmail_options(tmp_path)).splitlines()[0] == "#!/bin/sh"
    commands = [
        line for line in qmail.run_script(qmail_options(tmp_path)).splitlines() if not line.startswith("#")
    ]
    assert commands == [
        "exec 2>&1",
        f"exec setuidgid qsift {QSIFT} serve --config /etc/qsift/qsift.toml",
    ]


def test_log_run_script_runs_multilog_as_the_log_user(tmp_path: Path) -> None:
    options = qmail_options(tmp_path, log_user="qmaill")
    commands = [line for line in qmail.log_run_script(options).splitlines() if not line.startswith("#")]
    assert commands == [f"exec setuidgid qmaill multilog t s1000000 n20 {tmp_path}/log"]


def test_scripts_quote_paths_for_the_shell(tmp_path: Path) -> None:
    options = qmail_options(tmp_path, qsift="/opt/my qsift/qsift", config="/etc/it's.toml")
    assert """exec setuidgid qsift "/opt/my qsift/qsift" serve --config "/etc/it's.toml"\n""" in (
        qmail.run_script(options)
    )
    words = ["/a/$b", 'say "`x`\\"', "it's", "plain", "*"]
    echoed = subprocess.run(
        ["sh", "-c", f"printf '%s\\n' {qmail.shell_words(*words)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert echoed.stdout.splitlines() == words


def test_default_rules_route_every_client_to_qsift_queue_and_let_localhost_relay(tmp_path: Path) -> None:
    lines = rule_lines(qmail.rules_fragment(qmail_options(tmp_path)))
    assert lines == [
        f'127.:allow,RELAYCLIENT="",QMAILQUEUE="{QSIFT_QUEUE}",QMQPSERVERS="127.0.0.1:10628"',
        f':allow,QMAILQUEUE="{QSIFT_QUEUE}",QMQPSERVERS="127.0.0.1:10628"',
    ]


def test_rules_carry_failover_servers_the_client_key_and_the_custom_error(tmp_path: Path) -> None:
    options = qmail_options(
        tmp_path,
        servers=("10.0.0.2:10628 3", "[::1]:10629,10.0.0.9 0"),
        client_key="/etc/qsift/client.key",
        custom_error="notqmail",
        relay=("127.", "192.168.0."),
    )
    parsed = [parse_rule(line) for line in rule_lines(qmail.rules_fragment(options))]
    assert [(address, allowed) for address, allowed, _ in parsed] == [
        ("127.", True),
        ("192.168.0.", True),
        ("", True),
    ]
    everyone = {
        "QMAILQUEUE": QSIFT_QUEUE,
        "QMQPSERVERS": "127.0.0.1:10628, 10.0.0.2:10628 3, [::1]:10629, 10.0.0.9:10628 0",
        "QSIFT_CLIENT_KEY": "/etc/qsift/client.key",
        "QSIFT_CUSTOM_ERROR": "notqmail",
    }
    assert parsed[0][2] == parsed[1][2] == {"RELAYCLIENT": "", **everyone}
    assert parsed[2][2] == everyone
    servers, complaints = parse_env(everyone["QMQPSERVERS"])
    assert complaints == []
    assert servers == [
        Server("127.0.0.1", 10628),
        Server("10.0.0.2", 10628, 3),
        Server("::1", 10629),
        Server("10.0.0.9", 10628, 0),
    ]


def test_the_client_key_is_made_for_qsift_and_qmaild_alone(tmp_path: Path) -> None:
    options = qmail_options(tmp_path, client_key="/etc/qsift/client.key")
    [step] = [s for s in qmail.next_steps(options) if "client key" in s]
    assert "[client_context] key_file" in step
    assert "chown qmaild:qsift /etc/qsift/client.key; chmod 0440 /etc/qsift/client.key" in step
    # Nothing of the client-side bypass is left: the key mark mail with is qsift's alone.
    fragment = qmail.rules_fragment(options)
    assert "QSIFT_MARK_KEY" not in fragment and "QSIFT_ORIG_QUEUE" not in fragment


def test_qmqpservers_file_lists_the_same_servers_for_qsift_queue(tmp_path: Path) -> None:
    options = qmail_options(tmp_path, servers=("10.0.0.2:10628 3", "10.0.0.9 0"))
    servers, complaints = parse_control_file(qmail.qmqpservers_file(options))
    assert complaints == []
    assert servers == qmail.server_list(options)
    assert [s.weight for s in servers] == [1, 3, 0]


@pytest.mark.parametrize(
    "changes",
    [
        {"qsift": "qsift"},
        {"config": "etc/qsift.toml"},
        {"service_dir": "/var/\nservice"},
        {"user": "no body"},
        {"log_user": "-x"},
        {"listen": "127.0.0.1:99999"},
        {"listen": "127.0.0.1:10628 3"},
        {"listen": "10.0.0.1, 10.0.0.2"},
        {"servers": ("10.0.0.2:port",)},
        {"servers": ("3",)},
        {"client_key": "client.key"},
        {"custom_error": "netqmail"},
        {"relay": ("10.0.0. 1",)},
    ],
)
def test_options_that_would_make_a_broken_service_are_refused(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        qmail.plan(qmail_options(tmp_path, **changes))


def test_the_plan_is_the_service_directory_its_log_and_the_rules(tmp_path: Path) -> None:
    plan = qmail.plan(qmail_options(tmp_path))
    service = tmp_path / "service" / "qsift"
    assert [(f.path, f.mode) for f in plan.files] == [
        (f"{service}/run", 0o755),
        (f"{service}/log/run", 0o755),
        (f"{service}/tcp.smtp.qsift", 0o644),
    ]
    assert PlannedDir(str(tmp_path / "log"), owner="qmaill") in plan.directories
    with_control = qmail.plan(qmail_options(tmp_path, write_control=True))
    assert with_control.files[-1].path == f"{tmp_path}/qmail/control/qmqpservers"


# --- the generated scripts, checked by the programs that run them ------------------------------------


def all_scripts(tmp_path: Path) -> list[tuple[str, str]]:
    plain = qmail_options(tmp_path)
    odd = qmail_options(tmp_path, qsift="/opt/a b/qsift", log_dir="/var/log/$qsift", config="/etc/'q'.toml")
    return [
        (name, script)
        for options in (plain, odd)
        for name, script in (("run", qmail.run_script(options)), ("log/run", qmail.log_run_script(options)))
    ]


def test_every_script_is_valid_sh(tmp_path: Path) -> None:
    for name, script in all_scripts(tmp_path):
        result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
        assert result.returncode == 0, (name, result.stderr)


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (Debian: shellcheck)"
)
def test_every_script_passes_shellcheck(tmp_path: Path) -> None:
    for name, script in all_scripts(tmp_path):
        result = subprocess.run(
            ["shellcheck", "--shell=sh", "-"], input=script, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, (name, result.stdout)


@pytest.mark.skipif(shutil.which("tcprules") is None, reason="tcprules is not installed (Debian: ucspi-tcp)")
def test_real_tcprules_reads_the_lines_as_meant(tmp_path: Path) -> None:
    options = qmail_options(
        tmp_path,
        servers=("10.0.0.2:10628 3",),
        client_key="/etc/qsift/client.key",
        custom_error="indimail",
        qsift_queue='/opt/"odd"/qsift-queue',
    )
    fragment = qmail.rules_fragment(options)
    cdb = tmp_path / "tcp.smtp.cdb"
    result = subprocess.run(
        ["tcprules", str(cdb), str(tmp_path / "tcp.smtp.tmp")],
        input=fragment,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = read_cdb(cdb)
    expected = [parse_rule(line) for line in rule_lines(fragment)]
    assert [key.decode() for key, _ in records] == [address for address, _, _ in expected]
    assert [cdb_variables(data) for _, data in records] == [variables for _, _, variables in expected]
    assert cdb_variables(records[-1][1])["QMAILQUEUE"] == '/opt/"odd"/qsift-queue'


# --- writing: dry run, no overwrite without --force -------------------------------------------------


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path: Path) -> None:
    options = qmail_options(tmp_path, write_control=True)
    plan = qmail.plan(options)
    out = io.StringIO()
    assert carry_out(plan, dry_run=True, force=False, out=out) == 0
    assert list(tmp_path.iterdir()) == []
    for planned in plan.files:
        assert f"--- {planned.path} ({planned.mode:04o}, new) ---" in out.getvalue()
        assert planned.content in out.getvalue()


def test_files_get_their_modes_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    plan = qmail.plan(qmail_options(tmp_path))
    out = io.StringIO()
    assert carry_out(plan, dry_run=False, force=False, out=out) == 0
    for planned in plan.files:
        assert Path(planned.path).read_text() == planned.content
        assert stat.S_IMODE(os.stat(planned.path).st_mode) == planned.mode
        assert f"wrote     {planned.path}" in out.getvalue()
    for directory in plan.directories:
        assert stat.S_IMODE(os.stat(directory.path).st_mode) == 0o755
    again = io.StringIO()
    assert carry_out(plan, dry_run=False, force=False, out=again) == 0
    assert again.getvalue().count("unchanged") == len(plan.files)
    assert not [p for p in (tmp_path / "service" / "qsift").iterdir() if p.name.startswith(".")]


def test_an_edited_file_is_kept_unless_forced(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("#!/bin/sh\nexec my-own-qsift\n")
    plan = Plan((), (PlannedFile(str(run), "#!/bin/sh\nexec qsift serve\n", 0o755),))
    out = io.StringIO()
    assert carry_out(plan, dry_run=False, force=False, out=out) == 1
    assert run.read_text() == "#!/bin/sh\nexec my-own-qsift\n"
    assert f"kept      {run} (exists and differs; --force replaces it)" in out.getvalue()
    dry = io.StringIO()
    assert carry_out(plan, dry_run=True, force=False, out=dry) == 1
    assert "exists and differs: kept without --force" in dry.getvalue()
    assert carry_out(plan, dry_run=False, force=True, out=io.StringIO()) == 0
    assert run.read_text() == "#!/bin/sh\nexec qsift serve\n"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755


# --- qsift setup systemd -------------------------------------------------------------------------------


def test_unit_runs_qsift_as_its_user_in_a_sandbox() -> None:
    unit = systemd.unit(systemd.SystemdOptions(qsift=QSIFT, user="qsift"))
    lines = unit.splitlines()
    for expected in (
        "Type=exec",
        "User=qsift",
        "Group=qsift",
        f"ExecStart={QSIFT} serve --config /etc/qsift/qsift.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=qsift",
        "ReadWritePaths=/var/lib/qsift",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines, expected


def test_unit_writable_paths_and_specifiers() -> None:
    unit = systemd.unit(
        systemd.SystemdOptions(qsift="/opt/100%/qsift", state_dir="/srv/qsift", writable=("/srv/mail",))
    )
    assert "ExecStart=/opt/100%%/qsift serve --config /etc/qsift/qsift.toml" in unit
    assert "ReadWritePaths=/srv/qsift /srv/mail" in unit
    assert "StateDirectory" not in unit


@pytest.mark.parametrize("path", ["/opt/my qsift", "/opt/$HOME", "qsift", '/opt/"q"'])
def test_a_path_a_unit_cannot_hold_is_refused(path: str) -> None:
    with pytest.raises(ConfigError):
        systemd.unit(systemd.SystemdOptions(qsift=path))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(INSTALLED_QSIFT is None, reason="qsift is not installed next to the interpreter")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert INSTALLED_QSIFT is not None
    options = systemd.SystemdOptions(qsift=INSTALLED_QSIFT, unit_dir=str(tmp_path))
    assert carry_out(systemd.plan(options), dry_run=False, force=False, out=io.StringIO()) == 0
    result = subprocess.run(
        ["systemd-analyze", "verify", systemd.unit_file(options)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # It exits 0 on unknown keys and bad values too, and says so on stderr.
    assert "qsift.service" not in result.stderr, result.stderr


def test_the_state_directory_the_unit_makes_is_one_qsift_serve_accepts(tmp_path: Path) -> None:
    unit = systemd.unit(systemd.SystemdOptions(qsift=QSIFT))
    mode = next(line for line in unit.splitlines() if line.startswith("StateDirectoryMode="))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # What systemd does with StateDirectoryMode= before it starts the service.
    state_dir.chmod(int(mode.partition("=")[2], 8))
    settings = config.loads(f'state_dir = "{state_dir}"\nallow_root = true\n')
    prepare_private_dirs(settings, None)


def test_the_state_directory_note_makes_one_qsift_serve_accepts(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    settings = config.loads(f'state_dir = "{state_dir}"\nallow_root = true\n')
    note = site.state_dir_note(settings, pwd.getpwuid(os.geteuid()).pw_name)
    command = note[note.index("install -d") :].split()
    assert command[-1] == str(state_dir)
    subprocess.run(command, check=True, timeout=10)
    prepare_private_dirs(settings, None)


# --- qsift setup postfix -------------------------------------------------------------------------------


def test_master_cf_has_the_filter_transport_and_the_reinjection_listener() -> None:
    master = postfix.master_cf(postfix.PostfixOptions(maxproc=7))
    lines = [line.split() for line in master.splitlines() if line and not line.startswith("#")]
    assert lines[0] == ["qsift", "unix", "-", "-", "n", "-", "7", "smtp"]
    listener = lines.index(["127.0.0.1:10025", "inet", "n", "-", "n", "-", "7", "smtpd"])
    transport = {line[1] for line in lines[1:listener]}
    assert {"smtp_data_done_timeout=1200", "smtp_send_xforward_command=yes"} <= transport
    options = {line[1] for line in lines[listener + 1 :]}
    assert {
        "content_filter=",
        "receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters",
        "mynetworks=127.0.0.0/8",
        "smtpd_recipient_restrictions=permit_mynetworks,reject",
    } <= options
    assert "must not exceed qsift's max_sessions" in master


def test_lmtp_and_ipv6() -> None:
    options = postfix.PostfixOptions(listen="[::1]:10024", reinject="[::1]:10025", protocol="lmtp")
    master = postfix.master_cf(options)
    assert "-o lmtp_data_done_timeout=1200" in master
    assert "\n[::1]:10025 inet" in master
    assert "-o mynetworks=[::1]/128" in master
    assert "content_filter = qsift:[::1]:10024" in postfix.main_cf(options).splitlines()


@pytest.mark.parametrize(("maxproc", "sessions"), [(10, 64), (100, 100)])
def test_qsift_toml_lines_load_and_match_master_cf(maxproc: int, sessions: int) -> None:
    options = postfix.PostfixOptions(listen="127.0.0.1:10024", reinject="127.0.0.1:10026", maxproc=maxproc)
    text = postfix.qsift_toml(options)
    tomllib.loads(text)
    settings = config.loads(text)
    [listener] = settings.listeners
    assert (listener.protocol, str(listener.address)) == ("smtp", "127.0.0.1:10024")
    assert listener.limits.max_sessions == sessions
    assert listener.xforward_hosts == (ipaddress.ip_network("127.0.0.0/8"),)  # Postfix on this host
    assert settings.forward.method == "smtp:[127.0.0.1]:10026"


def test_qsift_toml_lets_postfix_on_ipv6_loopback_send_xforward() -> None:
    text = postfix.qsift_toml(postfix.PostfixOptions(listen="[::1]:10024", reinject="[::1]:10025"))
    [listener] = config.loads(text).listeners
    assert listener.xforward_hosts == (ipaddress.ip_network("::1/128"),)


@pytest.mark.parametrize(
    "options",
    [
        postfix.PostfixOptions(listen="unix:/run/qsift.sock"),
        postfix.PostfixOptions(reinject="10025"),
        postfix.PostfixOptions(maxproc=0),
        postfix.PostfixOptions(protocol="qmqp"),
    ],
)
def test_postfix_options_that_cannot_work_are_refused(options: postfix.PostfixOptions) -> None:
    with pytest.raises(ConfigError):
        postfix.check(options)


# --- what setup finds on the machine ---------------------------------------------------------------


def test_notes_for_a_missing_configuration_and_accounts(tmp_path: Path) -> None:
    settings, notes = site.load_config(str(tmp_path / "none.toml"))
    assert settings is None
    assert "does not exist" in notes[0]
    assert site.missing_accounts(["root", "no-such-user-qsift", "root"]) == [
        "There is no user no-such-user-qsift: useradd --system --home-dir /nonexistent "
        "--shell /usr/sbin/nologin no-such-user-qsift"
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("no_such_key = 1\n")
    assert site.load_config(str(broken))[0] is None


def test_notes_where_the_configuration_and_qmail_disagree() -> None:
    settings = config.loads('[client_context]\nkey_file = "/etc/qsift/other.key"\n')
    notes = site.qmail_notes(
        settings, listen="127.0.0.1:20628", client_key="/etc/qsift/client.key", qmail_home="/var/qmail"
    )
    assert "no QMQP listener on 127.0.0.1:20628" in notes[0]
    assert 'address = "127.0.0.1:20628"' in notes[0]
    assert "qmail-queue:/var/qmail/bin/qmail-queue" in notes[1]
    assert "/etc/qsift/other.key" in notes[2]
    agreeing = config.loads('[forward]\nmethod = "qmail-queue:/var/qmail/bin/qmail-queue"\n')
    assert site.qmail_notes(agreeing, listen="127.0.0.1:10628", client_key="", qmail_home="/var/qmail") == []


def test_a_note_gives_myhostname_from_qmails_control_me(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_text("mx.example.org \n")
    settings = config.loads('myhostname = "localhost.localdomain"\n')
    note = site.myhostname_note(settings, qmail_home=str(tmp_path), config_path="/etc/qsift/qsift.toml")
    assert note is not None
    assert "MAILER-DAEMON@localhost.localdomain" in note
    assert note.endswith(
        "Add to /etc/qsift/qsift.toml (qsift setup writes only its own files):\n"
        '    myhostname = "mx.example.org"'
    )
    assert config.loads(note.split("\n")[1]).myhostname == "mx.example.org"
    same = config.loads('myhostname = "MX.example.org"\n')
    assert site.myhostname_note(same, qmail_home=str(tmp_path), config_path="q.toml") is None


def test_a_note_says_why_myhostname_cannot_come_from_control_me(tmp_path: Path) -> None:
    settings = config.loads('myhostname = "localhost.localdomain"\n')
    missing = site.myhostname_note(settings, qmail_home=str(tmp_path), config_path="q.toml")
    assert missing is not None and f"Cannot read {tmp_path}/control/me (No such file or directory)" in missing
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_text("\n")
    empty = site.myhostname_note(settings, qmail_home=str(tmp_path), config_path="q.toml")
    assert empty is not None and "is empty" in empty


def test_what_keeps_other_users_from_qsift_queue_through_links() -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # tmp_path's parents are closed to others
    try:
        base.chmod(0o755)
        (base / "closed").mkdir(mode=0o700)
        (base / "closed" / "python3").write_text("")
        (base / "closed" / "python3").chmod(0o755)
        (base / "bin").mkdir(mode=0o755)
        (base / "bin" / "python").symlink_to("../closed/python3")
        program = base / "bin" / "qsift-queue"
        program.write_text(f"#!{base}/bin/python\n")
        program.chmod(0o755)
        assert site.others_cannot_run(str(program)) == [f"{base}/closed is mode 0700"]
        (base / "closed").chmod(0o755)
        assert site.others_cannot_run(str(program)) == []
        program.chmod(0o750)
        assert site.others_cannot_run(str(program)) == [f"{program} is mode 0750"]
    finally:
        shutil.rmtree(base)


def test_notes_where_the_configuration_writes_outside_the_sandbox() -> None:
    settings = config.loads(
        'tmp_dir = "/srv/tmp"\n[forward]\nmethod = "qmail-queue:/var/qmail/bin/qmail-queue"\n'
    )
    notes = site.systemd_notes(settings, state_dir="/var/lib/qsift", writable=())
    assert any("/srv/tmp" in note for note in notes)
    assert any("NoNewPrivileges" in note for note in notes)
    assert site.systemd_notes(config.loads(""), state_dir="/var/lib/qsift", writable=()) == []


# --- the command line ------------------------------------------------------------------------------


def test_cli_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "setup",
        "qmail",
        "--dry-run",
        "--service-dir",
        str(tmp_path / "s"),
        "--log-dir",
        str(tmp_path / "l"),
    ]
    args += ["--qsift", QSIFT, "--config", str(tmp_path / "qsift.toml"), "--write-control"]
    args += ["--qmail-home", str(tmp_path / "qmail")]
    assert cli.main(args) == 0
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert f"--- {tmp_path}/s/qsift/run (0755, new) ---" in out
    assert f"--- {tmp_path}/qmail/control/qmqpservers (0644, new) ---" in out
    assert "Dry run: nothing was written." in out


def test_cli_writes_the_service_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["setup", "qmail", "--service-dir", str(tmp_path / "s"), "--log-dir", str(tmp_path / "l")]
    args += ["--qsift", QSIFT, "--qsift-queue", QSIFT_QUEUE, "--user", "root", "--log-user", "root"]
    args += ["--config", str(tmp_path / "qsift.toml")]
    assert cli.main(args) == 0
    run = tmp_path / "s" / "qsift" / "run"
    assert f"exec setuidgid root {QSIFT} serve --config {tmp_path}/qsift.toml\n" in run.read_text()
    rules = (tmp_path / "s" / "qsift" / "tcp.smtp.qsift").read_text()
    assert f'QMAILQUEUE="{QSIFT_QUEUE}"' in rules
    run.write_text("edited\n")
    assert cli.main(args) == 1
    assert run.read_text() == "edited\n"
    assert cli.main([*args, "--force"]) == 0
    assert run.read_text().startswith("#!/bin/sh\n")
    assert "Next steps:" in capsys.readouterr().out


def test_cli_qmail_says_the_myhostname_of_control_me(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "qmail" / "control").mkdir(parents=True)
    (tmp_path / "qmail" / "control" / "me").write_text("mx.example.org\n")
    (tmp_path / "qsift.toml").write_text('myhostname = "other.example.org"\n')
    args = ["setup", "qmail", "--dry-run", "--qsift", QSIFT, "--qmail-home", str(tmp_path / "qmail")]
    args += ["--service-dir", str(tmp_path / "s"), "--config", str(tmp_path / "qsift.toml")]
    assert cli.main(args) == 0
    assert 'myhostname = "mx.example.org"' in capsys.readouterr().out


def test_cli_qmail_says_when_other_users_cannot_run_qsift_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "venv" / "bin" / "qsift-queue"
    program.parent.mkdir(parents=True, mode=0o700)
    program.write_text("#!/usr/bin/python3\n")
    args = ["setup", "qmail", "--dry-run", "--qsift", QSIFT, "--qsift-queue", str(program)]
    args += ["--service-dir", str(tmp_path / "s"), "--config", str(tmp_path / "qsift.toml")]
    assert cli.main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"runs {program} as qmaild (qmail-local as the recipient), who cannot run it:" in out
    assert f"{tmp_path}/venv/bin is mode 0700" in out


def test_cli_postfix_prints_without_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["setup", "postfix", "--maxproc", "5"]) == 0
    out = capsys.readouterr().out
    assert "content_filter = qsift:[127.0.0.1]:10024" in out
    assert "printed only" in out
    assert cli.main(["setup", "postfix", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "main.cf.qsift",
        "master.cf.qsift",
        "qsift.toml.postfix",
    ]


def test_cli_bad_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["setup", "qmail", "--dry-run", "--qsift", QSIFT, "--listen", "nowhere:x"]) == 2
    assert "qsift setup: --listen" in capsys.readouterr().err
    assert cli.main(["setup", "systemd", "--dry-run", "--unit-dir", "units"]) == 2


@pytest.mark.skipif(INSTALLED_QSIFT is None, reason="qsift is not installed next to the interpreter")
def test_the_running_installation_is_found() -> None:
    assert installed_program("qsift") == INSTALLED_QSIFT
    assert installed_program("qsift-queue") == str(Path(str(INSTALLED_QSIFT)).with_name("qsift-queue"))
