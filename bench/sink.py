"""A counting SMTP sink on bare asyncio, in its own process, so neither measured path shares a GIL with it.

python -m bench.sink PORT   # prints "ready" when listening; SIGTERM prints the count and exits
python -m bench.sink --ids FILE PORT   # also writes each message's X-Bench-Id to FILE, one a line
python -m bench.sink --tally PORT      # then a line of JSON: how many headers bore each of MARKS

The sink must cost next to nothing, or it hides the cost of what is measured in front of it: the
aiosmtpd sink the benches used before spent several times the CPU per message of this one, enough to bound
the direct run and flatter "qsift / direct" (issue 14). This one is an `asyncio.Protocol` that
parses command lines, finds the end of DATA and throws the content away; the benches read its CPU time
from /proc and print it beside qsift's, so a slow sink shows.

With `--ids` it also keeps the first `HEAD` octets of each message and notes its `X-Bench-Id`
(bench/mail_mix.py stamps one on every message), so a bench can check that every message it sent arrived
exactly once, not only that the totals agree (a duplicate and a loss would cancel out).

With `--tally` it keeps up to `TALLY_HEAD` octets of each message and counts the MARKS in its header (up to
the blank line), so a benchmark that passes every category can check what the filter decided: every EICAR
found, the same spam flags (issue 14). amavisd-new (X-Amavis-Alert) and qsift (X-Qsift-Alert) word their
alerts alike, and both put their fields above the message's own.

It offers PIPELINING, 8BITMIME and SMTPUTF8, as Postfix does, and takes lines of any length: amavisd-new
and qsift fold header lines over 998 octets before they forward, but a message counted here must not
depend on it. It takes DATA only after an accepted RCPT and counts a message at its final dot.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

GREETING = b"220 sink.bench ESMTP\r\n"
EHLO_REPLY = (
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
)
#: The end of DATA (RFC 5321 4.1.1.4); the CRLF before the dot is the last line's, or DATA's own.
END_OF_DATA = b"\r\n.\r\n"
#: How much of each message's start is searched for its X-Bench-Id (qsift adds its fields above it).
HEAD = 8192
BENCH_ID = re.compile(rb"^X-Bench-Id: (\S+)", re.MULTILINE)
#: What `--tally` counts, once per message whose header holds it, and how much of a message it searches.
MARKS = {
    "virus": b"-Alert: INFECTED",
    "banned": b"-Alert: BANNED",
    "spam": b"X-Spam-Flag: YES",
}
TALLY_HEAD = 256 * 1024
END_OF_HEADER = b"\r\n\r\n"

REPLIES = {
    b"HELO": b"250 sink.bench\r\n",
    b"EHLO": EHLO_REPLY,
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}


class Counter:
    def __init__(self, *, ids: bool = False, tally: bool = False) -> None:
        self.messages = 0
        #: Each message's X-Bench-Id (b"?" for none), in arrival order; None unless asked for.
        self.ids: list[bytes] | None = [] if ids else None
        #: How many headers bore each of MARKS; None unless asked for.
        self.marks: dict[str, int] | None = dict.fromkeys(MARKS, 0) if tally else None
        #: How much of each message's start the session keeps (0: none).
        self.head_size = TALLY_HEAD if tally else HEAD if ids else 0

    def note(self, head: bytes) -> None:
        """Note what one message's first octets say."""
        if self.ids is not None:
            stamp = BENCH_ID.search(head, 0, HEAD)
            self.ids.append(stamp.group(1) if stamp else b"?")
        if self.marks is not None:
            # `head` starts with DATA's own CRLF, so a message without header fields ends its header at 0.
            end = head.find(END_OF_HEADER)
            header = head if end < 0 else head[:end]
            for name, mark in MARKS.items():
                if mark in header:
                    self.marks[name] += 1


class SinkSession(asyncio.Protocol):
    """One SMTP session: command lines until DATA, then content until the final dot, which is dropped."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.in_data = False
        self.recipients = 0
        self.quitting = False
        #: The message's first octets, kept only when the counter notes ids.
        self.head = b""
        #: Octets at the start of `pending` that are already in `head` (kept back to find the final dot).
        self.carried = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        replies: list[bytes] = []
        while not self.quitting:
            if self.in_data:
                end = self.pending.find(END_OF_DATA)
                if len(self.head) < self.counter.head_size:
                    fresh = self.pending[self.carried : end if end >= 0 else None]
                    self.head += fresh[: self.counter.head_size - len(self.head)]
                if end < 0:
                    # Only the last four octets can begin a terminator that the next read completes.
                    self.pending = self.pending[-4:]
                    self.carried = len(self.pending)
                    break
                self.pending = self.pending[end + len(END_OF_DATA) :]
                self.in_data = False
                self.recipients = 0
                self.counter.messages += 1
                if self.counter.head_size:
                    self.counter.note(self.head)
                    self.head = b""
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line, found, rest = self.pending.partition(b"\n")
            if not found:
                break
            self.pending = rest
            replies.append(self.command(line.rstrip(b"\r")))
        # One write for every reply to a pipelined group (RFC 2920), as a real server answers it.
        self.transport.write(b"".join(replies))
        if self.quitting:
            self.transport.close()

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"DATA":
            if not self.recipients:
                return b"503 5.5.1 Need RCPT first\r\n"
            self.in_data = True
            self.carried = 0
            # DATA's own CRLF, so that content which is only ".\r\n" ends at once.
            self.pending = b"\r\n" + self.pending
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RCPT":
            self.recipients += 1
        elif verb in (b"MAIL", b"RSET"):
            self.recipients = 0
        elif verb == b"QUIT":
            self.quitting = True
        return REPLIES.get(verb, b"502 5.5.2 Command not recognized\r\n")


async def listen(counter: Counter, port: int = 0) -> asyncio.Server:
    """A sink on 127.0.0.1:`port` (0: any free port) counting into `counter`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SinkSession(counter), "127.0.0.1", port, backlog=1024)


async def serve(port: int, ids_file: str | None = None, tally: bool = False) -> Counter:
    """Sink on 127.0.0.1:`port` until SIGTERM; what it took. With `ids_file`, each message's X-Bench-Id
    is written there, one a line."""
    counter = Counter(ids=ids_file is not None, tally=tally)
    loop = asyncio.get_running_loop()
    server = await listen(counter, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    if ids_file is not None and counter.ids is not None:
        with open(ids_file, "wb") as out:
            out.write(b"".join(found + b"\n" for found in counter.ids))
    return counter


def main() -> None:
    ids_file = sys.argv[sys.argv.index("--ids") + 1] if "--ids" in sys.argv else None
    counter = asyncio.run(serve(int(sys.argv[-1]), ids_file, tally="--tally" in sys.argv[1:-1]))
    print(counter.messages, flush=True)
    if counter.marks is not None:
        print(json.dumps(counter.marks), flush=True)


if __name__ == "__main__":
    main()
