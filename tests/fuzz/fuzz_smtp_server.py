"""Fuzz entry point for the sans-IO SMTP/LMTP server.

    pip install -e '.[fuzz]' && python -m tests.fuzz smtp_server [corpus_dir]

The first input byte chooses the chunk size, SMTP or LMTP, and whether XFORWARD is offered; the rest is fed
to a connection as a client would, refusing every second DATA (too busy) and answering every message.
Nothing may raise, every reply is a whole CRLF-ended line, the input the connection holds stays bounded,
and what XFORWARD hands out is only ever a known attribute with a value safe in a log line. Importable
without atheris, so tests can run it.
"""

from __future__ import annotations

from qsift.model import Answer, Reply
from qsift.wire import smtp_server as s
from qsift.wire.smtp_args import XFORWARD_ATTRIBUTES

_OK = Reply(Answer.ACCEPT, 250, "2.0.0", "Ok")
_BUSY = Reply(Answer.TEMPFAIL, 451, "4.3.2", "too busy, try later")
_MAX_LINE = 128


def drive(data: bytes, step: int, *, lmtp: bool, xforward: bool = False) -> None:
    settings = s.ServerSettings(
        hostname="fuzz.test",
        lmtp=lmtp,
        max_message_size=256,
        max_recipients=4,
        max_line_length=_MAX_LINE,
        xforward=xforward,
    )
    conn = s.SmtpServerConnection(settings)
    output = conn.data_to_send()
    recipients = 0
    data_commands = 0
    chunks = [data[i : i + step] for i in range(0, len(data), step)] + [b""]
    for chunk in chunks:
        conn.receive_data(chunk)
        # Each event consumes input or changes state, so this bound is never reached.
        for _ in range(4 * len(data) + 16):
            event = conn.next_event()
            if isinstance(event, s.RcptTo):
                recipients += 1
            elif isinstance(event, s.DataEnd):
                assert len(event.recipients) == recipients and event.recipients
                assert event.too_big == (event.size > 256)
                assert xforward or not event.xforward
                for name, value in event.xforward.items():
                    assert name in XFORWARD_ATTRIBUTES, name
                    assert value is None or (value.isascii() and value.isprintable() and " " not in value)
            elif isinstance(event, s.DataStart):
                data_commands += 1
                if data_commands % 2:
                    conn.start_data()
                else:
                    conn.refuse_data(_BUSY)
            elif isinstance(event, s.Paused):
                conn.answer_data([_OK] * (recipients if lmtp else 1))
                recipients = 0
            elif isinstance(event, s.MailFrom | s.Hello | s.Quit):
                recipients = 0
            elif isinstance(event, s.NeedData | s.ConnectionClosed):
                break
        else:
            raise AssertionError("next_event made no progress")
        output += conn.data_to_send()
        assert len(conn._input) <= _MAX_LINE + step + 3  # the bound is the point
    assert not output or output.endswith(b"\r\n")
    for line in output.split(b"\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), line


def TestOneInput(data: bytes) -> None:
    """The function atheris calls with each input (hence the name)."""
    if not data:
        return
    drive(data[1:], data[0] % 64 + 1, lmtp=data[0] >= 128, xforward=bool(data[0] & 64))
