"""The world ARC tests seal and validate in: RSA keys made by `opendkim-genkey`, each published at
`selector._domainkey.domain` by a real knotd on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qsift.auth.arc import ArcKey
from qsift.auth.dns import Resolver
from qsift.auth.settings import DnsSettings
from tests.dns_server import running_knot, txt_strings
from tests.unit.auth import opendkim


@dataclass(frozen=True)
class ArcWorld:
    keys: Mapping[str, ArcKey]
    #: Each key's PEM file, for settings that name a `key_file`.
    paths: Mapping[str, Path]
    #: knotd's address, for DnsSettings.nameservers.
    address: str

    def resolver(self, timeout: float = 2.0) -> Resolver:
        return Resolver(DnsSettings(nameservers=(self.address,), timeout=timeout))


@contextmanager
def arc_world(
    directory: Path, keys: Mapping[str, tuple[str, str]], more_records: Mapping[str, str] | None = None
) -> Iterator[ArcWorld]:
    """A knotd serving a fresh key for each name in `keys` (name -> (domain, selector)), and the zone
    lines in `more_records` (domain -> lines) beside them."""
    zones = dict(more_records or {})
    published: dict[str, ArcKey] = {}
    paths: dict[str, Path] = {}
    for name, (domain, selector) in keys.items():
        made = opendkim.genkey(directory / name, domain, selector)
        zones[domain] = f"{selector}._domainkey TXT {txt_strings(made.record)}\n" + zones.get(domain, "")
        published[name] = ArcKey(domain, selector, made.private_pem)
        paths[name] = directory / name / f"{selector}.private"
    with running_knot(zones) as server:
        yield ArcWorld(published, paths, server.address)


def ed25519_key(path: Path) -> Path:
    """An Ed25519 key from `openssl genpkey`, which ARC cannot seal with (and OpenDKIM does not make)."""
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ED25519", "-out", str(path)], check=True, capture_output=True
    )
    return path
