"""The [virus] and [spam] sections: every key, every mistake named."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from qsift import config
from qsift.checks.scanner_config import ScannerSpec, SpamSettings, VirusSettings
from qsift.checks.scanner_set import ScannerSet, _LimitedSpam
from qsift.checks.spam import SpamdScanner
from qsift.errors import ConfigError

NOD32 = """
[[virus.scanners]]
type = "command"
name = "NOD32"
command = "nod32"
args = ["--all", "--subdir", "{}"]
clean = [0]
infected = [1, 2]
virus_name = '^(?:.*?) - (.+?)(?:$| - )'
"""


def test_the_howtos_nod32_entry_is_expressible() -> None:
    settings = config.loads(NOD32)
    [nod32] = settings.virus.scanners
    assert (nod32.name, nod32.command, nod32.args) == ("NOD32", "nod32", ("--all", "--subdir", "{}"))
    assert nod32.clean == (0,) and nod32.infected == (1, 2)
    assert nod32.virus_name is not None and nod32.virus_name.pattern == "^(?:.*?) - (.+?)(?:$| - )"


def virus_from_config(table: dict[str, Any]) -> VirusSettings:
    return config.from_mapping({"virus": table}).virus


def spam_from_config(table: dict[str, Any]) -> SpamSettings:
    return config.from_mapping({"spam": table}).spam


def test_clamd_with_a_command_backup() -> None:
    settings = virus_from_config(
        {
            "scanners": [{"type": "clamd", "address": "unix:/run/clamav/clamd.ctl", "max_stream": 1000}],
            "backup_scanners": [
                {
                    "type": "command",
                    "command": "clamscan",
                    "args": ["{}"],
                    "clean": "OK$",
                    "infected": "FOUND$",
                }
            ],
        }
    )
    assert settings.scanners == (
        ScannerSpec(
            "clamd", "ClamAV-clamd", address="unix:/run/clamav/clamd.ctl", max_stream=1000, concurrency=8
        ),
    )
    backup = settings.backup_scanners[0]
    assert backup.name == "clamscan" and isinstance(backup.clean, re.Pattern)


def test_spam_levels_and_defaults() -> None:
    spam = spam_from_config({"type": "spamd", "address": "127.0.0.1:783", "kill_level": 8, "tag_level": -999})
    assert spam.levels.kill_level == 8.0 and spam.levels.tag_level == -999.0
    assert spam.levels.tag2_level == 6.2 and spam.levels.quarantine_cutoff_level is None
    assert spam.max_size == 400 * 1024 and spam.failure == "pass"
    assert (spam.slim, spam.attachment_head, spam.cut_text_attachments) == (True, 4096, True)
    assert spam_from_config({}).type == ""


def test_spamd_is_built_with_the_slimming_settings() -> None:
    spam = spam_from_config(
        {
            "type": "spamd",
            "address": "127.0.0.1",
            "slim": False,
            "attachment_head": 0,
            "cut_text_attachments": False,
        }
    )
    scanner = ScannerSet.build(VirusSettings(), spam).spam
    assert isinstance(scanner, _LimitedSpam) and isinstance(scanner.inner, SpamdScanner)
    assert (scanner.inner.slim, scanner.inner.attachment_head, scanner.inner.max_size) == (
        False,
        0,
        400 * 1024,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[virus]\nscanner = []", r"\[virus\] scanner: unknown key"),
        ("[[virus.scanners]]\ntype = 'sophos'", "type: must be one of clamd, command"),
        ("[[virus.scanners]]\ntype = 'clamd'", "address: is required for a clamd scanner"),
        (
            "[[virus.scanners]]\ntype = 'clamd'\naddress = 'x'\ncommand = 'y'",
            "command: is not for a clamd scanner",
        ),
        ("[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\nclean = 'oops('", "bad regex"),
        ("[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\ninfected = [true]", "list of exit codes"),
        ("[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\nargs = 'one'", "list of strings"),
        ("[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\nvirus_name = 3", "must be a string"),
        (
            "[[virus.scanners]]\ntype = 'command'\ncommand = 'x'\ntimeout = 0",
            "timeout: must be a number of seconds > 0",
        ),
        ("[virus]\nscanners = 3", "must be one or more \\[\\[virus.scanners\\]\\] tables"),
        ("[spam]\ntype = 'spamassassin'", "type: must be one of spamd, rspamd"),
        ("[spam]\ntype = 'spamd'\naddress = 'x'\nfailure = 'drop'", "failure: must be one of pass, tempfail"),
        ("[spam]\ntype = 'spamd'\naddress = 'x'\nkill_level = 'high'", r"must be a score \(a number\)"),
        ("[spam]\ntype = 'spamd'\naddress = 'x'\nlevel = 1", "level: unknown key"),
        ("spam = 3", "must be a table"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.from_mapping(tomllib.loads(text))
    with pytest.raises(ConfigError):
        config.loads(text)
