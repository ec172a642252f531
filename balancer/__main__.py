"""`python -m balancer` and the installed `balancer` command (pyproject.toml points at `main`).

For `run`, SIGTERM/SIGINT are noted before anything heavy is imported: a stop asked while the
modules load is a clean stop too (docs/operations.md, "Shutdown"). Only what runs before this
module (the interpreter's start-up and `balancer/__init__.py`) is outside that.
"""

import sys


def main() -> int:
    if "run" in sys.argv[1:]:
        from .signals import note_early

        note_early()
    from .cli import main as command_line

    return command_line()


if __name__ == "__main__":
    raise SystemExit(main())
