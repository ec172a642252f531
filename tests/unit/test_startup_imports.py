"""What a balancer process imports at start: only what serving needs.

aiohttp (Consul), cryptography (certificate dates), maxminddb (a geo
database) and h2 (the first HTTP/2 connection) cost megabytes of RSS in every process and are
imported where used (docs/decisions.md, "Idle WebSockets").
"""

from __future__ import annotations

import subprocess
import sys

DEFERRED = ("aiohttp", "cryptography", "maxminddb", "h2")


def test_starting_a_balancer_imports_none_of_the_deferred_packages() -> None:
    probe = ("import sys, balancer.cli, balancer.app, balancer.workers;"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({DEFERRED!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # The probe can fail: the packages are installed and importable.
    seen = subprocess.run([sys.executable, "-c", probe.replace("import sys,", "import sys, aiohttp,")],
                          capture_output=True, text=True, check=True)
    assert "aiohttp" in seen.stdout
