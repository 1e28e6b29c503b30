"""The `qsift` command: serve, scan, config check, quarantine, release, status, setup, store init, dkim."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from qsift import config as config_module
from qsift.auth.settings import DEFAULT_RSA_BITS, domain_name, selector_name
from qsift.errors import ConfigError, QsiftError
from qsift.setup import arguments as setup_arguments
from qsift.store.quarantine import check_mail_id

_N = TypeVar("_N", int, float)


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line and exit 2, as every other bad input: the usage is behind --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"qsift: configuration error: {exc}", file=sys.stderr)
        return 2
    except QsiftError as exc:
        # The quarantine or state directory unusable, a scanner unreachable: the one line says which.
        print(f"qsift: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "config":
        return _config(args)
    if args.command == "scan":
        return _scan(args.config, args.messages, as_json=args.json)
    if args.command == "quarantine":
        return _quarantine(args)
    if args.command == "release":
        from qsift.release import release

        return release(_load(args.config), args.mail_id, args.to or [], sys.stdout)
    if args.command == "status":
        return _status(args.config, args.wait)
    if args.command == "store":
        return _store_init(args.config)
    if args.command == "dkim":
        from qsift import dkim_tools  # dkimpy, pynacl, OpenSSL: for this command only

        return dkim_tools.run(args, sys.stdout, sys.stderr)
    from qsift.setup import command as setup_command  # the planners: for this command only

    return setup_command.run(args, sys.stdout)


def _count(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _days(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of days, 0 or more, not {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _number(text: str, kind: type[_N]) -> _N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _mail_id(text: str) -> str:
    try:
        return check_mail_id(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a mail_id: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qsift", description="Mail content filter for qmail, Postfix and any MTA.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration (default: embedded defaults)")
    scan = commands.add_parser("scan", help="run the content checks on message files, deliver nothing")
    scan.add_argument("--config", metavar="FILE", help="TOML configuration (default: embedded defaults)")
    scan.add_argument("--json", action="store_true", help="one JSON object per message")
    scan.add_argument("messages", metavar="MESSAGE", nargs="+")
    quarantine = commands.add_parser("quarantine", help="look into the quarantine")
    quarantine_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    listing = quarantine_commands.add_parser("list", help="quarantined messages, newest first")
    listing.add_argument("--config", metavar="FILE")
    listing.add_argument("--category", help="only this category (virus, banned, spam, ...)")
    listing.add_argument("--limit", type=_count, default=100)
    listing.add_argument("--json", action="store_true")
    purging = quarantine_commands.add_parser("purge", help="delete quarantined messages older than DAYS")
    purging.add_argument("--config", metavar="FILE")
    purging.add_argument("--older-than", type=_days, required=True, metavar="DAYS", dest="days")
    showing = quarantine_commands.add_parser("show", help="one quarantined message, whole")
    showing.add_argument("--config", metavar="FILE")
    showing.add_argument("mail_id", metavar="MAIL_ID", type=_mail_id)
    release = commands.add_parser("release", help="send a quarantined message on, bypassing the checks")
    release.add_argument("--config", metavar="FILE")
    release.add_argument("--to", action="append", metavar="RCPT", help="only to this recipient (repeatable)")
    release.add_argument("mail_id", metavar="MAIL_ID", type=_mail_id)
    status = commands.add_parser("status", help="what each worker of the running daemon is doing")
    status.add_argument("--config", metavar="FILE")
    status.add_argument(
        "--wait", type=_seconds, default=2.0, metavar="SECONDS", help="how long to wait for answers"
    )
    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="report every error in FILE with its line, or print the configuration in effect"
    )
    check.add_argument("file", metavar="FILE")
    config_commands.add_parser("reference", help="print the configuration reference (Markdown)")
    store = commands.add_parser("store", help="the shared PostgreSQL store ([store] url)")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    store_init = store_commands.add_parser(
        "init", help="create the tables or upgrade them to this version's schema, and say what was done"
    )
    store_init.add_argument("--config", metavar="FILE")
    setup_arguments.add_parser(commands)
    _add_dkim_parser(commands)
    return parser


def _add_dkim_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    tools = commands.add_parser("dkim", help="DKIM signing keys: make one, print its DNS record, test it")
    actions = tools.add_subparsers(dest="dkim_command", required=True)
    genkey = actions.add_parser("genkey", help="write a new private key (0600) and print its TXT record")
    genkey.add_argument("domain", metavar="DOMAIN", type=_checked(domain_name))
    genkey.add_argument("selector", metavar="SELECTOR", type=_checked(selector_name))
    genkey.add_argument("--ed25519", action="store_true", help="an Ed25519 key (RFC 8463) instead of RSA")
    genkey.add_argument(
        "--bits",
        type=_bits,
        default=DEFAULT_RSA_BITS,
        help="RSA key size, 1024 to 4096 (default: %(default)s)",
    )
    genkey.add_argument("--out", metavar="FILE", help="the key file (default: DOMAIN.SELECTOR.pem here)")
    for name, text in (
        ("showkey", "print the TXT record of every configured key"),
        ("testkey", "look each configured key up in DNS: does the published record match?"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", metavar="FILE", required=True)


def _checked(parse: Callable[[str], str]) -> Callable[[str], str]:
    def checked(text: str) -> str:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def _bits(text: str) -> int:
    if not text.isdigit() or not 1024 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"must be 1024 to 4096, not {text}")
    return int(text)


def _load(path: str | None) -> config_module.Config:
    return config_module.load(path) if path else config_module.loads("", source="<defaults>")


def _serve(path: str | None) -> int:
    from qsift.serve import supervisor

    return supervisor.main(_load(path), path)


def _status(path: str | None, wait: float) -> int:
    """Ask the running daemon's workers what they are doing (SIGUSR1), and print their answers."""
    import os
    import signal
    import time

    from qsift.serve.status import read_status, render, status_dir
    from qsift.serve.supervisor import read_pid

    settings = _load(path)
    pid = read_pid(settings)
    if pid is None:
        print(
            f"qsift: no pid file in {settings.state_dir}: is qsift running with this state_dir?",
            file=sys.stderr,
        )
        return 1
    asked = time.time()
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as exc:
        print(f"qsift: cannot signal pid {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    deadline = asked + wait
    reports = read_status(status_dir(settings.state_dir), since=asked)
    while time.time() < deadline and len(reports) < settings.worker_count:
        time.sleep(0.05)
        reports = read_status(status_dir(settings.state_dir), since=asked)
    sys.stdout.write(render(reports))
    return 0 if reports else 1


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "reference":
        from qsift.config.reference import render

        sys.stdout.write(render())
        return 0
    from qsift.config.check import check_file

    return check_file(args.file, sys.stdout, sys.stderr)


def _store_init(path: str | None) -> int:
    """Exit 2 when there is no shared store to set up or it does not answer; 1 when the schema could not
    be brought up to date."""
    settings = _load(path).store
    if not settings.url:
        print("qsift: [store] url is empty: the state stays in SQLite, nothing to set up", file=sys.stderr)
        return 2
    from qsift.errors import StoreUnreachable
    from qsift.store.pg_migrate import migrate
    from qsift.store.postgres import connect

    try:
        with connect(settings) as db:
            print(migrate(db))
    except StoreUnreachable as exc:
        print(f"qsift: {exc}", file=sys.stderr)
        return 2
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    from qsift.release import list_quarantine, purge, show

    settings = _load(args.config)
    if args.quarantine_command == "list":
        return list_quarantine(
            settings, category=args.category, as_json=args.json, limit=args.limit, out=sys.stdout
        )
    if args.quarantine_command == "purge":
        return purge(settings, args.days, sys.stdout)
    return show(settings, args.mail_id, sys.stdout)


def _scan(path: str | None, messages: list[str], *, as_json: bool) -> int:
    from qsift.pipeline import build_pipeline
    from qsift.scan import run_scan

    pipeline = build_pipeline(_load(path), durable=False)
    return run_scan(messages, pipeline.checks, as_json=as_json, out=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
