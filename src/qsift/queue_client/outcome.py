"""What one try of qsift-queue can end in: an Attempt with a server, or a Fatal local failure."""

from __future__ import annotations


class Fatal(Exception):
    """A failure before any server was tried (configuration, input); exit with `code` at once."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class Attempt:
    """The result of trying one server: the exit code it stands for and whether the next may be tried."""

    __slots__ = ("answer", "code", "fail_over", "note")

    def __init__(
        self, code: int, note: str, *, fail_over: bool, answer: tuple[str, bytes] | None = None
    ) -> None:
        self.code = code
        #: One line for stderr: what happened, in the server's words if it answered.
        self.note = note
        #: True only while the server cannot have the request (QMQP: no final byte, no K or D).
        self.fail_over = fail_over
        #: The server's (letter, text) if it answered.
        self.answer = answer

    def __repr__(self) -> str:
        return f"Attempt({self.code!r}, {self.note!r}, fail_over={self.fail_over})"
