"""Fuzzing the request reader (sans-IO) with hypothesis.

Four properties over hostile request streams cut into random packets:
- nothing but RequestError (with a 4xx/501 status) ever escapes `feed`;
- where packets are cut changes nothing (same requests, bodies and verdict), so no split of
  the stream can make the balancer frame it differently;
- what the reader accepts is safe to forward (a known method and version, a Host on 1.1,
  one framing, no control bytes in any header it passes on);
- every request it accepts is framed exactly as a strict reading of RFC 9112 frames it
  (tests/requestgen.py), so it never ends a request where a backend would not.

Bounded: a few hundred examples each, no deadline (a slow CI box must not fail them).
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.http.methods import ALLOWED_METHODS
from tests.requestgen import reference_frame, run, splits, streams

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SAFE_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_SAFE_TARGET = re.compile(rb"/[\x21-\x7e]*")


@st.composite
def cut_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(streams())
    return data, draw(splits(data))


@FUZZ
@given(cut_streams())
def test_only_request_errors_escape(case):
    _, pieces = case
    outcome = run(pieces)  # any other exception fails the test
    if outcome.error is not None:
        assert 400 <= outcome.error.status <= 501, outcome.error.status


@FUZZ
@given(cut_streams())
def test_packet_boundaries_change_nothing(case):
    data, pieces = case
    assert run(pieces).summary() == run([data]).summary()


@FUZZ
@given(cut_streams())
def test_what_is_accepted_is_safe_to_forward(case):
    _, pieces = case
    for seen in run(pieces).recorder.requests:
        head = seen.head
        # The exchange holds this head from request_started on: it must never change after.
        assert head.headers == seen.headers_at_start
        assert head.method in ALLOWED_METHODS
        assert head.version in (b"1.0", b"1.1")
        assert _SAFE_TARGET.fullmatch(head.target), head.target
        assert not (head.chunked and head.content_length is not None)
        assert not (head.chunked and head.version == b"1.0")
        if head.version == b"1.1":
            assert head.host
        assert sum(1 for name, _, _ in head.headers if name == b"host") <= 1
        for lname, name, value in head.headers:
            assert _TOKEN.fullmatch(name), name
            assert lname == name.lower()
            assert _SAFE_VALUE.fullmatch(value), value
        if head.upgrade is not None:
            assert head.upgrade == b"websocket" and not head.has_body


@FUZZ
@given(cut_streams())
def test_accepted_requests_are_framed_as_rfc_9112_frames_them(case):
    data, pieces = case
    outcome = run(pieces)
    reference = reference_frame(data)
    for index, seen in enumerate(outcome.recorder.requests):
        assert index < len(reference.messages), (data, reference.invalid)
        framed = reference.messages[index]
        assert seen.head.method == framed.method
        if not seen.head.absolute:
            assert seen.head.target == framed.target
        if seen.ended:
            assert framed.complete, (data, reference.invalid)
            assert seen.body == framed.body
        else:
            assert framed.body.startswith(seen.body)


def test_trailer_fields_never_reach_the_head():
    """Example: a trailer must not add to the request's headers after they were forwarded and
    acted upon (routing, plugins, retry rules)."""
    outcome = run([b"POST /bet HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nbet\r\n0\r\nIdempotency-Key: k1\r\n\r\n"])
    (seen,) = outcome.recorder.requests
    assert seen.ended and seen.body == b"bet"
    assert seen.head.header(b"idempotency-key") is None


def test_host_in_trailer_is_refused():
    outcome = run([b"POST /bet HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\nHost: evil.example\r\n\r\n"])
    assert outcome.error is not None and outcome.error.status == 400
