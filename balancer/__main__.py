import sys

if "run" in sys.argv[1:]:
    # Before the imports below take their time: a stop asked this early is a clean stop too.
    from .signals import note_early

    note_early()

from .cli import main  # noqa: E402

raise SystemExit(main())
