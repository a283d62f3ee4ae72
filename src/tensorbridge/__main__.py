"""``python -m tensorbridge``: the ``tensorbridge`` command (see ``cli.py``)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from .cli import main
    except KeyboardInterrupt:  # Ctrl-C while torch is still importing: one line, no traceback
        sys.stderr.write("tensorbridge: interrupted by SIGINT\n")
        raise SystemExit(130) from None
    raise SystemExit(main())
