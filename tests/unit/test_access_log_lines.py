"""The access log's line formats (balancer/access_log.py): what a value from the request becomes
in a JSON line and in a combined line, byte for byte where it matters to the tools that read
them: escaping, cutting, numbers, unknown values."""

from __future__ import annotations

import json
import re

from balancer.access_log import _Clock, combined_line, json_into

LONG = (1024, 1024, 256, 256)
SHORT = (128, 128, 64, 64)


def record(**fields: object) -> dict:
    """The fields of one line (AccessLog._line's arguments), a bet by default."""
    r: dict = dict(
        time=1764796447.123456,  # 2025-12-03T21:14:07.123Z
        request_id="bet-1", client_ip="203.0.113.9", country=None, region=None,
        listener="public", tls=None, method=b"POST", host="casino.example",
        target=b"/bet?amount=5", protocol="HTTP/1.1", status=200, bytes_in=120, bytes_out=512,
        duration=0.0123456, connect=0.0, wait=0.010, route="bets", pool="games",
        backend="game-eu-1", tries=1, sticky="none", outcome="ok", user_agent=b"slot-client/2")
    r.update(fields)
    return r


def json_line(r: dict, clock: _Clock, limits: tuple[int, int, int, int],
              buf: bytearray | None = None, at: int = 0) -> bytes:
    """The line `json_into` writes, here into a new buffer or after `at` bytes of `buf`."""
    buf = bytearray() if buf is None else buf
    end = json_into(buf, at, clock, limits, **r)
    return bytes(buf[at:end])


def line_of(r: dict, limits: tuple[int, int, int, int] = LONG) -> dict:
    raw = json_line(r, _Clock(), limits)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    raw.decode("ascii")  # every byte beyond ASCII is escaped: a line is valid in any encoding
    return json.loads(raw)


def test_a_plain_line_has_every_field_in_order_and_exact_numbers() -> None:
    line = line_of(record())
    assert line == {
        "time": "2025-12-03T21:14:07.123Z", "request_id": "bet-1", "client_ip": "203.0.113.9",
        "country": None, "region": None, "listener": "public", "tls": None, "method": "POST",
        "host": "casino.example", "path": "/bet", "query": "amount=5", "protocol": "HTTP/1.1",
        "status": 200, "bytes_in": 120, "bytes_out": 512, "duration_ms": 12.345,
        "upstream_connect_ms": 0.0, "upstream_wait_ms": 10.0, "route": "bets", "pool": "games",
        "backend": "game-eu-1", "tries": 1, "sticky": "none", "outcome": "ok",
        "user_agent": "slot-client/2",
    }
    raw = json_line(record(), _Clock(), LONG)
    assert b'"duration_ms":12.345,"upstream_connect_ms":0.000,"upstream_wait_ms":10.000,' in raw


def test_large_numbers_and_unknown_timings() -> None:
    line = line_of(record(bytes_in=10000, bytes_out=123456789, duration=86400.5, tries=12,
                          connect=-1.0, wait=-1.0))
    assert (line["bytes_in"], line["bytes_out"], line["duration_ms"], line["tries"]) == (
        10000, 123456789, 86400500.0, 12)
    assert line["upstream_connect_ms"] is None and line["upstream_wait_ms"] is None


def test_quotes_backslashes_and_control_characters_are_escaped() -> None:
    ua = b'say "hi" \\ to\x00the\x1f\ttable\x7f'
    line = line_of(record(user_agent=ua, target=b'/a"b\\c?q="x"\n'))
    assert line["user_agent"] == 'say "hi" \\ to\x00the\x1f\ttable\x7f'
    assert line["path"] == '/a"b\\c'
    assert line["query"] == 'q="x"\n'


def test_bytes_that_are_not_utf8_become_backslash_x_escapes() -> None:
    line = line_of(record(user_agent=b"bot\xff\xfe", target=b"/caf\xc3\xa9/\xe9?n=\x80"))
    assert line["user_agent"] == "bot\\xff\\xfe"
    assert line["path"] == "/café/\\xe9"  # valid UTF-8 stays a character
    assert line["query"] == "n=\\x80"


def test_long_values_are_cut_and_marked() -> None:
    line = line_of(record(target=b"/" + b"p" * 2000 + b"?" + b"q" * 2000, user_agent=b"u" * 500))
    assert line["path"] == "/" + "p" * 1023 + "..."
    assert line["query"] == "q" * 1024 + "..."
    assert line["user_agent"] == "u" * 256 + "..."
    short = line_of(record(user_agent="é".encode() * 100), SHORT)
    assert short["user_agent"] == "é" * 64 + "..."  # characters, not bytes


def test_a_request_refused_before_its_head_was_read_has_nulls() -> None:
    line = line_of(record(method=b"", host="", target=b"", user_agent=None, route=None,
                          pool=None, backend=None, tries=0, status=400, outcome="bad_request"))
    assert [line[k] for k in ("method", "host", "path", "query", "user_agent", "route",
                              "pool", "backend")] == [None] * 8


def test_lines_in_the_same_millisecond_share_the_time_and_the_next_one_moves_on() -> None:
    clock = _Clock()
    first = json.loads(json_line(record(time=1764796447.1231), clock, LONG))
    second = json.loads(json_line(record(time=1764796447.1239), clock, LONG))
    third = json.loads(json_line(record(time=1764796448.0001), clock, LONG))
    assert first["time"] == second["time"] == "2025-12-03T21:14:07.123Z"
    assert third["time"] == "2025-12-03T21:14:08.000Z"


