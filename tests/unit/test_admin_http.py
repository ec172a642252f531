"""The admin listener's HTTP server (balancer/admin_http.py) on a real socket: routing on the
path as sent, HEAD, 405, pipelined requests answered in order, bodies, malformed requests."""

from __future__ import annotations

import asyncio

from balancer.admin_http import AdminHttpServer, Request, Response, Router, json_response


async def echo(request: Request) -> Response:
    return json_response({"method": request.method, "path": request.path, "match": request.match_info,
                          "body": request.body.decode(), "origin": request.headers.get("ORIGIN")})


def router() -> Router:
    routes = Router()
    routes.add("GET", "/a", echo)
    routes.add("POST", "/items/{name}/go", echo)
    return routes


async def exchange(raw: bytes) -> bytes:
    routes = router()

    async def handle(request: Request) -> Response:
        handler = routes.resolve(request)
        return handler if isinstance(handler, Response) else await handler(request)

    server = AdminHttpServer(handle)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        data = await reader.read()  # every test request ends with Connection: close
        writer.close()
        return data
    finally:
        await server.stop()


async def test_routes_match_the_path_as_sent_and_decode_parameters() -> None:
    data = await exchange(b"POST /items/a%20b/go?x=1 HTTP/1.1\r\nHost: h\r\nOrigin: o\r\n"
                          b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"match": {"name": "a b"}' in data and b'"body": "hi"' in data and b'"origin": "o"' in data
    for path in (b"/%61", b"//a", b"/a/", b"/items//go"):
        data = await exchange(b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
        assert data.startswith(b"HTTP/1.1 404 "), path


async def test_head_405_and_pipelined_requests_in_order() -> None:
    data = await exchange(b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n"
                          b"GET /items/x/go HTTP/1.1\r\nHost: h\r\n\r\n"
                          b"POST /items/y/go HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                          b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    first, rest = data.split(b"\r\n\r\n", 1)  # HEAD: a head only
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 405 ") and b"Allow: POST" in rest
    assert rest.index(b"405") < rest.index(b'"body": "abc"')


async def test_a_malformed_request_is_refused_and_closed() -> None:
    data = await exchange(b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data
