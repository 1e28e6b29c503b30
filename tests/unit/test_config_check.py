"""`qsift config check`, the declarations and the converter behind it, the configuration in effect, and the
generated reference."""

from __future__ import annotations

import io
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsift import cli, config
from qsift.checks.scanner_config import SCANNER_KEYS
from qsift.config.check import check_file, check_text
from qsift.config.convert import Problem, convert, describe, key_names
from qsift.config.effective import dumps, effective
from qsift.config.reference import render
from qsift.declare import Setting, Shape, declared
from qsift.errors import ConfigError


def validate(raw: dict[str, Any]) -> list[Problem]:
    return convert(config.Config, raw)[1]


ROOT_NAMES = key_names(config.Config)


ROOT_DIR = Path(__file__).resolve().parents[2]

#: A configuration that sets every table the schema has, each key to something valid.
EVERYTHING = """\
log_level = 2
myhostname = "mx.example.org"
state_dir = "/var/lib/qsift"
workers = 2
max_servers = 32
max_requests = 500
user = "qsift"
allow_root = false
drain_timeout = 30

[limits]
message_size = 10485760
busy_wait = 5

[[listen]]
protocol = "qmqp"
address = "127.0.0.1:10628"
acl = ["127.0.0.1", "10.0.0.0/8"]

[[listen]]
protocol = "smtp"
address = "127.0.0.1:10024"
xforward_hosts = ["127.0.0.1", "::1"]
policy_bank = "INBOUND"
max_sessions = 8

[[listen]]
protocol = "lmtp"
address = "unix:/run/qsift/lmtp.sock"

[forward]
method = "smtp:[127.0.0.1]:10025"
final_timeout = 300

[decode]
max_depth = 8
seven_zip = false

[[banned]]
description = "disk image"
filename = '\\.(iso|img)$'
place = "top"

[[virus.scanners]]
type = "clamd"
address = "unix:/run/clamav/clamd.ctl"
sessions = 2

[[virus.backup_scanners]]
type = "command"
name = "clamscan"
command = "/usr/bin/clamscan"
args = ["--stdout", "--no-summary", "-r", "{}"]
clean = [0]
infected = [1]
virus_name = '^.*?: (.*) FOUND$'

[spam]
type = "spamd"
address = "127.0.0.1:783"
tag_level = 1.5
failure = "tempfail"

[destiny]
spam = "discard"
banned = "reject"

[quarantine]
dir = "/var/lib/qsift/q"
unchecked = true

[notify]
method = "smtp:[127.0.0.1]:10026"
virus_admin = "postmaster@example.org"
warn_banned_recip = true

[dsn]
viruses_that_fake_sender = "^(Worm|Trojan)"

[policy]
local_domains = ["example.org", ".example.net"]
recipient_delimiter = "+"
spam_lovers = ["abuse@example.org"]
bypass_virus_checks = ["/^lab-.*@example\\\\.org$/"]

[[policy.recipient]]
match = ["ceo@example.org"]
kill_level = 12
message_size_limit = 1000000

[policy_bank.INBOUND]
client_networks = ["192.0.2.0/24"]

[policy_bank.INBOUND.destiny]
spam = "pass"

[policy_bank.INBOUND.spam]
tag2_level = 5

[policy_bank.ORIGINATING.notify]
spam_admin = "outbound@example.org"

[mark]
enabled = true

[metrics]
address = "127.0.0.1:9642"
"""


def test_a_file_setting_every_table_is_valid_and_loads() -> None:
    assert validate(tomllib.loads(EVERYTHING)) == []
    config.loads(EVERYTHING)
    reports, built = check_text(EVERYTHING, "qsift.toml")
    assert reports == []
    assert built is not None


