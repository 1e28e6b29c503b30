"""QMQP (cr.yp.to/proto/qmqp.html), sans-IO: the request as a stream of events, the K/Z/D response.

A request is one netstring holding the netstrings of the message, the sender and each recipient; the
response is one netstring whose first byte is K, Z or D. There are no F/T prefixes or NULs inside QMQP.

The server must not answer before the client has sent the final byte of the request. So once the outer
length is known, every fault inside it (a bad inner netstring, a limit exceeded, a bad address) sends
the parser into a discard state: it drops the rest of the outer netstring in O(1) memory, checks the
final comma and only then emits `RequestRejected` with the error to answer. Only a malformed outer
length prefix or a wrong final comma raises at once (there is no end left to wait for), as do bytes
after the final comma.
"""

from __future__ import annotations

from qsift.errors import (
    BadAddress,
    ClientError,
    MessageTooBig,
    NetstringError,
    NoRecipients,
    ProtocolError,
    TooManyRecipients,
)
from qsift.wire import netstring

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (qsift-queue's start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_COMMA = 0x2C
_LETTERS = b"KZD"


# --- the request, client side -------------------------------------------------------------------------


def request_frame(message_length: int, sender: bytes, recipients: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The bytes that go before and after the message, so a client can stream the message itself."""
    if message_length < 0:
        raise ValueError("message length must not be negative")
    envelope = netstring.encode(sender) + b"".join(netstring.encode(r) for r in recipients)
    message_prefix = b"%d:" % message_length
    inner_length = len(message_prefix) + message_length + 1 + len(envelope)
    return b"%d:%s" % (inner_length, message_prefix), b"," + envelope + b","


def encode_request(message: bytes, sender: bytes, recipients: Sequence[bytes]) -> bytes:
    """A whole request in memory; fine for tests and small messages."""
    head, tail = request_frame(len(message), sender, recipients)
    return head + message + tail


# --- the request, server side -------------------------------------------------------------------------


class _Value:
    """Immutable, compared by type and fields: what a frozen dataclass gives, at no import cost.

    qsift-queue imports this module for every message it hands over, and importing `dataclasses`
    (inspect, ast, dis, tokenize) plus decorating these classes made up about a quarter of its run
    time (measured: 31 ms against 24 ms per message).
    """

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class NeedData(_Value):
    """Nothing more can be parsed until `receive_data` is called again."""

    __slots__ = ()


class MessageChunk(_Value):
    """The next slice of the message body, as it arrived."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        super().__init__(data)


class MessageEnd(_Value):
    """The message body is complete."""

    __slots__ = ("size",)
    size: int

    def __init__(self, size: int) -> None:
        super().__init__(size)


class Sender(_Value):
    __slots__ = ("address",)
    address: bytes

    def __init__(self, address: bytes) -> None:
        super().__init__(address)


class Recipient(_Value):
    __slots__ = ("address",)
    address: bytes

    def __init__(self, address: bytes) -> None:
        super().__init__(address)


class RequestEnd(_Value):
    """The final byte of a valid request arrived: the server may answer now."""

    __slots__ = ()


class RequestRejected(_Value):
    """The final byte of an invalid request arrived: answer with `error`."""

    __slots__ = ("error",)
    error: ClientError

    def __init__(self, error: ClientError) -> None:
        super().__init__(error)


Event = MessageChunk | MessageEnd | Sender | Recipient | RequestEnd | RequestRejected

NEED_DATA = NeedData()


class _State:
    # Plain constants, not enum.Enum: qsift-queue imports this module for every message, and importing
    # enum cost it about 3 ms of a 20 ms run (measured with bench/queue_startup.py).
    OUTER_LENGTH = "outer length"
    FIELD_LENGTH = "field length"
    MESSAGE = "message"
    ADDRESS = "address"
    FIELD_COMMA = "field comma"
    DISCARD = "discard"
    OUTER_COMMA = "outer comma"
    DONE = "done"


class _Field:
    MESSAGE = "message"
    SENDER = "sender"
    RECIPIENT = "recipient"


_NEXT_FIELD = {
    _Field.MESSAGE: _Field.SENDER,
    _Field.SENDER: _Field.RECIPIENT,
    _Field.RECIPIENT: _Field.RECIPIENT,
}

if TYPE_CHECKING:
    _Step = Callable[["RequestParser"], "Event | NeedData | None"]


def _netstring_size(payload_length: int) -> int:
    return len(str(payload_length)) + 1 + payload_length + 1


class RequestParser:
    """Turns the bytes of one QMQP request into events (h11 style); never touches a socket.

    Feed bytes with `receive_data`, then call `next_event` until it returns NeedData. The message
    body comes as MessageChunk slices and is never held whole. End of file is the caller's to notice:
    a request that stops before its final byte must be thrown away unanswered.
    """

    def __init__(self, *, max_message_size: int, max_recipients: int, max_address_length: int = 1000) -> None:
        self._max_message_size = max_message_size
        self._max_recipients = max_recipients
        self._max_address_length = max_address_length
        # The longest outer netstring a request within every limit can have; past it, refuse unread.
        self._max_request = _netstring_size(max_message_size) + (max_recipients + 1) * _netstring_size(
            max_address_length
        )
        self._buf = b""
        self._pos = 0
        self._state = _State.OUTER_LENGTH
        self._length = netstring.LengthReader()
        self._outer_left = 0
        self._field = _Field.MESSAGE
        self._field_left = 0
        self._address = bytearray()
        self._message_size = 0
        self._recipients = 0
        self._rejection: ClientError | None = None
        self._failure: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; they are parsed by `next_event`."""
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0

    def next_event(self) -> Event | NeedData:
        """The next event, or NeedData. Raises NetstringError/ProtocolError when no answer can wait."""
        if self._failure is not None:
            raise self._failure
        try:
            while True:
                event = _STEPS[self._state](self)
                if event is not None:
                    return event
        except ProtocolError as exc:
            self._failure = exc
            raise

    # --- one method per state; each returns an event, NEED_DATA, or None to go on ---

    @property
    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, count: int) -> bytes:
        start = self._pos
        self._pos += count
        self._outer_left -= count
        if start == 0 and count == len(self._buf):
            return self._buf
        return self._buf[start : self._pos]

    def _reject(self, error: ClientError) -> None:
        self._rejection = error
        self._state = _State.DISCARD

    def _step_outer_length(self) -> NeedData | None:
        if not self._available:
            return NEED_DATA
        try:
            length, self._pos = self._length.feed(self._buf, self._pos)
        except NetstringError as exc:
            raise NetstringError(f"protocol error: request {exc}") from None
        if length is None:
            return NEED_DATA
        self._length = netstring.LengthReader()
        self._outer_left = length
        if length > self._max_request:
            self._reject(MessageTooBig("message too big"))
        else:
            self._state = _State.FIELD_LENGTH
        return None

    def _step_field_length(self) -> NeedData | None:
        name = self._field
        if self._outer_left == 0:
            if self._length.started:
                self._reject(NetstringError(f"protocol error: {name} crosses the end of the request"))
            else:
                self._end_of_fields()
            return None
        if not self._available:
            return NEED_DATA
        stop = self._pos + min(self._available, self._outer_left)
        try:
            length, after = self._length.feed(self._buf, self._pos, stop)
        except NetstringError as exc:
            # Nothing consumed is lost: the discard counts from this window's start.
            self._reject(NetstringError(f"protocol error: {name} {exc}"))
            return None
        self._outer_left -= after - self._pos
        self._pos = after
        if length is not None:
            self._length = netstring.LengthReader()
            self._start_field(length)
        return None

    def _start_field(self, length: int) -> None:
        name = self._field
        if length + 1 > self._outer_left:
            self._reject(NetstringError(f"protocol error: {name} crosses the end of the request"))
        elif self._field == _Field.MESSAGE:
            if length > self._max_message_size:
                self._reject(MessageTooBig("message too big"))
            else:
                self._field_left = self._message_size = length
                self._state = _State.MESSAGE
        elif self._field == _Field.RECIPIENT and self._recipients >= self._max_recipients:
            self._reject(TooManyRecipients("too many recipients"))
        elif length > self._max_address_length:
            self._reject(BadAddress(f"{name} address too long"))
        elif self._field == _Field.RECIPIENT and length == 0:
            self._reject(BadAddress("empty recipient address"))
        else:
            self._field_left = length
            self._address = bytearray()
            self._state = _State.ADDRESS

    def _end_of_fields(self) -> None:
        if self._field != _Field.RECIPIENT:
            self._reject(ProtocolError(f"protocol error: request ends before the {self._field}"))
        elif self._recipients == 0:
            self._reject(NoRecipients("no recipients"))
        else:
            self._state = _State.OUTER_COMMA

    def _step_message(self) -> MessageChunk | NeedData | None:
        if self._field_left == 0:
            self._state = _State.FIELD_COMMA
            return None
        if not self._available:
            return NEED_DATA
        chunk = self._take(min(self._available, self._field_left))
        self._field_left -= len(chunk)
        return MessageChunk(chunk)

    def _step_address(self) -> NeedData | None:
        if self._field_left == 0:
            if b"\0" in self._address or b"\r" in self._address or b"\n" in self._address:
                self._reject(BadAddress(f"{self._field} address contains NUL, CR or LF"))
            else:
                self._state = _State.FIELD_COMMA
            return None
        if not self._available:
            return NEED_DATA
        piece = self._take(min(self._available, self._field_left))
        self._field_left -= len(piece)
        self._address += piece
        return None

    def _step_field_comma(self) -> Event | NeedData | None:
        if not self._available:
            return NEED_DATA
        if self._buf[self._pos] != _COMMA:
            self._reject(NetstringError(f"protocol error: missing comma after {self._field}"))
            return None
        self._take(1)
        event: Event
        if self._field == _Field.MESSAGE:
            event = MessageEnd(self._message_size)
        elif self._field == _Field.SENDER:
            event = Sender(bytes(self._address))
        else:
            self._recipients += 1
            event = Recipient(bytes(self._address))
        self._field = _NEXT_FIELD[self._field]
        self._state = _State.FIELD_LENGTH
        return event

    def _step_discard(self) -> NeedData | None:
        if self._outer_left == 0:
            self._state = _State.OUTER_COMMA
            return None
        if not self._available:
            return NEED_DATA
        dropped = min(self._available, self._outer_left)
        self._pos += dropped
        self._outer_left -= dropped
        return None

    def _step_outer_comma(self) -> RequestEnd | RequestRejected | NeedData:
        if not self._available:
            return NEED_DATA
        if self._buf[self._pos] != _COMMA:
            raise NetstringError("protocol error: missing comma at the end of the request")
        self._pos += 1
        self._state = _State.DONE
        self._check_nothing_after()
        if self._rejection is not None:
            return RequestRejected(self._rejection)
        return RequestEnd()

    def _step_done(self) -> NeedData:
        self._check_nothing_after()
        return NEED_DATA

    def _check_nothing_after(self) -> None:
        if self._available:
            raise ProtocolError("protocol error: bytes after the end of the request")


_STEPS: dict[str, _Step] = {
    _State.OUTER_LENGTH: RequestParser._step_outer_length,
    _State.FIELD_LENGTH: RequestParser._step_field_length,
    _State.MESSAGE: RequestParser._step_message,
    _State.ADDRESS: RequestParser._step_address,
    _State.FIELD_COMMA: RequestParser._step_field_comma,
    _State.DISCARD: RequestParser._step_discard,
    _State.OUTER_COMMA: RequestParser._step_outer_comma,
    _State.DONE: RequestParser._step_done,
}


# --- the response ---------------------------------------------------------------------------------------


def encode_response(letter: str, text: bytes) -> bytes:
    """The response netstring: K (accepted), Z (temporary failure) or D (permanent), then the text."""
    if letter not in ("K", "Z", "D"):
        raise ValueError(f"QMQP response letter must be K, Z or D, not {letter!r}")
    return netstring.encode(letter.encode("ascii") + text)


class ResponseParser:
    """Reads the server's response netstring incrementally, holding at most `max_length` bytes."""

    def __init__(self, max_length: int = 65536) -> None:
        self._max_length = max_length
        self._length_reader = netstring.LengthReader()
        self._length: int | None = None
        self._payload = bytearray()
        self._result: tuple[str, bytes] | None = None

    def feed(self, data: bytes) -> tuple[str, bytes] | None:
        """Add bytes; return (letter, text) once the whole netstring arrived, else None.

        Raises ProtocolError for a malformed netstring or a first byte other than K, Z or D. Bytes
        after the final comma are ignored: the server closes after its response.
        """
        if self._result is not None:
            return self._result
        pos = 0
        if self._length is None:
            length, pos = self._length_reader.feed(data)
            if length is None:
                return None
            netstring.check_length(length, self._max_length)
            if length == 0:
                raise ProtocolError("protocol error: empty response")
            self._length = length
        taken = data[pos : pos + self._length - len(self._payload)]
        self._payload += taken
        pos += len(taken)
        if self._payload[:1] and self._payload[0] not in _LETTERS:
            raise ProtocolError("protocol error: response does not start with K, Z or D")
        if len(self._payload) < self._length or pos == len(data):
            return None
        if data[pos] != _COMMA:
            raise NetstringError("protocol error: missing comma after the response")
        self._result = (chr(self._payload[0]), bytes(self._payload[1:]))
        return self._result