def test_combined_escapes_as_nginx_does() -> None:
    r = record(user_agent=b'say "hi"\x01\xff')
    text = combined_line(_Clock(), LONG, r["time"], r["request_id"], r["client_ip"], r["method"],
                         r["target"], r["protocol"], r["status"], r["bytes_out"], r["backend"],
                         r["user_agent"], b"https://casino.example/").decode("ascii")
    assert re.fullmatch(
        r'203\.0\.113\.9 - - \[03/Dec/2025:21:14:07 \+0000\] "POST /bet\?amount=5 HTTP/1\.1" 200 512 '
        r'"https://casino\.example/" "say \\x22hi\\x22\\x01\\xFF" bet-1 game-eu-1\n', text), text


def test_remembered_pieces_follow_the_values_of_each_line() -> None:
    """Runs of fields are remembered by their values: a line never gets another line's."""
    first = line_of(record(country="DE", region="eu-west", backend="game-eu-1", method=b"POST"))
    second = line_of(record(country="FR", region="eu-west", backend="game-eu-2", method=b"GET"))
    third = line_of(record(country="DE", region="eu-west", backend="game-eu-1", method=b"POST",
                           host="other.example", tls="TLSv1.3"))
    assert (first["country"], first["backend"], first["method"], first["host"]) == (
        "DE", "game-eu-1", "POST", "casino.example")
    assert (second["country"], second["backend"], second["method"]) == ("FR", "game-eu-2", "GET")
    assert (third["host"], third["tls"], third["backend"]) == ("other.example", "TLSv1.3", "game-eu-1")
    for n in range(50):  # many hosts, some too long to be remembered, each line still its own
        host = f"h{n}." + "x" * (600 if n % 2 else 5) + ".example"
        assert line_of(record(host=host))["host"] == host


def test_a_remembered_path_is_the_same_under_either_limit() -> None:
    path = b"/" + b"p" * 63  # as long as a remembered value gets
    assert line_of(record(target=path), SHORT)["path"] == path.decode()
    assert line_of(record(target=path), LONG)["path"] == path.decode()
    longer = b"/" + b"p" * 200
    assert line_of(record(target=longer), SHORT)["path"] == longer[:128].decode() + "..."
    assert line_of(record(target=longer), LONG)["path"] == longer.decode()


def test_lines_written_one_after_another_into_one_buffer_each_read_back_whole() -> None:
    """A batch is lines written end to end into one buffer, which grows as they come (from
    empty, past any size it had): each line is the same bytes as alone, and a cut at each
    newline gives the lines back."""
    clock = _Clock()
    buf = bytearray()
    at = 0
    alone = []
    for n in range(300):
        r = record(request_id=f"bet-{n}", target=b"/p/" + b"x" * n + b"?q=" + str(n).encode(),
                   status=200 + n % 300, bytes_out=n * 997, user_agent=None if n % 7 else b"ua/1")
        alone.append(json_line(r, _Clock(), LONG))
        end = json_into(buf, at, clock, LONG, **r)
        assert bytes(buf[at:end]) == alone[-1]
        at = end
    batch = bytes(buf[:at])
    assert batch.split(b"\n")[:-1] == [line[:-1] for line in alone]
    assert [json.loads(line)["request_id"] for line in batch.splitlines()] == [
        f"bet-{n}" for n in range(300)]


def test_a_line_written_over_a_longer_one_leaves_nothing_of_it() -> None:
    """A dropped or rewritten line (cut to the short limits) is written over in place: the
    batch ends where the new line does, whatever the buffer held beyond."""
    buf = bytearray()
    first = json_line(record(target=b"/" + b"p" * 2000), _Clock(), LONG, buf)
    second = json_line(record(target=b"/" + b"p" * 2000), _Clock(), SHORT, buf)
    assert len(second) < len(first) and len(buf) >= len(first)
    assert json.loads(second)["path"] == "/" + "p" * 127 + "..."


def test_names_beyond_ascii_are_escaped() -> None:
    """Names from the config may hold any character: escaped, the line stays ASCII."""
    line = line_of(record(listener="öffentlich", route="wetten", backend="spiel-ü"))
    assert (line["listener"], line["backend"]) == ("öffentlich", "spiel-ü")


def test_the_latest_path_and_user_agent_remembered_never_answer_for_another() -> None:
    """The latest path and user agent are remembered with their JSON: a line whose value
    differs (by a byte, in length, escaped or cut) gets its own."""
    values = [b"/a", b"/a", b"/b", b'/q"', b'/q"', b"/" + b"x" * 63, b"/" + b"x" * 64,
              b"/" + b"x" * 200, b"/a", b"/\xff", b"/\xff", b"/a"]
    for limits in (LONG, SHORT, LONG):
        for value in values:
            line = line_of(record(target=value, user_agent=value), limits)
            text = value.decode("utf-8", "backslashreplace")
            assert line["path"] == (text if len(text) <= limits[0] else text[:limits[0]] + "...")
            assert line["user_agent"] == (
                text if len(text) <= limits[2] else text[:limits[2]] + "...")