def test_every_error_is_reported_at_once_with_its_line() -> None:
    text = """\
log_levl = 3
max_servers = "x"

[limits]
message_size = -1

[[listen]]
protocol = "qmtp"
address = "nowhere"

[[listen]]
protocol = "qmqp"
address = "127.0.0.1:1"
xforward_hosts = []

[destiny]
spam = "drop"

[[virus.scanners]]
type = "clamd"
command = "/bin/true"

[policy_bank.X.quarantine]
dir = "/elsewhere"

[dsn]
viruses_that_fake_sender = "("
"""
    reports, built = check_text(text, "q.toml")
    assert built is None
    got = [(r.line, r.text.split(":")[0]) for r in reports]
    assert got == [
        (1, "log_levl"),
        (2, "max_servers"),
        (5, "[limits] message_size"),
        (8, "[[listen]] #1 protocol"),
        (9, "[[listen]] #1 address"),
        (14, "[[listen]] #2 xforward_hosts"),
        (17, "[destiny] spam"),
        (19, "[[virus.scanners]] #1 address"),  # required: the table's line
        (21, "[[virus.scanners]] #1 command"),
        (24, "[policy_bank.X.quarantine] dir"),
        (27, "[dsn] viruses_that_fake_sender"),
    ]
    by_key = {r.text.split(":")[0]: r.text for r in reports}
    assert "allowed: allow_root, arc, auth, banned," in by_key["log_levl"]
    assert "one of qmqp, smtp, lmtp" in by_key["[[listen]] #1 protocol"]
    assert "one of pass, discard, bounce, reject" in by_key["[destiny] spam"]
    assert (
        "allowed: bad_header, banned, dmarc, oversized, spam, unchecked, virus"
        in by_key["[policy_bank.X.quarantine] dir"]
    )
    assert str(reports[0]).startswith("q.toml:1: log_levl: unknown key")


def test_a_toml_syntax_error_names_its_line() -> None:
    reports, built = check_text("log_level = 1\n[limits]\nmessage_size = = 3\n", "q.toml")
    assert built is None
    assert [r.line for r in reports] == [3]
    assert "not TOML" in reports[0].text


def test_two_listeners_on_one_address_name_the_second() -> None:
    text = (
        '[[listen]]\nprotocol = "qmqp"\naddress = "127.0.0.1:1"\n'
        '[[listen]]\nprotocol = "smtp"\naddress = "[127.0.0.1]:1"\n'
    )
    reports, built = check_text(text, "q.toml")
    assert built is None
    assert [str(r) for r in reports] == [
        "q.toml:6: [[listen]] #2 address: 127.0.0.1:1 is [[listen]] #1's too"
    ]
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1 is \[\[listen\]\] #1's too"):
        config.from_mapping(tomllib.loads(text))


def test_the_configuration_in_effect_reads_back_as_the_same_configuration() -> None:
    for text in ("", EVERYTHING):
        reports, built = check_text(text, "q.toml")
        assert reports == [] and built is not None
        values = effective(tomllib.loads(text), built)
        again = dumps(values)
        assert validate(tomllib.loads(again)) == []
        first, second = config.loads(text), config.loads(again)
        # Said as what they come to: "" (the forward method, <state_dir>/quarantine, one per CPU).
        computed = {"notify", "quarantine", "workers", "policy_bank", "auth"}
        for item in fields(config.Config):
            if item.name not in computed:
                assert getattr(first, item.name) == getattr(second, item.name), item.name
        assert first.notify_forward == second.notify_forward
        assert first.notify.who == second.notify.who
        assert first.quarantine.keep == second.quarantine.keep
        assert first.authserv_id == second.authserv_id and first.auth.policy == second.auth.policy
        assert first.policies.base == second.policies.base
        assert set(first.policies.banks) == set(second.policies.banks)
        assert first.quarantine_dir == second.quarantine_dir
        assert first.worker_count == second.worker_count
        # Written once more, nothing changes: the defaults are all there.
        assert effective(tomllib.loads(again), second) == values


def test_the_configuration_in_effect_shows_defaults_and_computed_values() -> None:
    _, built = check_text("workers = 0\n", "q.toml")
    assert built is not None
    values = effective({"workers": 0}, built)
    assert values["workers"] >= 1  # one per CPU, said as a number
    assert values["limits"]["message_size"] == 50 * 1024 * 1024
    assert values["listen"][1]["xforward_hosts"] == []  # nobody by default
    assert "xforward_hosts" not in values["listen"][0]  # qmqp has none
    assert values["quarantine"]["dir"] == "/var/lib/qsift/quarantine"
    assert values["policy_bank"]["ORIGINATING"]["relay_client"] is True
    assert "spam" not in values  # no spam scanner: no levels to show


