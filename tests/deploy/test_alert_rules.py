"""deploy/prometheus/alerts.yml, checked and unit-tested by Prometheus' own promtool.

alerts_test.yml beside the rules holds the promtool unit tests: for every alert one case where
it fires (with its exact labels and annotations) and one where it must stay quiet.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"
# What the balancer's operators are paged for (docs/monitoring.md).
REQUIRED = {
    "BalancerInstanceDown", "BalancerBackendDown", "BalancerPoolNoEligibleBackend",
    "BalancerPoolPanicMode", "BalancerRouteErrorRate", "BalancerRouteLatencyHigh",
    "BalancerConsulUnreachable", "BalancerReloadFailed", "BalancerConnectionLimitReached",
    "BalancerAccessLogDropping",
}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (Debian package prometheus)")


def alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_alert_has_a_summary_a_description_and_a_severity():
    found = alerts()
    assert {rule["alert"] for rule in found} == REQUIRED
    for rule in found:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 60, rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]
    for name in REQUIRED:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} is never shown quiet"


@needs_promtool
def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED)} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path):
    """The unit tests can fail: with the 5xx threshold at 20% the 10% route no longer fires."""
    (tmp_path / "alerts.yml").write_text(RULES.read_text().replace("> 0.05", "> 0.2"))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "BalancerRouteErrorRate" in result.stdout + result.stderr
