"""Policy banks: named sets of overrides, chosen per message by where and from whom it came.

amavisd-new's `%policy_bank`, in TOML:

    [policy_bank.ORIGINATING]          # built in: RELAYCLIENT set or an SMTP AUTH user selects it
    destiny = { spam = "bounce" }      # our own users hear about their spam instead of a 554
    policy = { bypass_banned_checks = ["@."] }

    [policy_bank.PARTNERS]
    client_networks = ["192.0.2.0/24"]
    spam = { kill_level = 12 }

    [[listen]]
    protocol = "smtp"
    address = "127.0.0.1:10026"
    policy_bank = "ORIGINATING"        # like $interface_policy{'10026'}

A bank is chosen by the listener the message came in on, by the client's network, and by the client
context (`relay_client`: qmail-smtpd had RELAYCLIENT set; `authenticated`: the client logged in with SMTP
AUTH). Banks are laid over the base policy in that order, each changing only the keys it names; a section
table (`destiny`, `quarantine`, `notify`, `spam`, `policy`) is merged key by key, a list is replaced whole.
The client's address and context come from qsift-queue's authenticated X-Qsift-Client field, else the
connection's peer. QMQP alone carries no client: without qsift-queue's field only listener banks apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qsift.checks.scanner_config import LEVEL_KEYS
from qsift.errors import ConfigError
from qsift.model import Client
from qsift.policy.settings import (
    ADMIN_KINDS,
    QUARANTINE_DEFAULTS,
    SECTIONS,
    WARN_RECIPIENTS,
    Policy,
    build_policy,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The bank our own users' mail gets: built in so that RELAYCLIENT means outbound with no configuration.
ORIGINATING = "ORIGINATING"
_SELECTORS = ("client_networks", "relay_client", "authenticated")
#: What a bank may set in each section: the per-message policy, never the scanners or where things go.
BANK_KEYS: dict[str, set[str] | None] = {
    "destiny": None,  # destiny_from_config checks the names
    "quarantine": {c.name.lower() for c in QUARANTINE_DEFAULTS},
    "notify": {*ADMIN_KINDS, *WARN_RECIPIENTS},
    "spam": set(LEVEL_KEYS),
    "policy": None,  # build_policy checks the names
}


@dataclass(frozen=True)
class Bank:
    name: str
    client_networks: tuple[Network, ...] = ()
    relay_client: bool = False
    authenticated: bool = False
    #: The overrides, as TOML tables by section, plus `originating`.
    overrides: Mapping[str, Any] | None = None

    def selected_by(self, client: Client) -> bool:
        if self.relay_client and client.relay_client:
            return True
        if self.authenticated and client.auth_user:
            return True
        return bool(self.client_networks) and _in_networks(client.ip, self.client_networks)


class Policies:
    """The base policy, the banks, and which listener loads which bank."""

    def __init__(
        self,
        base: Mapping[str, Any],
        banks: Mapping[str, Bank] | None = None,
        listener_banks: Mapping[str, str] | None = None,
        where: str = "<config>",
    ) -> None:
        self._base_sections = base
        self.banks = dict(banks or {})
        self.banks.setdefault(
            ORIGINATING,
            Bank(ORIGINATING, relay_client=True, authenticated=True, overrides={"originating": True}),
        )
        self.listener_banks = dict(listener_banks or {})
        self._where = where
        self._built: dict[tuple[str, ...], Policy] = {}
        self.base = build_policy(base, where)
        for name in self.listener_banks.values():
            if name not in self.banks:
                raise ConfigError(f"{where}: [[listen]] policy_bank {name!r} is not a [policy_bank.{name}]")
        for name in self.banks:
            self.policy((name,))  # every bank must build on its own: errors at start-up, not per message

    def select(self, listener: str, client: Client) -> tuple[str, ...]:
        """The banks for a message, in the order they are laid on."""
        names = [self.listener_banks[listener]] if listener in self.listener_banks else []
        names += [n for n, bank in self.banks.items() if bank.client_networks and bank.selected_by(client)]
        names += [
            n for n, bank in self.banks.items() if not bank.client_networks and bank.selected_by(client)
        ]
        return tuple(dict.fromkeys(names))

    def policy(self, names: tuple[str, ...]) -> Policy:
        """The policy with these banks laid on, built once per combination (there are few)."""
        if not names:
            return self.base
        built = self._built.get(names)
        if built is None:
            built = self._built[names] = self._policy(names)
        return built

    def _policy(self, names: tuple[str, ...]) -> Policy:
        sections: dict[str, Any] = {
            key: dict(value) for key, value in self._base_sections.items() if key != "originating"
        }
        originating = False
        for name in names:
            overrides = self.banks[name].overrides or {}
            for key, value in overrides.items():
                if key == "originating":
                    originating = bool(value)
                else:
                    sections[key] = {**sections.get(key, {}), **value}
        return build_policy(
            {**sections, "originating": originating},
            f"{self._where}: [policy_bank.{'+'.join(names)}]",
            banks=names,
        )


def bank_from_config(name: str, table: object, where: str) -> Bank:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    raw = dict(table)
    networks = raw.pop("client_networks", [])
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise ConfigError(f"{where} client_networks must be a list of addresses or networks")
    try:
        parsed = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
    except ValueError as exc:
        raise ConfigError(f"{where} client_networks: {exc}") from None
    default_selected = name == ORIGINATING
    flags = {key: raw.pop(key, default_selected) for key in ("relay_client", "authenticated")}
    originating = raw.get("originating", default_selected)
    for key, value in (*flags.items(), ("originating", originating)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} {key} must be true or false, not {value!r}")
    raw["originating"] = originating
    for key, value in raw.items():
        if key == "originating":
            continue
        if key not in BANK_KEYS:
            allowed = ", ".join(sorted({*BANK_KEYS, *_SELECTORS, "originating"}))
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {allowed})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} {key} must be a table")
        allowed_keys = BANK_KEYS[key]
        if allowed_keys is not None:
            for inner in value:
                if inner not in allowed_keys:
                    allowed = ", ".join(sorted(allowed_keys))
                    raise ConfigError(
                        f"{where} {key}: {inner!r} cannot be set in a bank (allowed: {allowed})"
                    )
    return Bank(name, parsed, flags["relay_client"], flags["authenticated"], raw)


def _in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


__all__ = ["ORIGINATING", "SECTIONS", "Bank", "Policies", "bank_from_config"]