def test_the_command_prints_errors_or_the_configuration(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(EVERYTHING)
    bad.write_text("log_levl = 1\n[limits]\nbusy_wait = 0\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_file(str(good), out, err) == 0
    assert err.getvalue() == ""
    assert "[[virus.scanners]]" in out.getvalue() and out.getvalue().startswith(f"# {good}: valid")
    out, err = io.StringIO(), io.StringIO()
    assert check_file(str(bad), out, err) == 1
    assert err.getvalue().splitlines() == [
        f"{bad}:1: log_levl: unknown key (allowed: {', '.join(ROOT_NAMES)})",
        f"{bad}:3: [limits] busy_wait: must be a number of seconds > 0, not 0",
        f"{bad}: 2 error(s)",
    ]
    assert check_file(str(tmp_path / "missing.toml"), out, err := io.StringIO()) == 2
    assert "cannot read" in err.getvalue()
    assert cli.main(["config", "check", str(good)]) == 0
    assert cli.main(["config", "check", str(bad)]) == 1


# --- every declared key -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A key as a file writes it: the tables it sits in ("NAME" for a named one) and its declaration."""

    path: tuple[str, ...]
    name: str
    setting: Setting
    array: bool


def _walk(kind: type, path: tuple[str, ...] = (), array: bool = False) -> Iterator[Key]:
    for name, spec in declared(kind):
        sub = spec.section
        if spec.shape == Shape.KEY:
            yield Key(path, name, spec, array)
        elif spec.shape == Shape.FLAT and sub is not None:
            yield from _walk(sub, path, array)
        elif sub is not None:
            here = (*path, name, "NAME") if spec.shape == Shape.NAMED else (*path, name)
            yield from _walk(sub, here, spec.shape == Shape.ARRAY)


KEYS = list(_walk(config.Config))


def test_every_key_is_documented() -> None:
    assert [".".join((*k.path, k.name)) for k in KEYS if not k.setting.doc] == []


#: What each array table needs to be valid, by its name.
_NEEDS: dict[str, dict[str, Any]] = {
    "listen": {"protocol": "smtp", "address": "127.0.0.1:1"},
    "scanners": {"type": "command", "command": "/bin/true"},
    "backup_scanners": {"type": "command", "command": "/bin/true"},
    "banned": {"filename": "x"},
    "recipient": {"match": ["a@example.org"]},
    "keys": {"domain": "example.org", "selector": "s1", "key_file": "/etc/qsift/dkim/s1.pem"},
}


def _place(key: Key, value: Any) -> dict[str, Any]:
    """A minimal valid file with `value` at the key (arrays and named tables get one element)."""
    path = key.path
    table: dict[str, Any] = dict(_NEEDS.get(path[-1], {})) if path else {}
    if path == ("spam",):
        table = {"type": "spamd", "address": "127.0.0.1:783"}
    if path[:1] == ("virus",) and key.name in SCANNER_KEYS["clamd"] - SCANNER_KEYS["command"]:
        table = {"type": "clamd", "address": "127.0.0.1:3310"}
    table[key.name] = value
    node: Any = table
    for name in reversed(path):
        if name in _NEEDS:
            node = [node]
        node = {"B" if name == "NAME" else name: node}
    return node  # type: ignore[no-any-return]


_SAMPLES: dict[str, Any] = {
    "string": "x",
    "boolean": True,
    "integer": 3,
    "count": 2,
    "seconds": 2.5,
    "level": 4.5,
    "strings": ["example.org"],
    "codes or regex": [0],
}


def _valid_value(key: Key) -> Any:
    spec = key.setting
    if spec.choices:
        return spec.choices[-1]
    if spec.default not in (None, ""):
        return spec.default
    special = {
        "address": "127.0.0.1:1",
        "method": "smtp:[127.0.0.1]:1",
        "policy_bank": "",
        "acl": ["127.0.0.1"],
        "xforward_hosts": ["127.0.0.1"],
        "client_networks": ["192.0.2.0/24"],
        "match": ["a@example.org"],
        "recipient_delimiter": "+",
        "url": "postgresql://qsift@127.0.0.1:5432/mail",
    }
    assert spec.kind is not None
    return special.get(key.name, _SAMPLES[spec.kind.name])


@pytest.mark.parametrize("key", KEYS, ids=[".".join((*k.path, k.name)) for k in KEYS])
def test_each_key_takes_a_value_of_its_kind(key: Key) -> None:
    raw = _place(key, _valid_value(key))
    assert validate(raw) == [], raw
    config.from_mapping(raw)


_WRONG = st.one_of(
    st.booleans(),
    st.integers(min_value=-3, max_value=10),
    st.floats(min_value=-2, max_value=10, allow_nan=False),
    st.sampled_from(["", "x", "(", "pass", "reject", "127.0.0.1:1", "unix:rel", "/[/", "example.org"]),
    st.lists(st.sampled_from(["x", "10.0.0.0/8", "!a@b", "/(/"]), max_size=2),
    st.lists(st.integers(min_value=-1, max_value=3), max_size=2),
    st.just({"a": 1}),
    st.just([{"a": 1}]),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYS), _WRONG)
def test_any_one_value_gives_a_configuration_or_problems_at_its_key(key: Key, value: Any) -> None:
    """Whatever a key is set to, the converter builds a Config or names the problem at that key; it never
    raises, and the daemon's loader says the same."""
    raw = _place(key, value)
    built, problems = convert(config.Config, raw)
    assert (built is None) == bool(problems)
    tables = ["B" if part == "NAME" else part for part in key.path]
    for problem in problems:
        named = [part for part in problem.path if isinstance(part, str)]
        assert named[: len(tables)] == tables, problem  # in the key's own table, nowhere else
    if problems:
        with pytest.raises(ConfigError):
            config.from_mapping(raw)


def test_unknown_keys_anywhere_are_errors() -> None:
    for key in KEYS:
        raw = _place(key, _valid_value(key))
        node: Any = raw
        for part in key.path:
            node = node["B" if part == "NAME" else part]
            if isinstance(node, list):
                node = node[0]
        node["no_such_key"] = 1
        problems = validate(raw)
        assert [describe(p.path).endswith("no_such_key") for p in problems] == [True], (key, problems)
        assert "allowed:" in problems[0].message and key.name in problems[0].message


# --- the reference ------------------------------------------------------------------------------------


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT_DIR / "docs" / "configuration-reference.md").read_text()
    assert committed == render(), "run: qsift config reference > docs/configuration-reference.md"


