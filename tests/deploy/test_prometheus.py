"""The dashboard and the alert rules against Debian's real Prometheus server scraping a
running balancer on loopback.

Prometheus scrapes every second and evaluates deploy/prometheus/alerts.yml every second. While
traffic runs through the balancer (two static pools, one of them with a backend that refuses
connections, and a pool fed by the Consul double), every query of deploy/grafana/balancer.json
must return data; then a backend is killed and BalancerBackendDown must be firing in
Prometheus' alerts API. Both are waited for as events, with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
import yaml

from tests.conftest import Running, pool_yaml
from tests.fakes.backends import free_port
from tests.fakes.consul import FakeConsul

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "balancer.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
# The dashboard's variables, as "All" would expand them; $__rate_interval as Grafana would
# pick for a 1 s scrape interval, widened so a burst of test traffic stays in view.
VARIABLES = {"$instance": ".*", "$pool": ".*", "$route": ".*", "$__rate_interval": "1m"}
DATA_BOUND = 90.0  # seconds for every query to have data: a few scrapes, on a busy machine
ALERT_BOUND = 150.0  # the backend-down alert: health checks, then `for: 30s`, then evaluation


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(doc: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def variable_queries(doc: dict) -> list[tuple[str, str]]:
    """The query variables' label_values(selector, label), as the series query Grafana sends."""
    out = []
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert match, var["definition"]
        out.append((f"variable {var['name']}", f"group by ({match[2]}) ({match[1]})"))
    return out


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


# -- the dashboard file itself ---------------------------------------------------------------------


def test_the_dashboard_is_importable_and_has_its_variables_and_sections():
    doc = dashboard()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "instance", "pool", "route"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    rows = {p["title"] for p in doc["panels"] if p["type"] == "row"}
    assert rows == {"Overview", "Traffic", "Errors", "Latency", "Backends", "Connections and WebSockets",
                    "Retries and ejections", "Consul and reloads"}
    # Every query follows the instance variable; per-pool and per-route ones their variables.
    for title, expr in panel_queries(doc):
        assert 'instance=~"$instance"' in expr, title
        if "balancer_requests_total" in expr or "request_duration" in expr:
            assert 'route=~"$route"' in expr and 'pool=~"$pool"' in expr, title


# -- against a real Prometheus ----------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def query(self, expr: str) -> list[dict]:
        async with self.http.get(self.url + "/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def alerts(self) -> list[dict]:
        async with self.http.get(self.url + "/api/v1/alerts") as resp:
            return (await resp.json())["data"]["alerts"]

    async def rule_names(self) -> set[str]:
        async with self.http.get(self.url + "/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        return {rule["name"] for group in groups for rule in group["rules"]}


@pytest.fixture
async def prometheus(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator:
    """`await prometheus(admin_url)`: Debian's Prometheus scraping that admin listener."""
    if not os.path.exists(PROMETHEUS):
        pytest.skip("prometheus is not installed (scripts/system-packages installs it)")
    processes: list[asyncio.subprocess.Process] = []

    async def start(admin_url: str) -> Prometheus:
        target = admin_url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "balancer", "static_configs": [{"targets": [target]}]}],
        }))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        process = await asyncio.create_subprocess_exec(
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=log, stderr=log)
        processes.append(process)
        server = Prometheus(f"http://127.0.0.1:{port}", http)
        deadline = time.monotonic() + DATA_BOUND
        while True:
            assert process.returncode is None, (tmp_path / "prometheus.log").read_text()
            try:
                async with http.get(server.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return server
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            await asyncio.sleep(0.1)

    yield start
    for process in processes:
        if process.returncode is None:
            process.terminate()
            await process.wait()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


async def traffic(http: aiohttp.ClientSession, lb: Running) -> None:
    """A little of everything the dashboard shows: answers, a 5xx, a refusal, a retry."""
    for path in ("/game/1", "/game/2", "/lobby", "/lobby", "/tables", "/error", "/nowhere"):
        async with http.get(lb.url + path) as resp:
            await resp.read()


@pytest.mark.timeout(DATA_BOUND + ALERT_BOUND + 60)
async def test_dashboard_queries_have_data_and_a_killed_backend_fires_its_alert(
        start_balancer, backends, http, prometheus, consul: FakeConsul):
    g1, g2, lobby, table, teapot = await backends(("g1", "eu-west"), ("g2", "eu-south"),
                                                  ("lobby-1", "eu-west"), ("t1", "eu-west"), "teapot")
    teapot.mode = "status:503"
    consul.add_instance("tables", "t1", address="127.0.0.1", port=table.port)
    gone = f"127.0.0.1:{free_port()}"  # nothing listens: connect failures, retries, an ejection
    lb = await start_balancer(f"""
        consul:
          address: {consul.address}
          wait: 1s
        routes:
          - {{name: lobby, match: {{path_prefix: /lobby}}, pool: lobby}}
          - {{name: tables, match: {{path_prefix: /tables}}, pool: tables}}
          - {{name: errors, match: {{path_prefix: /error}}, pool: failing}}
          - {{name: games, match: {{path_prefix: /game}}, pool: games}}
        pools:
          games:
            backends: {pool_yaml([g1, g2])}
            health_check: {{path: /health, interval: 0.2s, timeout: 1s, unhealthy_threshold: 2}}
          lobby:
            backends: [{{id: gone, address: '{gone}'}}, {{id: lobby-1, address: '{lobby.address}'}}]
            outlier: {{consecutive_failures: 1}}
          failing:
            backends: [{{id: teapot, address: '{teapot.address}'}}]
          tables:
            discovery:
              consul: {{service: tables}}
        """)
    server = await prometheus(lb.admin_url)
    assert await server.rule_names() >= {"BalancerBackendDown", "BalancerInstanceDown"}

    queries = panel_queries(dashboard()) + variable_queries(dashboard())
    missing = dict(queries)
    deadline = time.monotonic() + DATA_BOUND
    while missing:
        await traffic(http, lb)
        for title, expr in list(missing.items()):
            if await server.query(expand(expr)):
                del missing[title]
        if time.monotonic() > deadline:
            raise AssertionError("dashboard queries without data:\n" +
                                 "\n".join(f"{t}: {expand(e)}" for t, e in missing.items()))
        await asyncio.sleep(0.5)

    # Kill a backend: its health checks fail, and after `for: 30s` the alert fires.
    await g1.stop()
    deadline = time.monotonic() + ALERT_BOUND
    while True:
        firing = [a for a in await server.alerts()
                  if a["labels"]["alertname"] == "BalancerBackendDown" and a["state"] == "firing"]
        if firing:
            break
        assert time.monotonic() < deadline, await server.alerts()
        await asyncio.sleep(0.5)
    (alert,) = firing
    assert alert["labels"]["pool"] == "games" and alert["labels"]["backend"] == "g1"
    assert alert["labels"]["state"] == "unhealthy" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == "Backend games/g1 is unhealthy"
