"""How a batch of access-log lines is cut into writes (balancer/log_sink.py): whole lines only,
so that workers appending to one file or pipe never interleave a line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balancer.log_sink import PIPE_CHUNK, Target


def _lines(count: int, width: int) -> list[bytes]:
    return [(b"%06d " % i).ljust(width - 1, b"x") + b"\n" for i in range(count)]


def _batch(lines: list[bytes]) -> bytearray:
    """A batch as balancer/access_log.py hands it over: its lines end to end in a bytearray."""
    return bytearray(b"".join(lines))


@pytest.fixture
def pipe_target() -> Target:
    read_end, write_end = os.pipe()
    target = Target(f"/proc/self/fd/{write_end}")  # stdout under systemd or docker is a pipe
    os.close(write_end)
    yield target
    target.close()
    os.close(read_end)


def test_a_small_batch_is_one_write(tmp_path: Path) -> None:
    target = Target(str(tmp_path / "access.log"))
    lines = _lines(50, 300)
    assert [bytes(p) for p in target.pieces(_batch(lines))] == [b"".join(lines)]
    target.close()


def test_a_pipe_gets_writes_of_at_most_pipe_buf_bytes_cut_at_line_ends(pipe_target: Target) -> None:
    assert pipe_target.chunk == PIPE_CHUNK
    lines = _lines(200, 333)
    pieces = [bytes(p) for p in pipe_target.pieces(_batch(lines))]
    assert len(pieces) > 1
    assert b"".join(pieces) == b"".join(lines)
    for piece in pieces:
        assert 0 < len(piece) <= PIPE_CHUNK
        assert piece.endswith(b"\n")
        # every piece starts where a line starts
        assert piece[:6].isdigit()


def test_a_line_longer_than_a_write_goes_whole(pipe_target: Target) -> None:
    lines = _lines(3, 100) + [b"L" * (PIPE_CHUNK + 10) + b"\n"] + _lines(3, 100)
    pieces = [bytes(p) for p in pipe_target.pieces(_batch(lines))]
    assert b"".join(pieces) == b"".join(lines)
    assert any(p.endswith(b"L\n") and len(p) > PIPE_CHUNK for p in pieces)
    assert all(p.endswith(b"\n") for p in pieces)


def test_written_pieces_land_in_the_file_as_sent(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    target = Target(str(path))
    target.chunk = 1000  # several writes
    lines = _lines(40, 120)
    assert target.write(target.pieces(_batch(lines))) == 0
    target.close()
    assert path.read_bytes() == b"".join(lines)


def test_syslog_takes_one_datagram_per_line() -> None:
    target = Target("udp://127.0.0.1:9")
    lines = _lines(3, 50)
    assert target.pieces(_batch(lines)) == [line[:-1] for line in lines]  # without the newline
    target.close()


def test_the_pure_put_grows_the_buffer_and_writes_over_what_follows() -> None:
    """balancer/log_bytes.py's put (the compiled build's is C, tested through the lines it
    writes, tests/unit/test_access_log_lines.py)."""
    from balancer.log_bytes import put, put2

    buf = bytearray()
    at = put(buf, 0, b"abc")
    at = put(buf, at, "d\u00e9")
    assert (at, bytes(buf)) == (6, b"abcd\xc3\xa9")
    assert put(buf, 1, b"X") == 2 and bytes(buf) == b"aXcd\xc3\xa9"
    assert put2(buf, 6, b',"k":', "v") == 12 and bytes(buf) == b'aXcd\xc3\xa9,"k":v'
