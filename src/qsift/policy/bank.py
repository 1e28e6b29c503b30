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
table (`destiny`, `quarantine`, `notify`, `spam`, `policy`, `dkim`, `auth`, `arc`) is merged key by key, a
list is replaced whole.
The client's address and context come from qsift-queue's authenticated X-Qsift-Client field, else the
connection's peer. QMQP alone carries no client: without qsift-queue's field only listener banks apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qsift.auth.settings import AuthPolicy, SealingSwitches, SigningSwitches
from qsift.checks.spam_levels import SpamLevels
from qsift.declare import BOOLEAN, STRINGS, overlay, setting
from qsift.model import Client
from qsift.policy.destiny import DestinySettings
from qsift.policy.settings import NotifyPolicy, Policy, PolicySettings, QuarantineSwitches

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The bank our own users' mail gets: built in so that RELAYCLIENT means outbound with no configuration.
ORIGINATING = "ORIGINATING"
#: The sections of the policy a bank may lay over the base: never the scanners or where things go.
SECTIONS = ("destiny", "quarantine", "notify", "spam", "policy", "dkim", "auth", "arc")


def networks(entries: list[str]) -> tuple[Network, ...]:
    """Addresses or networks as a configuration lists them; ValueError names the one at fault."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _selector(doc: str) -> bool | None:
    return setting(None, doc, kind=BOOLEAN, unset=f"false (true for {ORIGINATING})")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Bank:
    """`[policy_bank.NAME]`: what selects the bank, and the policy it lays over the base."""

    client_networks: tuple[Network, ...] = setting(
        [], "Clients in these networks get this bank.", kind=STRINGS, parse=networks
    )
    relay_client: bool | None = _selector("Mail with RELAYCLIENT set gets it.")
    authenticated: bool | None = _selector("SMTP AUTH mail gets it.")
    originating: bool | None = _selector("The mail is our users' own.")
    destiny: Mapping[str, Any] = overlay(
        DestinySettings, "A destiny per category: pass, discard, bounce or reject."
    )
    quarantine: Mapping[str, Any] = overlay(
        QuarantineSwitches, "Which categories are quarantined when not delivered."
    )
    notify: Mapping[str, Any] = overlay(NotifyPolicy, "Admin notices and recipient warnings.")
    spam: Mapping[str, Any] = overlay(SpamLevels, "The spam levels and pen pals settings a bank may change.")
    policy: Mapping[str, Any] = overlay(
        PolicySettings, "Per-recipient policy: local domains, lovers, bypass lists."
    )
    dkim: Mapping[str, Any] = overlay(SigningSwitches, "Whether this bank's originating mail is DKIM-signed.")
    auth: Mapping[str, Any] = overlay(
        AuthPolicy, "Whether this bank's inbound mail is checked (DKIM, SPF, DMARC, ARC)."
    )
    arc: Mapping[str, Any] = overlay(SealingSwitches, "Whether this bank's checked mail is ARC-sealed.")

    def selected_by(self, name: str, client: Client) -> bool:
        built_in = name == ORIGINATING
        if _unless_set(self.relay_client, built_in) and client.relay_client:
            return True
        if _unless_set(self.authenticated, built_in) and client.auth_user:
            return True
        return bool(self.client_networks) and _in_networks(client.ip, self.client_networks)


def _unless_set(value: bool | None, default: bool) -> bool:
    return default if value is None else value


class Policies:
    """The base policy, the banks, and which listener loads which bank."""

    def __init__(
        self,
        base: Policy,
        banks: Mapping[str, Bank] | None = None,
        listener_banks: Mapping[str, str] | None = None,
    ) -> None:
        self.base = base
        self.banks = dict(banks or {})
        self.banks.setdefault(ORIGINATING, Bank())
        self.listener_banks = dict(listener_banks or {})
        self._built: dict[tuple[str, ...], Policy] = {}

    def select(self, listener: str, client: Client) -> tuple[str, ...]:
        """The banks for a message, in the order they are laid on."""
        names = [self.listener_banks[listener]] if listener in self.listener_banks else []
        chosen = [n for n, bank in self.banks.items() if bank.selected_by(n, client)]
        names += [n for n in chosen if self.banks[n].client_networks]
        names += [n for n in chosen if not self.banks[n].client_networks]
        return tuple(dict.fromkeys(names))

    def policy(self, names: tuple[str, ...]) -> Policy:
        """The policy with these banks laid on, once per combination (there are few): no parsing here,
        the overlays were built with the configuration."""
        built = self._built.get(names)
        if built is None:
            built = self.base
            for name in names:
                bank = self.banks[name]
                # Unset, a bank keeps what the banks before it said (the built-in one says yes).
                originating = _unless_set(bank.originating, name == ORIGINATING or built.originating)
                overlays = {section: getattr(bank, section) for section in SECTIONS}
                built = built.overlaid(overlays, originating, name)
            self._built[names] = built
        return built


def _in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


__all__ = ["ORIGINATING", "Bank", "Policies"]
