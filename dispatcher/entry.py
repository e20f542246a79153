"""The ``dispatcher`` command. ``dispatcher check …`` is answered here with the standard library
(plus, for readiness, the database and broker clients), without loading the click application:
a container probe runs it every few seconds."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["check"]:
        from dispatcher.health import check_command

        sys.exit(check_command(sys.argv[2:]))
    from dispatcher.cli import main as cli

    cli()
