"""The `qsift setup qmail|systemd|postfix` command line: options in, files written, next steps printed."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from typing import TextIO, TypeVar

from qsift.errors import ConfigError
from qsift.setup import postfix, qmail, site, systemd
from qsift.setup.plan import carry_out, show

_WIDTH = 100
# Whatever parser class the command line uses (qsift's own answers a bad option in one line).
_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)


def add_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    setup = commands.add_parser(
        "setup", help="write the files that run qsift under daemontools or systemd and wire it to the MTA"
    )
    targets = setup.add_subparsers(dest="setup_command", required=True)
    _qmail_parser(targets.add_parser("qmail", help="a daemontools service and qmail-smtpd's tcprules lines"))
    _systemd_parser(targets.add_parser("systemd", help="a hardened qsift.service unit"))
    _postfix_parser(targets.add_parser("postfix", help="master.cf and main.cf lines for a content_filter"))


def _qmail_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qmail-home", default="/var/qmail", metavar="DIR", help="(default: %(default)s)")
    parser.add_argument(
        "--service-dir",
        default="/var/qsift/service",
        metavar="DIR",
        help="where the service directory qsift/ is made, to link into /service (default: %(default)s)",
    )
    parser.add_argument("--log-dir", default="/var/log/qsift", metavar="DIR", help="(default: %(default)s)")
    parser.add_argument("--user", default="qsift", help="qsift runs as (default: %(default)s)")
    parser.add_argument(
        "--log-user", default="qmaill", metavar="USER", help="multilog runs as (default: %(default)s)"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:10628",
        metavar="HOST:PORT",
        help="qsift's QMQP address, qsift-queue's first server (default: %(default)s)",
    )
    parser.add_argument(
        "--servers",
        action="append",
        default=[],
        metavar="SERVER",
        help="another QMQP server for qsift-queue, 'host:port' or 'host:port weight' (weight 0: a "
        "backup); repeatable",
    )
    _config_option(parser)
    _qsift_option(parser)
    parser.add_argument("--qsift-queue", metavar="PATH", help="(default: the one next to qsift)")
    parser.add_argument(
        "--client-key",
        default="",
        metavar="FILE",
        help="the client key ([client_context] key_file), readable by qsift and qmaild only: qsift-queue "
        "signs the SMTP client's address, RELAYCLIENT and AUTH user with it (QSIFT_CLIENT_KEY)",
    )
    parser.add_argument(
        "--custom-error",
        default="",
        choices=qmail.CUSTOM_ERROR_CONVENTIONS,
        help="QSIFT_CUSTOM_ERROR: how qmail-smtpd gets qsift's own refusal text (default: unset)",
    )
    parser.add_argument(
        "--relay",
        action="append",
        metavar="ADDRESS",
        help='tcprules address allowed to relay, RELAYCLIENT="" (repeatable; default: 127.)',
    )
    parser.add_argument(
        "--write-control",
        action="store_true",
        help="also write QMAIL_HOME/control/qmqpservers (default: print its lines)",
    )
    _write_options(parser)


def _systemd_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit-dir", default="/etc/systemd/system", metavar="DIR", help="(default: %(default)s)"
    )
    parser.add_argument("--user", default="qsift", help="User= and Group= (default: %(default)s)")
    _config_option(parser)
    _qsift_option(parser)
    parser.add_argument("--state-dir", default="/var/lib/qsift", metavar="DIR", help="(default: %(default)s)")
    parser.add_argument(
        "--writable",
        action="append",
        default=[],
        metavar="DIR",
        help="another directory qsift writes, for ReadWritePaths= (repeatable)",
    )
    _write_options(parser)


def _postfix_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default="127.0.0.1:10024",
        metavar="HOST:PORT",
        help="qsift's SMTP listener, the content_filter's next hop (default: %(default)s)",
    )
    parser.add_argument(
        "--reinject",
        default="127.0.0.1:10025",
        metavar="HOST:PORT",
        help="Postfix's re-injection smtpd, qsift's forward (default: %(default)s)",
    )
    parser.add_argument(
        "--maxproc",
        type=int,
        default=10,
        help="messages handed to qsift at once; at most qsift's max_sessions (default: %(default)s)",
    )
    parser.add_argument(
        "--protocol", default="smtp", choices=postfix.PROTOCOLS, help="(default: %(default)s)"
    )
    parser.add_argument("--write", metavar="DIR", help="write the snippets into DIR instead of printing them")
    parser.add_argument("--force", action="store_true", help="replace existing files")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="/etc/qsift/qsift.toml", metavar="FILE", help="(default: %(default)s)"
    )


def _qsift_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qsift", metavar="PATH", help="the qsift executable (default: the one running)")


def _write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print every file, write nothing")
    parser.add_argument("--force", action="store_true", help="replace existing files")


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