def test_the_reference_has_every_table_and_key() -> None:
    text = render()
    for key in KEYS:
        assert f"| `{key.name}` |" in text
        if key.path:
            heading = ".".join(key.path)
            assert f"[[{heading}]]" in text if key.array else f"[{heading}]" in text


@pytest.mark.parametrize(
    ("text", "where", "complaint"),
    [
        ("limits = 3", "limits", "must be a table"),
        ("listen = 3", "listen", "must be one or more [[listen]] tables"),
        ("listen = [3]", "[[listen]] #1", "must be a table"),
        ("policy_bank = 3", "policy_bank", "must be tables named [policy_bank.NAME]"),
        ("[[listen]]\nprotocol = 'smtp'", "[[listen]] #1 address", "is required"),
        ("[[banned]]\nplace = 'top'", "[[banned]] #1 filename", "needs at least one of"),
        ("[spam]\ntag_level = 3", "[spam] type", "is required when [spam] is set"),
        (
            "[[listen]]\nprotocol = 'smtp'\naddress = '127.0.0.1:1'\npolicy_bank = 'NOPE'",
            "[[listen]] #1 policy_bank",
            "there is no [policy_bank.NOPE]",
        ),
        ("[metrics]\naddress = 'unix:/run/m.sock'", "[metrics] address", "not a unix socket"),
        (
            "[[virus.scanners]]\ntype = 'command'\ncommand = ''",
            "[[virus.scanners]] #1 command",
            "not be empty",
        ),
        (
            "[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\nclean = '('",
            "[[virus.scanners]] #1 clean",
            "regex",
        ),
        ("log_level = 6", "log_level", "must be 5 or less"),
        ("max_servers = 0", "max_servers", "must be 1 or more"),
        ("[spam]\n[[banned]]\nfilename = 'x'\nallow = 1", "[[banned]] #1 allow", "true or false"),
    ],
)
def test_each_kind_of_problem_names_its_key(text: str, where: str, complaint: str) -> None:
    problems = validate(tomllib.loads(text))
    assert [describe(p.path) for p in problems][:1] == [where]
    assert complaint in str(problems[0])
    with pytest.raises(ConfigError):
        config.loads(text)


def test_a_path_is_described_as_the_file_writes_it() -> None:
    assert describe(("log_level",)) == "log_level"
    assert describe(("limits", "busy_wait")) == "[limits] busy_wait"
    assert describe(("listen", 1, "address")) == "[[listen]] #2 address"
    assert describe(("policy_bank", "X", "policy", "recipient", 0, "match")) == (
        "[[policy_bank.X.policy.recipient]] #1 match"
    )
    assert describe(("listen", 0, "acl", 2)) == "[[listen]] #1 acl.2"


def test_the_writer_handles_what_a_configuration_holds() -> None:
    text = dumps({"a": 'x"\\\n', "b": [1, 2.5, True], "c": [{"d": 1}, {"d": 2}], "e": {"f": {"g": []}}})
    assert tomllib.loads(text) == {
        "a": 'x"\\\n',
        "b": [1, 2.5, True],
        "c": [{"d": 1}, {"d": 2}],
        "e": {"f": {"g": []}},
    }
    assert tomllib.loads(dumps({"mixed": [1, {"a": 1}], "odd key": 1})) == {
        "mixed": [1, {"a": 1}],
        "odd key": 1,
    }
    with pytest.raises(TypeError):
        dumps({"a": None})
