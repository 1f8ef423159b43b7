"""The `clearance` console script: one subcommand per process kind."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("clearance: not yet", file=sys.stderr)
    return 2
