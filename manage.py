#!/usr/bin/env python
import os
import signal
import sys


def main() -> None:
    # Python's default for SIGTERM ends the process on the spot, skipping the atexit hooks, among
    # them the one that takes this process off the embedded PostgreSQL's users (the last to leave
    # stops it). As SystemExit, SIGTERM stops a command the way Ctrl-C does. uvicorn (serve) and
    # the worker install their own graceful handlers over this one.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # The message names the variable and what is wrong with it; a traceback would bury it.
        sys.exit(f"Configuration error: {exc}")


if __name__ == "__main__":
    main()
