"""The status line relayed to the player carries the backend's own reason phrase."""

from balancer.http.client_side import status_line


def test_each_backend_keeps_its_reason_phrase() -> None:
    # 299: a code no other test relays, so the remembered lines start empty for it.
    assert status_line(299, b"Fine") == b"HTTP/1.1 299 Fine\r\n"
    assert status_line(299, b"OK") == b"HTTP/1.1 299 OK\r\n"  # not another backend's "Fine"
    assert status_line(299, b"Fine") == b"HTTP/1.1 299 Fine\r\n"


def test_a_missing_reason_gets_the_standard_one() -> None:
    status_line(404, b"Nope")
    assert status_line(404, b"") == b"HTTP/1.1 404 Not Found\r\n"
