"""``python -m tensorbridge``: walk the tutorials' conversions (the file-conversion CLI is a later issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the tutorial walk-through and return the exit status.

    Example:
        >>> main(["--quiet"])
        0
    """
    from .tour import run_tour

    args = sys.argv[1:] if argv is None else argv
    return run_tour(quiet="--quiet" in args)


if __name__ == "__main__":
    raise SystemExit(main())
