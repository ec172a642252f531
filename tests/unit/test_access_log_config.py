"""`access_log` and `log_format` in the config: defaults, every key checked with its path."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from balancer.access_log import truncate_ip
from balancer.config import AccessLogConfig, ConfigError
from balancer.config_file import load_config
from balancer.log_format import JsonFormatter

BASE = """
listeners: [{name: l, address: "127.0.0.1:0"}]
routes: [{name: r, pool: p}]
pools: {p: {backends: [{id: a, address: "10.0.0.1:80"}]}}
"""


def load(tmp_path: Path, extra: str):
    path = tmp_path / "balancer.yaml"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(extra))
    return load_config(str(path))


def errors(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    return [f"{p}: {m}" for p, m in caught.value.errors]


def test_absent_means_no_access_log_and_an_empty_section_means_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").access_log is None
    assert load(tmp_path, "").log_format == "text"
    assert load(tmp_path, "access_log: {}").access_log == AccessLogConfig(
        path="stdout", format="json", sample=1.0, min_duration=0.0, client_ip="full")


def test_every_key(tmp_path: Path) -> None:
    config = load(tmp_path, """
        access_log: {path: logs.txt, format: combined, sample: 0.25, min_duration: 250ms, client_ip: truncated}
        log_format: json
        """)
    assert config.access_log == AccessLogConfig(
        path=str(tmp_path / "logs.txt"), format="combined", sample=0.25, min_duration=0.25,
        client_ip="truncated")
    assert config.log_format == "json"
    for path in ("stderr", "udp://127.0.0.1:514", "udp://[::1]:514", "unix:///dev/log"):
        assert load(tmp_path, f"access_log: {{path: '{path}'}}").access_log.path == path


def test_bad_values_are_reported_with_their_key_paths(tmp_path: Path) -> None:
    assert errors(tmp_path, """
        access_log: {path: /nonexistent/dir/a.log, format: xml, sample: 1.5, min_duration: 5, client_ip: half, buffer: 1}
        log_format: yaml
        """) == [
        "access_log.path: no such directory: /nonexistent/dir",
        "access_log.format: expected one of json, combined; got 'xml'",
        "access_log.sample: expected a number from 0 to 1, got 1.5",
        "access_log.min_duration: expected a duration with a unit (ms, s, m, h) like '2s', got 5",
        "access_log.client_ip: expected one of full, truncated; got 'half'",
        "access_log.buffer: unknown key",
        "log_format: expected one of text, json; got 'yaml'",
    ]
    assert errors(tmp_path, "access_log: {path: 'udp://syslog'}") == [
        "access_log.path: expected host:port, got 'syslog'"]
    assert errors(tmp_path, "access_log: {path: 'unix://dev/log'}") == [
        "access_log.path: expected unix:///absolute/path, got 'unix://dev/log'"]
    assert errors(tmp_path, "access_log: {path: 'tcp://x:1'}") == [
        "access_log.path: expected stdout, stderr, a file path, udp://host:port or unix:///path; got 'tcp://x:1'"]
    assert errors(tmp_path, f"access_log: {{path: '{tmp_path}'}}") == [f"access_log.path: is a directory: {tmp_path}"]


@pytest.mark.parametrize("ip, short", [
    ("203.0.113.77", "203.0.113.0"),
    ("::ffff:203.0.113.77", "203.0.113.0"),
    ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
    ("not-an-ip", "not-an-ip"),
])
def test_truncated_client_ip(ip: str, short: str) -> None:
    assert truncate_ip(ip) == short


def test_the_balancers_own_log_as_json() -> None:
    record = logging.LogRecord("balancer.health", logging.WARNING, __file__, 1, "pool %s: %d down",
                               ("games", 2), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "balancer.health"
    assert line["message"] == "pool games: 2 down"
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-12-03T21:14:07.123Z")
