"""deploy/systemd/balancer.service, checked by systemd's own `systemd-analyze verify`.

The test machine has no systemd as PID 1; `verify` works offline all the same. It insists that
ExecStart's program exists, so the check runs on a copy that points at this checkout's
`balancer` script (the shipped unit names /opt/balancer/venv, see docs/operations.md).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from balancer.config import Limits

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "balancer.service"
INSTALLED = "/opt/balancer/venv/bin/balancer"


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_reloads_restarts_and_runs_as_its_own_user():
    service = unit_sections()["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] == service["Group"] == "balancer"
    assert service["ExecStart"].startswith(INSTALLED + " run --config ")
    # Enough descriptors for the default max_connections: a client and a backend connection each.
    assert int(service["LimitNOFILE"]) >= 2 * Limits().max_connections + 1024
    # Longer than the default shutdown_timeout (30 s), or systemd kills a draining balancer.
    assert int(service["TimeoutStopSec"]) > 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_report(tmp_path):
    here = Path(sys.executable).parent / "balancer"
    assert here.exists(), "the balancer script is installed beside this Python"
    unit = tmp_path / "balancer.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(here)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    # verify exits 0 on mere warnings (unknown keys, bad values): any output is a finding.
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not findings, "\n".join(findings)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above can fail: the same unit with a misspelt key is reported."""
    here = Path(sys.executable).parent / "balancer"
    unit = tmp_path / "balancer.service"
    text = UNIT.read_text().replace(INSTALLED, str(here))
    unit.write_text(re.sub(r"^Restart=on-failure$", "Restart=on-failure\nRestartt=always", text, flags=re.M))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert "Restartt" in result.stderr
