"""Starting up: a port some other process listens on is refused, not silently shared."""

import asyncio
import socket
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_a_busy_port_is_refused_with_a_clear_message(tmp_path):
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would share, if we let it
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(8)
    port = squatter.getsockname()[1]
    config = tmp_path / "busy.yaml"
    config.write_text(textwrap.dedent(f"""
        listeners: [{{name: public, address: "127.0.0.1:{port}"}}]
        admin: {{address: 127.0.0.1:0}}
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: [{{id: a, address: "127.0.0.1:9"}}]}}}}
        """))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "balancer", "run", "--config", str(config), cwd=ROOT,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        squatter.close()
    assert proc.returncode == 1
    assert f"{config}: cannot start: " in err.decode()
    assert "Address already in use" in err.decode()
    assert "Traceback" not in err.decode()
