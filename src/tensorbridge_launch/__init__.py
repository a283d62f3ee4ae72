"""The ``tensorbridge`` console script's entry point, outside the ``tensorbridge`` package.

Importing anything inside ``tensorbridge`` first runs its ``__init__``, which imports torch and
takes a few seconds; a Ctrl-C (or SIGTERM) in those seconds would end in a traceback. This module
imports nothing heavy itself, so it can catch that and end the way the command always ends on a
signal: one line on stderr and status 128 + the signal's number (see ``tensorbridge.cli``).

``--help`` (of the command or of a subcommand) is answered here, before that import: the parser
is in :mod:`tensorbridge_launch.parser`, which imports neither torch nor NumPy, and is the same
one ``tensorbridge.cli`` parses with. Anything else, a usage error included, goes on to
``tensorbridge.cli``, which parses the arguments again and reports the error as always.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import NoReturn

from .parser import build_parser

__all__ = ["main"]


class _Stopped(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


class _Unparsed(Exception):
    """The arguments do not parse: ``tensorbridge.cli`` will say why."""


class _Prescan(argparse.ArgumentParser):
    """The command's parser, silent on a usage error (raised as :class:`_Unparsed` instead)."""

    def error(self, message: str) -> NoReturn:
        raise _Unparsed(message)


def _answered(argv: list[str]) -> int | None:
    """Parse ``argv`` without importing torch: the exit status if that answered it (``--help``), else None."""
    try:
        build_parser(_Prescan).parse_args(argv)
    except _Unparsed:
        return None
    except SystemExit as done:  # argparse printed the help and exits
        return done.code if isinstance(done.code, int) else 0
    return None


def main() -> int:
    """Run the ``tensorbridge`` command; a signal while it is still starting ends it quietly.

    Example:
        >>> import os, sys, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npy")
        >>> np.save(path, np.ones(3, np.float32))
        >>> import contextlib, io
        >>> saved, sys.argv = sys.argv, ["tensorbridge", "inspect", path, "--json"]
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = main()
        >>> sys.argv = saved
        >>> code, '"nbytes": 12' in out.getvalue()
        (0, True)
        >>> saved, sys.argv = sys.argv, ["tensorbridge", "diff", "--help"]
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = main()
        >>> sys.argv = saved
        >>> code, "a fraction of |b| (default: 0.0)" in " ".join(out.getvalue().split())
        (0, True)
    """
    handled = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.getsignal(s) for s in handled}
    try:
        for s in handled:
            if previous[s] is signal.SIG_DFL:  # a signal someone chose to ignore (nohup) stays ignored
                signal.signal(s, _raise)
        answered = _answered(sys.argv[1:])
        if answered is not None:
            return answered
        from tensorbridge.cli import main as run
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        sys.stderr.write(f"tensorbridge: interrupted by {signal.Signals(signum).name}\n")
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return run()
