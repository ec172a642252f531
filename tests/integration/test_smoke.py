"""The spine end to end: a request through the real balancer reaches a real backend."""

from tests.conftest import pool_yaml


async def test_request_reaches_a_backend_and_answer_names_it(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    seen = set()
    for _ in range(64):  # idle backends tie and least_conn breaks ties at random
        if seen == {"b1", "b2"}:
            break
        async with http.get(lb.url + "/hello?x=1") as resp:
            assert resp.status == 200
            body = await resp.json()
            seen.add(body["backend"])
            assert body["path"] == "/hello?x=1"
            assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
            assert body["headers"]["X-Forwarded-Proto"] == "http"
    assert seen == {"b1", "b2"}
