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

# A file gets a whole batch (balancer/access_log.py BATCH_BYTES) in one write: each write
# costs the writer thread the GIL twice. A pipe gets at most PIPE_BUF bytes a write (atomic).
FILE_CHUNK = 1024 * 1024
PIPE_CHUNK = select.PIPE_BUF
# Syslog: facility local0, severity info (RFC 5424 §6.2.1), in the BSD form every daemon reads.
SYSLOG_PRI = 16 * 8 + 6

_REOPEN = "reopen"
_STOP = "stop"


class Target:
    """An opened sink: `write(pieces(data))` writes whole lines, raising OSError on failure."""

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

    def pieces(self, data: bytes | bytearray) -> list:
        """A batch of whole lines as this sink takes them, cut in the loop thread: one datagram
        per line for syslog; else writes of at most `chunk` bytes, cut at line ends. The writer
        thread then has only writes to make: it never loops over lines while holding the GIL,
        which the event loop would wait for (measured: that per-line loop in the writer made
        the event loop thread lose the CPU about once per request)."""
        if self.sock is not None:
            return data.split(b"\n")[:-1]
        chunk = self.chunk
        if len(data) <= chunk:
            return [data]
        view = memoryview(data)
        pieces = []
        start, size = 0, len(data)
        while size - start > chunk:
            end = data.rfind(b"\n", start, start + chunk) + 1
            if end <= start:  # a line longer than a chunk (not made by access_log.py) goes whole
                end = data.find(b"\n", start + chunk) + 1 or size
            pieces.append(view[start:end])
            start = end
        if start < size:
            pieces.append(view[start:])
        return pieces

    def write(self, pieces: list) -> int:
        """Write what `pieces` made. A syslog socket takes each line as a datagram of its own:
        one it refuses (no daemon at the path yet, a full buffer) is lost alone and counted in
        the returned number, the next ones are still tried. A stream sink raises OSError."""
        if self.sock is not None:
            prefix, sock, address = self.prefix, self.sock, self.address
            refused = 0
            for line in pieces:
                try:
                    sock.sendto(prefix + line, address)
                except OSError as exc:
                    refused += 1
                    self.error = exc
            return refused
        for piece in pieces:
            _write_all(self.fd, piece)
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


def _write_all(fd: int, data: bytes | memoryview) -> None:
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

    def put(self, data: bytes | bytearray, count: int) -> None:
        """Queue `count` whole lines, `data`, for writing (and let go of `data`); called in the
        event loop's thread."""
        self._queue.put((self.target.pieces(data), len(data), count))

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
                pieces, size, count = item
                try:
                    refused = target.write(pieces)
                except OSError as exc:
                    refused = count
                    target.error = exc
                if refused:
                    self._warn(target.error)
                else:
                    self._warned = False
                self._on_done(size, count - refused, refused)

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
