"""What the authentication checks found, as RFC 8601 says it: one result per method (and per DKIM
signature), each with its reason and the properties that name what was checked.

The checks (auth/dkim.py, spf.py, dmarc.py, arc.py) each return `MethodResult`s; `AuthResults` gathers a
message's, for the Authentication-Results field, the summary log line, `qsift scan --json` and policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: RFC 8601 §2.7 result values, by method (DKIM: §2.7.1, SPF: §2.7.2 and RFC 7208 §2.6, DMARC: RFC 7489
#: §11.2, ARC: RFC 8617 §4.4).
RESULTS = {
    "dkim": ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror"),
    "spf": ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"),
    "dmarc": ("none", "pass", "fail", "temperror", "permerror"),
    "arc": ("none", "pass", "fail"),
}


@dataclass(frozen=True)
class MethodResult:
    """One `method=result` of an Authentication-Results field."""

    method: str
    result: str
    #: Free text for people (`reason="..."`), "" for none.
    reason: str = ""
    #: `ptype.property=value` pairs in order: ("header.d", "example.org"), ("smtp.mailfrom", "a@b").
    properties: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.result not in RESULTS.get(self.method, (self.result,)):
            raise ValueError(f"{self.method}={self.result} is not an RFC 8601 result")


@dataclass(frozen=True)
class DmarcVerdict:
    """What DMARC asks of the receiver for this message: the policy in force after `pct` (RFC 7489 §6.6.4),
    or "none" when the message passed or the domain asks nothing."""

    #: "none", "quarantine" or "reject"
    disposition: str = "none"
    #: The From: domain the policy is the policy of ("" when there was none to find).
    domain: str = ""


@dataclass(frozen=True)
class AuthResults:
    """A message's authentication results; empty when the checks did not run (originating mail, or off)."""

    dkim: tuple[MethodResult, ...] = ()
    spf: MethodResult | None = None
    dmarc: MethodResult | None = None
    arc: MethodResult | None = None
    verdict: DmarcVerdict = field(default_factory=DmarcVerdict)
    #: Who checked: the authserv-id of the Authentication-Results field the results go into.
    authserv_id: str = ""
    #: Byte ranges of the message's Authentication-Results fields that claim that authserv-id: forged
    #: (or an earlier pass of ours), cut out as the message leaves (RFC 8601 §5).
    forged: tuple[tuple[int, int], ...] = ()
    #: The cv= an ARC seal of ours would carry ("none", "pass" or "fail", RFC 8617 §4.1.3); "" for no seal:
    #: ARC not validated, or the chain failed only because a key lookup failed for now (a cv=fail would
    #: end a chain that may be sound).
    arc_cv: str = ""

    @property
    def all(self) -> tuple[MethodResult, ...]:
        """In the order an Authentication-Results field lists them."""
        single = (self.spf, self.dmarc, self.arc)
        return (*self.dkim, *(result for result in single if result is not None))

    def summary(self) -> str:
        """For the log line: `dkim=pass spf=softfail dmarc=fail arc=none`, "" when nothing ran."""
        return " ".join(f"{r.method}={r.result}" for r in self.all)
