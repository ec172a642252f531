"""Where access-log lines go, written by a thread of their own.

The event loop only hands over batches of whole lines (`LogWriter.put`); a writer thread does
every write, so a slow disk, a full pipe or a stuck syslog daemon never blocks a request. The
loop side bounds what may wait (see balancer/access_log.py) and drops past that.

Each write carries whole lines only, so that several processes (`workers: N`) writing to one
sink never interleave a line:
- a file is opened O_APPEND: the kernel positions and writes each write() as one piece;
- a pipe (stdout under systemd or docker) gets writes of at most PIPE_BUF bytes, which POSIX
  makes atomic (lines are kept below that, balancer/access_log.py);
- syslog (udp://host:port, unix:///dev/log) gets one datagram per line.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import stat
import sys
import threading
from typing import Callable

log = logging.getLogger("balancer.access_log")

# A file gets batches up to this size in one write; a pipe at most PIPE_BUF (atomic).
FILE_CHUNK = 64 * 1024
PIPE_CHUNK = select.PIPE_BUF
# Syslog: facility local0, severity info (RFC 5424 §6.2.1), in the BSD form every daemon reads.
SYSLOG_PRI = 16 * 8 + 6

_REOPEN = "reopen"
_STOP = "stop"


class Target:
    """An opened sink: `write(lines)` writes whole lines, raising OSError on failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.sock: socket.socket | None = None
        self.address: object = None
        self.chunk = FILE_CHUNK
        self.prefix = b""
        self.error: OSError | None = None  # the latest a syslog socket refused a line with
        self.open()

    def open(self) -> None:
        path = self.path
        if path in ("stdout", "stderr"):
            stream = sys.stdout if path == "stdout" else sys.stderr
            self.fd = os.dup(stream.fileno())  # our own descriptor: closing it leaves the stream
            self._size_chunks()
        elif path.startswith("udp://"):
            host, _, port = path[len("udp://"):].rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.address = (host, int(port))
            self.prefix = b"<%d>balancer[%d]: " % (SYSLOG_PRI, os.getpid())
        elif path.startswith("unix://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.address = path[len("unix://"):]
            self.prefix = b"<%d>balancer[%d]: " % (SYSLOG_PRI, os.getpid())
        else:
            # O_NONBLOCK only for the open: a FIFO without a reader fails at once (ENXIO) instead
            # of hanging whoever opens it. Writes then block, in the writer thread only.
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
                              0o640)
            os.set_blocking(self.fd, True)
            self._size_chunks()

    def _size_chunks(self) -> None:
        mode = os.fstat(self.fd).st_mode
        self.chunk = FILE_CHUNK if stat.S_ISREG(mode) else PIPE_CHUNK

    def write(self, lines: list[bytes]) -> int:
        """Write whole lines. A syslog socket takes each line as a datagram of its own: one it
        refuses (no daemon at the path yet, a full buffer) is lost alone and counted in the
        returned number, the next ones are still tried. A stream sink raises OSError."""
        if self.sock is not None:
            prefix, sock, address = self.prefix, self.sock, self.address
            refused = 0
            for line in lines:
                try:
                    sock.sendto(prefix + line.rstrip(b"\n"), address)
                except OSError as exc:
                    refused += 1
                    self.error = exc
            return refused
        fd, chunk = self.fd, self.chunk
        piece: list[bytes] = []
        size = 0
        for line in lines:
            if size and size + len(line) > chunk:
                _write_all(fd, b"".join(piece))
                piece.clear()
                size = 0
            piece.append(line)
            size += len(line)
        if piece:
            _write_all(fd, b"".join(piece))
        return 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def reopen(self) -> None:
        """After logrotate renamed the file: the same path, a new file. Other sinks have no
        file to rotate; they are left as they are."""
        if self.fd >= 0 and self.path not in ("stdout", "stderr"):
            old = self.fd
            self.open()
            os.close(old)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LogWriter:
    """A sink and the thread that writes to it. Counters are each written by one thread only
    (no lock on the request path): the loop counts what it queued, the thread what it did."""

    def __init__(self, path: str, on_done: Callable[[int, int, int], None]) -> None:
        self.target = Target(path)  # opened here: a path that cannot be opened fails the start
        self._on_done = on_done  # (bytes done, lines written, lines failed), in the writer thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def put(self, lines: list[bytes], size: int) -> None:
        self._queue.put((lines, size))

    def reopen(self) -> None:
        self._queue.put(_REOPEN)

    def mark(self, done: Callable[[], None]) -> None:
        """Call `done` (in the writer thread) once everything queued before is written."""
        self._queue.put(done)

    def stop(self) -> None:
        """Write what is queued, then close the sink and end the thread."""
        self._queue.put(_STOP)

    def _run(self) -> None:
        get = self._queue.get
        target = self.target
        while True:
            item = get()
            if item is _STOP:
                target.close()
                return
            if item is _REOPEN:
                self._reopen()
            elif callable(item):
                item()
            else:
                lines, size = item
                try:
                    refused = target.write(lines)
                except OSError as exc:
                    refused = len(lines)
                    target.error = exc
                if refused:
                    self._warn(target.error)
                else:
                    self._warned = False
                self._on_done(size, len(lines) - refused, refused)

    def _reopen(self) -> None:
        try:
            self.target.reopen()
        except OSError as exc:
            log.error("access log: cannot reopen %s: %s; still writing to the old file",
                      self.target.path, exc)
        else:
            self._warned = False

    def _warn(self, exc: OSError | None) -> None:
        if not self._warned:  # once until it works again: a full disk must not flood the log
            self._warned = True
            log.error("access log: writing to %s failed: %s; lines are dropped and counted "
                      "in balancer_access_log_dropped_total", self.target.path, exc)
