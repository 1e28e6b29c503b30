"""`qsift setup qmail|systemd|postfix`: options in, files written, next steps printed.

The options themselves are declared in setup/arguments.py, which every `qsift` command loads to build its
parser; this module and the planners it uses are loaded for `qsift setup` alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from typing import TextIO

from qsift.errors import ConfigError
from qsift.setup import postfix, qmail, site, systemd
from qsift.setup.plan import carry_out, show

_WIDTH = 100


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Carry out `qsift setup TARGET`; 2 for bad options, 1 if a file could not be written or was kept."""
    try:
        if args.setup_command == "qmail":
            return _qmail(args, out)
        if args.setup_command == "systemd":
            return _systemd(args, out)
        return _postfix(args, out)
    except ConfigError as exc:
        print(f"qsift setup: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qsift setup: {where}{exc.strerror}", file=sys.stderr)
        return 1


def _qmail(args: argparse.Namespace, out: TextIO) -> int:
    qsift = args.qsift or installed_program("qsift")
    options = qmail.QmailOptions(
        qsift=qsift,
        qsift_queue=args.qsift_queue or _beside(qsift, "qsift-queue"),
        qmail_home=args.qmail_home,
        service_dir=args.service_dir,
        log_dir=args.log_dir,
        user=args.user,
        log_user=args.log_user,
        listen=args.listen,
        servers=tuple(args.servers),
        config=os.path.abspath(args.config),
        client_key=args.client_key,
        custom_error=args.custom_error,
        relay=tuple(args.relay or qmail.QmailOptions.relay),
        write_control=args.write_control,
    )
    kept = carry_out(qmail.plan(options), dry_run=args.dry_run, force=args.force, out=out)
    print(file=out)
    print(_paragraph(qmail.servers_explained(options)), end="", file=out)
    notes = site.missing_accounts([options.user, options.log_user])
    notes += _unreachable_note(options.qsift_queue)
    settings, problems = site.load_config(options.config)
    notes += problems
    if settings is not None:
        notes.append(site.state_dir_note(settings, options.user))
        hostname = site.myhostname_note(settings, qmail_home=options.qmail_home, config_path=options.config)
        notes += [hostname] if hostname else []
        notes += site.qmail_notes(
            settings,
            listen=str(qmail.server_list(options)[0]),
            client_key=options.client_key,
            qmail_home=options.qmail_home,
        )
    return _finish(kept, notes, qmail.next_steps(options), dry_run=args.dry_run, out=out)


def _unreachable_note(qsift_queue: str) -> list[str]:
    problems = site.others_cannot_run(qsift_queue)
    if not problems:
        return []
    return [
        f"qmail-smtpd runs {qsift_queue} as qmaild (qmail-local as the recipient), who cannot run it: "
        f"{'; '.join(problems)}. qmail-smtpd would answer 451 to every message. Install qsift where "
        "every user can read it, e.g. a venv under /opt (docs/qmail.md, step 1)."
    ]


def _systemd(args: argparse.Namespace, out: TextIO) -> int:
    options = systemd.SystemdOptions(
        qsift=args.qsift or installed_program("qsift"),
        unit_dir=args.unit_dir,
        user=args.user,
        config=os.path.abspath(args.config),
        state_dir=args.state_dir,
        writable=tuple(args.writable),
    )
    kept = carry_out(systemd.plan(options), dry_run=args.dry_run, force=args.force, out=out)
    notes = site.missing_accounts([options.user])
    settings, problems = site.load_config(options.config)
    notes += problems
    if settings is not None:
        notes += site.systemd_notes(settings, state_dir=options.state_dir, writable=options.writable)
    return _finish(kept, notes, systemd.next_steps(options), dry_run=args.dry_run, out=out)


def _postfix(args: argparse.Namespace, out: TextIO) -> int:
    options = postfix.PostfixOptions(
        listen=args.listen, reinject=args.reinject, maxproc=args.maxproc, protocol=args.protocol
    )
    if args.write:
        kept = carry_out(postfix.plan(options, args.write), dry_run=False, force=args.force, out=out)
    else:
        kept = 0
        for planned in postfix.plan(options, "").files:
            show(planned, "printed only: --write DIR writes it", out)
    steps = postfix.next_steps(options, args.write)
    return _finish(kept, [], steps, dry_run=False, out=out)


def _finish(kept: int, notes: list[str], steps: list[str], *, dry_run: bool, out: TextIO) -> int:
    if dry_run:
        print("\nDry run: nothing was written.", file=out)
    elif kept:
        print(f"\n{kept} existing file(s) differ and were kept: --force replaces them.", file=out)
    if notes:
        print("\nBefore starting:", file=out)
        for note in notes:
            print(_item("-", note), file=out)
    print("\nNext steps:", file=out)
    for number, step in enumerate(steps, 1):
        print(_item(f"{number}.", step), file=out)
    return 1 if kept and not dry_run else 0


def _item(mark: str, text: str) -> str:
    """A list item wrapped to the terminal's usual width; indented lines (TOML, commands) kept as they are."""
    first, *rest = text.split("\n")
    indent = " " * (len(mark) + 3)
    wrapped = _fill(first, initial_indent=f"  {mark} ", subsequent_indent=indent)
    return "\n".join([wrapped, *(f"{indent}{line}" for line in rest)])


def _paragraph(text: str) -> str:
    """Unindented lines wrapped, indented ones (lists, commands) kept."""
    return "".join((line if line.startswith(" ") else _fill(line)) + "\n" for line in text.splitlines())


def _fill(text: str, initial_indent: str = "", subsequent_indent: str = "") -> str:
    # Paths and commands stay whole: no breaks at their hyphens, none inside a long word.
    return textwrap.fill(
        text,
        _WIDTH,
        initial_indent=initial_indent,
        subsequent_indent=subsequent_indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def installed_program(name: str) -> str:
    """`name` of the running installation: beside the running qsift, else the interpreter, else on PATH."""
    running = sys.argv[0]
    if os.path.basename(running) == "qsift":
        beside = os.path.join(os.path.dirname(os.path.abspath(running)), name)
        if os.access(beside, os.X_OK):
            return beside
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        raise ConfigError(f"cannot find the {name} executable: name it with --{name} PATH")
    return os.path.abspath(found)


def _beside(qsift: str, name: str) -> str:
    beside = os.path.join(os.path.dirname(qsift), name)
    return beside if os.access(beside, os.X_OK) else installed_program(name)
