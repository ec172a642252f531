"""Command line: `balancer run|check|demo --config FILE` (README.md, "Commands")."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError
from .config_file import check_main, load_config
from .log_format import TEXT_FORMAT, use_log_format


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=TEXT_FORMAT, stream=sys.stderr)


def _event_loop_policy() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def raise_fd_limit(max_connections: int) -> None:
    """Each player connection may hold a backend connection too: ask for 2x + slack file
    descriptors, as HAProxy sizes its own limit from maxconn (raising the hard limit only
    works with the privilege to; otherwise say so once)."""
    import resource

    want = 2 * max_connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        logging.getLogger("balancer").warning(
            "file descriptor limit %d is below the %d that max_connections %d needs",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0], want, max_connections)


def run(config_path: str) -> int:
    from . import signals

    signals.note_early()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    use_log_format(config.log_format)
    if signals.stop_requested():
        logging.getLogger("balancer").info("stop asked while loading the config: nothing started")
        return 0
    raise_fd_limit(config.limits.max_connections)
    try:
        if config.workers != 1:
            from .workers import Supervisor

            return Supervisor(config, config_path).run()
        _event_loop_policy()
        from .app import App

        async def main() -> None:
            app = App(config, config_path, asyncio.get_running_loop())
            await app.serve()

        asyncio.run(main())
    except OSError as exc:
        # A port in use, an address not on this host, a certificate that cannot be read:
        # say it in one line, as for config errors, not as a traceback.
        print(f"{config_path}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def demo(config_path: str) -> int:
    from .demo import run_demo

    _event_loop_policy()
    return run_demo(config_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancer", description="Casino edge load balancer")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the balancer"), ("check", "validate a config"),
                       ("demo", "run the balancer with demo backends")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--config", required=True, help="YAML config file")
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "check":
        return check_main(args.config)
    if args.command == "demo":
        return demo(args.config)
    return run(args.config)


if __name__ == "__main__":
    raise SystemExit(main())
