"""The `qsift setup` command line's options, apart from what carries them out (setup/command.py).

Every `qsift` command builds the whole parser, `qsift serve` too; the planners behind `qsift setup`
(about 0.3 MiB of Python objects) are loaded only when it runs, so no `qsift serve` process, parent or
worker, carries them.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

#: The qmail-smtpd patches whose way of passing on a custom refusal text qsift-queue can follow
#: (QSIFT_CUSTOM_ERROR).
CUSTOM_ERROR_CONVENTIONS = ("off", "notqmail", "simscan", "indimail")
#: How Postfix hands mail to qsift's listener.
PROTOCOLS = ("smtp", "lmtp")

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
        choices=CUSTOM_ERROR_CONVENTIONS,
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
    parser.add_argument("--protocol", default="smtp", choices=PROTOCOLS, help="(default: %(default)s)")
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
