"""The X-Qsift-Scanned mark: what it covers, how long it holds, and what breaks it."""

from __future__ import annotations

from qsift.wire import mark


def test_the_mark_survives_line_ends_and_breaks_on_any_change_to_what_it_covers() -> None:
    key = b"s" * 32
    header = b"Subject: x\nContent-Type: text/plain;\n charset=us-ascii\n"
    lf = mark.BodyDigest()
    lf.update(header + b"\nbody\nline\n")
    crlf = mark.BodyDigest()
    for piece in (b"Subject: x\r\nContent-Type: text/plain;\r\n charset=us-ascii\r", b"\n\r\nbody\r"):
        crlf.update(piece)
    crlf.update(b"\nline\r\n")
    assert lf.hexdigest() == crlf.hexdigest()
    reading = mark.reading_digest(header)
    # A forward prepends fields, and line ends and folding may change: the reading stays the same.
    assert mark.reading_digest(b"Delivered-To: b@x\r\n" + header.replace(b"\n ", b"\r\n\t")) == reading
    assert mark.reading_digest(b"Subject: y\nX-Other: 1\n" + header[11:]) == reading
    value = mark.make_value(key, lf.hexdigest(), reading, 1_000_000)
    assert mark.verify(key, value, crlf.hexdigest(), reading, 1_000_100)
    assert not mark.verify(key, value, crlf.hexdigest(), reading, 1_000_000 + mark.MAX_AGE + 1)  # stale
    assert not mark.verify(key, value, crlf.hexdigest(), reading, 1_000_000 - 301)  # from the future
    assert not mark.verify(b"t" * 32, value, lf.hexdigest(), reading, 1_000_100)  # another site's
    assert not mark.verify(key, value.replace("v2", "v1"), lf.hexdigest(), reading, 1_000_100)
    changed = mark.BodyDigest()
    changed.update(b"Subject: x\n\nbody\nLine\n")
    assert not mark.verify(key, value, changed.hexdigest(), reading, 1_000_100)
    for other in (b"Content-Type: text/html\n", header + b"Content-Transfer-Encoding: base64\n", b""):
        assert not mark.verify(key, value, lf.hexdigest(), mark.reading_digest(other), 1_000_100)
    assert mark.find_value(b"Delivered-To: b@x\nx-qsift-scanned:  v2 t=1 h=ab\n") == "v2 t=1 h=ab"
    assert mark.find_value(b"Subject: x\n") is None


def test_a_bare_cr_counts_as_the_line_end_the_smtp_forward_makes_of_it() -> None:
    # The forward sends "a<CR>b" as "a<CR><LF>b", which qmail stores as "a<LF>b": the mark made before
    # must verify after.
    def digest_of(*pieces: bytes) -> str:
        body = mark.BodyDigest()
        for piece in pieces:
            body.update(piece)
        return body.hexdigest()

    assert digest_of(b"H: x\n\na\rb\r") == digest_of(b"H: x\n\na\nb\n")
    assert digest_of(b"H: x\n\na\r", b"\rb") == digest_of(b"H: x\r\n\r\na\r\n\r\nb")
