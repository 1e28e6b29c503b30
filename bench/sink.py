"""A counting SMTP sink in its own process, so neither measured path shares a GIL with it.

python -m bench.sink PORT      # prints "ready" when listening; SIGTERM prints the count and exits
"""

from __future__ import annotations

import signal
import sys
import threading

from aiosmtpd.controller import Controller


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 2.0.0 Ok: queued"


def main() -> None:
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=int(sys.argv[1]))
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()
    print(handler.count, flush=True)


if __name__ == "__main__":
    main()
