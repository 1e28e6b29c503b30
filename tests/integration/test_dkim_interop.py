"""qsift's DKIM signatures checked by others, against keys a real Knot DNS publishes on loopback.

dkimpy verifies through qsift's own resolver; OpenDKIM (opendkim-tools, a second, independent
implementation in C) checks the published keys against the private ones (`opendkim-testkey -k`, through
libunbound stubbed to knotd) and verifies signed messages (`opendkim-testmsg`, which reads only
/etc/resolv.conf and port 53: run in a private network and mount namespace with its own knotd on
127.0.0.1@53, as mail-auth.md 8.4 describes). RFC 8463's Appendix A message verifies with both. The key
tools run against the same server: a matching and a mismatching record.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from qsift import config, dkim_tools
from qsift.auth.dkim_keys import PrivateKey, read_private_key
from qsift.auth.dns import Resolver
from qsift.auth.settings import DnsSettings
from qsift.auth.signing import DkimSigner, SigningKey
from tests.dns_server import DnsServer, running_knot, txt_strings
from tests.unit.auth.rfc8463 import RFC8463_MESSAGE, RFC8463_ZONE

TESTKEY = shutil.which("opendkim-testkey")
TESTMSG = shutil.which("opendkim-testmsg")
UNSHARE = shutil.which("unshare")
KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"

MESSAGE = (
    b"From: Alice <alice@example.test>\n"
    b"To: bob@elsewhere.test\n"
    b"Subject: the quarterly numbers\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\n"
    b"Message-ID: <q4@example.test>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"List-Unsubscribe: <https://example.test/u/1>\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    b"\n"
    b"Numbers  attached,   as promised. \n"
    b"\n"
)


@dataclass(frozen=True)
class Keys:
    directory: Path
    rsa: SigningKey
    ed: SigningKey
    #: Published under "stale", but the record there is another key's.
    stale: SigningKey


def _genkey(directory: Path, selector: str, *ed25519: str) -> SigningKey:
    path = directory / f"{selector}.pem"
    out, err = io.StringIO(), io.StringIO()
    args = ["dkim", "genkey", "example.test", selector, "--out", str(path), *ed25519]
    parsed = _cli_args(args)
    assert dkim_tools.run(parsed, out, err) == 0, err.getvalue()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return SigningKey("example.test", selector, read_private_key(str(path)), str(path))


def _cli_args(args: list[str]) -> argparse.Namespace:
    from qsift.cli import _parser

    return _parser().parse_args(args)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("dkim-keys")
    rsa = _genkey(directory, "s2048")
    ed = _genkey(directory, "ed", "--ed25519")
    stale = _genkey(directory, "stale")
    return Keys(directory, rsa, ed, stale)


def _record(key: PrivateKey) -> str:
    return txt_strings(key.record)


@pytest.fixture(scope="module")
def server(keys: Keys) -> Iterator[DnsServer]:
    other = _genkey(keys.directory, "other")
    zones = {
        "example.test": (
            f"s2048._domainkey TXT ( {_record(keys.rsa.key)} )\n"
            f"ed._domainkey TXT {_record(keys.ed.key)}\n"
            f"stale._domainkey TXT ( {_record(other.key)} )\n"
        ),
        "dmarc.test": '_dmarc TXT "v=DMARC1; p=none"\n',
        "football.example.com": RFC8463_ZONE,
    }
    with running_knot(zones) as running:
        yield running


def _verify_with_dkimpy(message: bytes, server: DnsServer) -> list[bool]:
    """Each signature's verdict by dkimpy, its keys asked of knotd through qsift's resolver (dkimpy's own
    asynchronous lookup needs aiodns, which qsift does without)."""
    settings = DnsSettings(nameservers=(server.address,), timeout=3.0)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        found = asyncio.run(Resolver(settings).txt(name.decode()))
        return found[0].encode() if found else None

    verifier = dkim.DKIM(message)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [bool(verifier.verify(index, dnsfunc=lookup)) for index in range(count)]


def _signed(*keys: SigningKey, message: bytes = MESSAGE) -> bytes:
    signed = DkimSigner(keys).sign(message)
    assert signed.fields, signed.reason
    return (signed.fields + message).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_rfc8463_appendix_a_verifies_with_dkimpy(server: DnsServer) -> None:
    assert _verify_with_dkimpy(RFC8463_MESSAGE, server) == [True, True]


def test_qsift_rsa_and_ed25519_signatures_verify_with_dkimpy(keys: Keys, server: DnsServer) -> None:
    assert _verify_with_dkimpy(_signed(keys.rsa, keys.ed), server) == [True, True]
    assert _verify_with_dkimpy(_signed(keys.rsa).replace(b"quarterly", b"annual"), server) == [False]


# -- OpenDKIM ---------------------------------------------------------------------------------------------


def _opendkim_config(server: DnsServer, directory: Path) -> Path:
    unbound = directory / "libunbound.conf"
    unbound.write_text(
        "server:\n"
        "    do-not-query-localhost: no\n"
        '    module-config: "iterator"\n'
        '    local-zone: "test." nodefault\n'
        + "".join(
            f'stub-zone:\n    name: "{zone}"\n    stub-addr: 127.0.0.1@{server.port}\n'
            for zone in ("example.test", "football.example.com")
        )
    )
    conf = directory / "opendkim-test.conf"
    conf.write_text(f"ResolverConfiguration {unbound}\n")
    return conf


@pytest.mark.skipif(TESTKEY is None, reason="opendkim-tools is not installed")
@pytest.mark.parametrize("which", ["rsa", "ed"])
def test_opendkim_testkey_finds_the_published_key_is_ours(which: str, keys: Keys, server: DnsServer) -> None:
    assert TESTKEY is not None
    key: SigningKey = getattr(keys, which)
    conf = _opendkim_config(server, keys.directory)
    args = [TESTKEY, "-d", key.domain, "-s", key.selector, "-vvv", "-x", str(conf)]
    if which == "rsa":  # -k compares the private key too; OpenDKIM 2.11 reads only RSA ones there
        args += ["-k", key.path]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "key OK" in done.stdout + done.stderr, done


@pytest.mark.skipif(TESTKEY is None, reason="opendkim-tools is not installed")
def test_opendkim_testkey_sees_a_mismatching_record(keys: Keys, server: DnsServer) -> None:
    assert TESTKEY is not None
    conf = _opendkim_config(server, keys.directory)
    args = [TESTKEY, "-d", "example.test", "-s", "stale", "-k", keys.stale.path, "-vvv", "-x", str(conf)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0, done.stderr


_NAMESPACE_SCRIPT = """\
ip link set lo up || exit 90
mount --bind "$RESOLV" /etc/resolv.conf || exit 91
"$KNOTD" -c "$KNOT_CONF" > "$KNOT_LOG" 2>&1 &
KPID=$!
"$PYTHON" - <<'EOF' || { kill $KPID; exit 92; }
import time, dns.message, dns.query, dns.exception
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        dns.query.udp(dns.message.make_query("ready.test.", "SOA"), "127.0.0.1", port=53, timeout=0.2)
        break
    except (OSError, dns.exception.Timeout):
        time.sleep(0.05)
