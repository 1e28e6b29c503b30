"""A counting SMTP sink on bare asyncio, in its own process, so neither measured path shares a GIL with it.

python -m bench.sink PORT           # prints "ready" when listening; SIGTERM prints the count and exits
python -m bench.sink --tally PORT   # the same, then a line of JSON: how many headers bore each MARKS entry

The sink must cost next to nothing, or it hides the cost of what is measured in front of it: the
aiosmtpd sink the benches used before spent several times the CPU per message of this one, enough to bound
the direct run and flatter "qsift / direct" (issue 14). This one is an `asyncio.Protocol` that
parses command lines, finds the end of DATA and throws the content away; the benches read its CPU time
from /proc and print it beside qsift's, so a slow sink shows.

It offers PIPELINING, 8BITMIME and SMTPUTF8, as Postfix does, and takes lines of any length: amavisd-new
and qsift fold header lines over 998 octets before they forward, but a message counted here must not
depend on it. It takes DATA only after an accepted RCPT and counts a message at its final dot.

With `--tally` it also keeps each message's header (up to HEADER_LIMIT octets) until the blank line and counts
the MARKS found there, so a benchmark that passes every category can check what the filter decided: every
EICAR found, the same spam flags (issue 14). amavisd-new (X-Amavis-Alert) and qsift (X-Qsift-Alert) word their
alerts alike.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

GREETING = b"220 sink.bench ESMTP\r\n"
EHLO_REPLY = (
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
)
#: The end of DATA (RFC 5321 4.1.1.4); the CRLF before the dot is the last line's, or DATA's own.
END_OF_DATA = b"\r\n.\r\n"

REPLIES = {
    b"HELO": b"250 sink.bench\r\n",
    b"EHLO": EHLO_REPLY,
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}


#: What `--tally` counts, once per message whose header holds it.
MARKS = {
    "virus": b"-Alert: INFECTED",
    "banned": b"-Alert: BANNED",
    "spam": b"X-Spam-Flag: YES",
}
HEADER_LIMIT = 256 * 1024
END_OF_HEADER = b"\r\n\r\n"


class Counter:
    def __init__(self, tally: bool = False) -> None:
        self.messages = 0
        #: None: headers are not looked at.
        self.marks: dict[str, int] | None = dict.fromkeys(MARKS, 0) if tally else None

    def note_header(self, header: bytes) -> None:
        assert self.marks is not None
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
        self.header_seen = False
        self.recipients = 0
        self.quitting = False

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
                if not self.header_seen and self.counter.marks is not None:
                    # `pending` still holds all of this message so far (it starts with DATA's own CRLF).
                    # A message without a body ends at its final dot; what follows belongs to the next one.
                    ends = [
                        at
                        for at in (self.pending.find(END_OF_HEADER), self.pending.find(END_OF_DATA))
                        if at >= 0
                    ]
                    if not ends and len(self.pending) < HEADER_LIMIT:
                        break
                    self.counter.note_header(self.pending[: min(ends, default=HEADER_LIMIT)])
                    self.header_seen = True
                end = self.pending.find(END_OF_DATA)
                if end < 0:
                    # Only the last four octets can begin a terminator that the next read completes.
                    self.pending = self.pending[-4:]
                    break
                self.pending = self.pending[end + len(END_OF_DATA) :]
                self.in_data = False
                self.header_seen = False
                self.recipients = 0
                self.counter.messages += 1
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


async def serve(port: int, tally: bool = False) -> Counter:
    """Sink on 127.0.0.1:`port` until SIGTERM; what it took."""
    counter = Counter(tally)
    loop = asyncio.get_running_loop()
    server = await listen(counter, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    return counter


def main() -> None:
    counter = asyncio.run(serve(int(sys.argv[-1]), tally="--tally" in sys.argv[1:-1]))
    print(counter.messages, flush=True)
    if counter.marks is not None:
        print(json.dumps(counter.marks), flush=True)


if __name__ == "__main__":
    main()
