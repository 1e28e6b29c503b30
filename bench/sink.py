"""A counting SMTP sink in its own process, so neither measured path shares a GIL with it.

python -m bench.sink [--long-lines] PORT   # prints "ready" when listening; SIGTERM prints the count and exits

With --long-lines it takes lines longer than RFC 5321's 1,000 octets, as Postfix does. aiosmtpd answers
`500 Line too long` past 1,001 octets; amavisd-new folds header lines over 998 characters before it
forwards ($allow_fixing_long_header_lines), qsift forwards them as they came (rspamd's `large-hlist`
message has one), so the side-by-side bench (bench/amavisd) needs a sink that takes both.
"""

from __future__ import annotations

import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 2.0.0 Ok: queued"


class LongLineSMTP(SMTP):
    line_length_limit = 1 << 20


class LongLineController(Controller):
    def factory(self) -> SMTP:
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


def main() -> None:
    args = sys.argv[1:]
    long_lines = args[:1] == ["--long-lines"]
    port = int(args[-1])
    handler = CountingHandler()
    kind = LongLineController if long_lines else Controller
    controller = kind(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()
    print(handler.count, flush=True)


if __name__ == "__main__":
    main()
