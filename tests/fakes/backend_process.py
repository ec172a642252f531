"""A backend in a process of its own, for tests that kill it (SIGKILL) under load.

`python -m tests.fakes.backend_process NAME` listens on a loopback port chosen by the OS,
prints `port N`, then for every request head it reads prints `seen ID` (the X-Request-Id)
before answering 200 with a small JSON body on a keep-alive connection. What it printed is
what reached it: a test tells a request that never got there from one that did.
"""

from __future__ import annotations

import asyncio
import sys


async def serve(name: str) -> None:
    body = b'{"backend": "%s"}' % name.encode()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), body)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_id = b""
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    field, _, value = line.partition(b":")
                    if field.lower() == b"x-request-id":
                        request_id = value.strip()
                    elif field.lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                sys.stdout.write(f"seen {request_id.decode()}\n")
                sys.stdout.flush()
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    sys.stdout.write(f"port {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else "process"))
