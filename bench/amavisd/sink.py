"""bench/sink.py's counting sink, but taking lines longer than RFC 5321's 1,000 octets, as Postfix does.

    python -m bench.amavisd.sink PORT   # prints "ready"; SIGTERM prints the count and exits

aiosmtpd answers `500 Line too long` for a line over 1,001 octets. amavisd-new folds header lines over 998
characters before it forwards ($allow_fixing_long_header_lines = 1), qsift forwards them as they came
(rspamd's `large-hlist` message has one), so with the stock sink one message would fail for qsift only.
The benchmark measures throughput, so the sink takes both; the compare script reports the difference.
"""

from __future__ import annotations

import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from bench.sink import CountingHandler


class LongLineSMTP(SMTP):
    line_length_limit = 1 << 20


class LongLineController(Controller):
    def factory(self) -> SMTP:
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


def main() -> None:
    handler = CountingHandler()
    controller = LongLineController(handler, hostname="127.0.0.1", port=int(sys.argv[1]))
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()
    print(handler.count, flush=True)


if __name__ == "__main__":
    main()