else:
    raise SystemExit("knotd did not answer on 127.0.0.1@53")
EOF
for message in "$@"; do
    "$TESTMSG" < "$message" > "$message.out" 2>&1
    echo "$message $?"
done
kill $KPID
wait $KPID
exit 0
"""


def _opendkim_testmsg(server: DnsServer, messages: dict[str, bytes], directory: Path) -> dict[str, int]:
    """Each message's exit status from opendkim-testmsg, with knotd on 127.0.0.1@53 in a private
    network namespace and a resolv.conf that names it bind-mounted over the real one there."""
    assert TESTMSG is not None and UNSHARE is not None
    here = directory / "namespace"
    for sub in ("run", "db"):
        (here / sub).mkdir(parents=True, exist_ok=True)
    text = (server.directory / "knot.conf").read_text()
    text = re.sub(r"listen: 127\.0\.0\.1@\d+", "listen: 127.0.0.1@53", text)
    text = text.replace(str(server.directory / "run"), str(here / "run"))
    text = text.replace(str(server.directory / "db"), str(here / "db"))
    (here / "knot.conf").write_text(text)
    (here / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    paths = []
    for name, message in messages.items():
        (here / name).write_bytes(message)
        paths.append(str(here / name))
    env = {
        **os.environ,
        "RESOLV": str(here / "resolv.conf"),
        "KNOTD": KNOTD,
        "KNOT_CONF": str(here / "knot.conf"),
        "KNOT_LOG": str(here / "knotd.log"),
        "PYTHON": sys.executable,
        "TESTMSG": TESTMSG,
    }
    script = here / "verify.sh"
    script.write_text(_NAMESPACE_SCRIPT)
    done = subprocess.run(
        [UNSHARE, "--net", "--mount", "--propagation", "private", "sh", str(script), *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if done.returncode in (90, 91) or "Operation not permitted" in done.stderr:
        pytest.skip(f"no private network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, (done.stdout, done.stderr)
    results = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    return {Path(path).name: int(status) for path, status in results.items()}


@pytest.mark.skipif(
    TESTMSG is None or UNSHARE is None or os.geteuid() != 0,
    reason="needs opendkim-tools, unshare and root (a private network namespace)",
)
def test_opendkim_testmsg_verifies_qsift_signatures(keys: Keys, server: DnsServer, tmp_path: Path) -> None:
    messages = {
        "rfc8463.eml": RFC8463_MESSAGE,
        "rsa.eml": _signed(keys.rsa),
        "ed25519.eml": _signed(keys.ed),
        "both.eml": _signed(keys.rsa, keys.ed),
        "tampered.eml": _signed(keys.rsa).replace(b"quarterly", b"annual"),
    }
    results = _opendkim_testmsg(server, messages, tmp_path)
    assert results == {
        "rfc8463.eml": 0,
        "rsa.eml": 0,
        "ed25519.eml": 0,
        "both.eml": 0,
        "tampered.eml": results["tampered.eml"],
    }, results
    assert results["tampered.eml"] != 0
    output = (tmp_path / "namespace" / "tampered.eml.out").read_text()
    assert "Bad signature" in output or "signature" in output.lower(), output


# -- the key tools ----------------------------------------------------------------------------------------


def _config_file(keys: Keys, server: DnsServer, *signing: SigningKey) -> str:
    path = keys.directory / f"qsift-{len(signing)}.toml"
    entries = "".join(
        f'[[dkim.keys]]\ndomain = "{k.domain}"\nselector = "{k.selector}"\nkey_file = "{k.path}"\n'
        for k in signing
    )
    path.write_text(f'[dns]\nnameservers = ["{server.address}"]\ntimeout = 3\n{entries}')
    config.load(str(path))
    return str(path)


def _tool(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = dkim_tools.run(_cli_args(["dkim", *args]), out, err)
    return status, out.getvalue() + err.getvalue()


def test_genkey_refuses_to_overwrite(keys: Keys) -> None:
    before = Path(keys.rsa.path).read_bytes()
    status, said = _tool("genkey", "example.test", "s2048", "--out", keys.rsa.path)
    assert status == 1
    assert "never overwritten" in said
    assert Path(keys.rsa.path).read_bytes() == before


def test_genkey_prints_a_record_the_zone_file_takes(keys: Keys, server: DnsServer) -> None:
    status, said = _tool("genkey", "example.test", "fresh", "--out", str(keys.directory / "fresh.pem"))
    assert status == 0
    start = said.index("fresh._domainkey")
    record = said[start : said.index(")", start)]
    strings = re.findall(r'"([^"]*)"', record)
    assert [len(s) for s in strings] == [255, 155]  # a 2048-bit key's record, split as knotd served it
    assert "".join(strings) == read_private_key(str(keys.directory / "fresh.pem")).record


def test_showkey_prints_every_configured_record(keys: Keys, server: DnsServer) -> None:
    status, said = _tool("showkey", "--config", _config_file(keys, server, keys.rsa, keys.ed))
    assert status == 0
    assert f"; key#1 2048-bit RSA, s=s2048, d=example.test, {keys.rsa.path}" in said
    assert f"; key#2 Ed25519, s=ed, d=example.test, {keys.ed.path}" in said
    assert said.count("._domainkey.example.test.\t3600\tIN\tTXT\t(") == 2


def test_testkey_passes_published_keys(keys: Keys, server: DnsServer) -> None:
    status, said = _tool("testkey", "--config", _config_file(keys, server, keys.rsa, keys.ed))
    assert said.splitlines() == [
        "TESTING#1 example.test: s2048._domainkey.example.test => pass",
        "TESTING#2 example.test: ed._domainkey.example.test => pass",
        "note: no DMARC record at _dmarc.example.test or a parent: the large mailbox providers want one "
        "from bulk senders (p=none at least)",
    ]
    assert status == 0  # a note is not a failure


def test_testkey_fails_a_mismatching_or_missing_record(keys: Keys, server: DnsServer) -> None:
    missing = SigningKey("example.test", "fresh", keys.rsa.key, keys.rsa.path)
    status, said = _tool("testkey", "--config", _config_file(keys, server, keys.rsa, keys.stale, missing))
    assert said.splitlines() == [
        "TESTING#1 example.test: s2048._domainkey.example.test => pass",
        "TESTING#2 example.test: stale._domainkey.example.test => fail (p= is another RSA key)",
        "TESTING#3 example.test: fresh._domainkey.example.test => fail (no TXT record: not published yet?)",
        "note: no DMARC record at _dmarc.example.test or a parent: the large mailbox providers want one "
        "from bulk senders (p=none at least)",
    ]
    assert status == 1


def test_testkey_finds_a_parent_domain_dmarc_record(server: DnsServer) -> None:
    resolver = Resolver(DnsSettings(nameservers=(server.address,), timeout=3.0))
    assert asyncio.run(dkim_tools._has_dmarc_record(resolver, "mail.dmarc.test"))
    assert not asyncio.run(dkim_tools._has_dmarc_record(resolver, "mail.example.test"))
