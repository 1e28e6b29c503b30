"""The `qsift` command: serve, scan, config check."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qsift import config as config_module
from qsift.errors import ConfigError
from qsift.setup import command as setup_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
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
        if args.command == "setup":
            return setup_command.run(args, sys.stdout)
    except ConfigError as exc:
        print(f"qsift: configuration error: {exc}", file=sys.stderr)
        return 2
    parser.print_help(sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsift", description="Mail content filter for qmail, Postfix and any MTA."
    )
    commands = parser.add_subparsers(dest="command")
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
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    purging = quarantine_commands.add_parser("purge", help="delete quarantined messages older than DAYS")
    purging.add_argument("--config", metavar="FILE")
    purging.add_argument("--older-than", type=float, required=True, metavar="DAYS", dest="days")
    showing = quarantine_commands.add_parser("show", help="one quarantined message, whole")
    showing.add_argument("--config", metavar="FILE")
    showing.add_argument("mail_id", metavar="MAIL_ID")
    release = commands.add_parser("release", help="send a quarantined message on, bypassing the checks")
    release.add_argument("--config", metavar="FILE")
    release.add_argument("--to", action="append", metavar="RCPT", help="only to this recipient (repeatable)")
    release.add_argument("mail_id", metavar="MAIL_ID")
    status = commands.add_parser("status", help="what each worker of the running daemon is doing")
    status.add_argument("--config", metavar="FILE")
    status.add_argument(
        "--wait", type=float, default=2.0, metavar="SECONDS", help="how long to wait for answers"
    )
    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="report every error in FILE with its line, or print the configuration in effect"
    )
    check.add_argument("file", metavar="FILE")
    config_commands.add_parser("reference", help="print the configuration reference (Markdown)")
    setup_command.add_parser(commands)
    return parser


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


def _quarantine(args: argparse.Namespace) -> int:
    from qsift.release import list_quarantine, purge, show

    settings = _load(args.config)
    if args.quarantine_command == "list":
        return list_quarantine(
            settings, category=args.category, as_json=args.json, limit=args.limit, out=sys.stdout
        )
    if args.quarantine_command == "purge":
        if args.days < 0:
            print("qsift: --older-than must be 0 days or more", file=sys.stderr)
            return 2
        return purge(settings, args.days, sys.stdout)
    return show(settings, args.mail_id, sys.stdout)


def _scan(path: str | None, messages: list[str], *, as_json: bool) -> int:
    from qsift.checks.scanner_set import ScannerSet
    from qsift.scan import run_scan

    settings = _load(path)
    scanners = ScannerSet.build(settings.virus, settings.spam, settings.tmp_dir or None)
    return run_scan(messages, settings.check_settings(), scanners, as_json=as_json, out=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
