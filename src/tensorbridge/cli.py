"""The ``tensorbridge`` command: argument parsing and printing only (the work is in ``io/convert.py``).

Exit statuses: 0 success (``diff``: the files are the same); 1 ``diff`` found differences, or
``convert --verify`` read back different bytes; 2 an error: a malformed, truncated or hostile
file, an unknown format, a destination that exists without ``--force``, bad arguments. Errors
print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, TextIO

from .errors import ConversionError

__all__ = ["main"]

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorbridge",
        description="Convert, inspect and compare tensor files (.npy, .npz, .pt/.pth/.bin, .safetensors).",
        epilog="Exit status: 0 ok (diff: same), 1 differences found or verification failed, 2 error.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert SRC to DST, one tensor at a time")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument(
        "--dtype",
        help="cast floating-point tensors to this floating-point dtype, rounding once to nearest (a value that "
        "would become inf/NaN is an error); integer, bool and complex tensors are kept, as nn.Module.to(dtype) does",
    )
    c.add_argument("--only", action="append", metavar="PATTERN", help="keep matching names (wildcards; repeatable)")
    c.add_argument("--verify", action="store_true", help="read DST back and compare it bit for bit")
    c.add_argument("--force", action="store_true", help="replace DST if it exists")
    c.add_argument("--from", dest="src_format", metavar="FORMAT", help="the source format, if its suffix does not say")
    c.add_argument("--to", dest="dst_format", metavar="FORMAT", help="the destination format, likewise")
    c.add_argument("--quiet", action="store_true", help="print nothing on success")
    i = sub.add_parser("inspect", help="list names, dtypes, shapes and sizes (from headers only)")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--format", help="the format, if the suffix does not say")
    d = sub.add_parser("diff", help="compare two files name by name")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--rtol", type=float, default=0.0)
    d.add_argument("--atol", type=float, default=0.0)
    d.add_argument("--json", action="store_true", help="print JSON")
    t = sub.add_parser("tour", help="walk through the tutorials' conversions (what is shared, what is copied)")
    t.add_argument("--quiet", action="store_true")
    return p


class _Bar:
    """A progress line on stderr, only on a terminal and only once a conversion takes a moment."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled and stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.start < 0.5 or now - self.last < 0.1:
            return
        self.last, self.shown = now, True
        pct = 100.0 * done / total if total else 100.0
        self.stream.write(f"\rconverting: {pct:5.1f}% of {_size(total)}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .io.convert import VerifyError, convert

    bar = _Bar(err, not args.quiet)
    try:
        report = convert(
            args.src,
            args.dst,
            src_format=args.src_format,
            dst_format=args.dst_format,
            dtype=args.dtype,
            only=args.only,
            verify=args.verify,
            force=args.force,
            progress=bar,
        )
    except VerifyError as e:
        bar.close()
        err.write(f"tensorbridge: verification failed: {e}\n")
        return EXIT_DIFFERENT
    bar.close()
    if not args.quiet:
        checked = ", verified bit for bit" if report.verified else ""
        size = _size(report.nbytes)
        cast = f", {report.cast} cast to {report.dtype}, {report.kept} kept" if report.dtype is not None else ""
        out.write(f"{report.source} -> {report.destination}: {report.entries} arrays, {size}{cast}{checked}\n")
    return EXIT_OK


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    from .io.convert import inspect

    fmt, rows, nesting = inspect(args.file, args.format)
    total = sum(r.nbytes for r in rows)
    if args.json:
        arrays = [{"name": r.name, "dtype": r.dtype, "shape": list(r.shape), "nbytes": r.nbytes} for r in rows]
        doc = {"file": args.file, "format": fmt, "arrays": arrays, "total_bytes": total, "nested": nesting is not None}
        out.write(json.dumps(doc, indent=1) + "\n")
        return EXIT_OK
    width = max([4, *(len(r.name) for r in rows)])
    out.write(f"{args.file} ({fmt}): {len(rows)} arrays, {_size(total)}\n")
    out.write(f"{'name':<{width}}  {'dtype':<14} {'shape':<20} size\n")
    for r in rows:
        out.write(f"{r.name:<{width}}  {r.dtype:<14} {list(r.shape)!s:<20} {_size(r.nbytes)}\n")
    return EXIT_OK


def _diff(args: argparse.Namespace, out: TextIO) -> int:
    from .io.convert import diff

    found = diff(args.a, args.b, rtol=args.rtol, atol=args.atol)
    if args.json:
        out.write(json.dumps({"a": args.a, "b": args.b, "differences": [_plain(d) for d in found]}, indent=1) + "\n")
    else:
        for d in found:
            errs = f" (max abs error {d.max_abs:g}, max rel error {d.max_rel:g})" if d.kind == "values" else ""
            out.write(f"{d.name}: {d.kind}: {d.detail}{errs}\n")
        out.write(f"{len(found)} names differ\n" if found else "no differences\n")
    return EXIT_DIFFERENT if found else EXIT_OK


def _plain(d: Any) -> dict[str, Any]:
    return {"name": d.name, "kind": d.kind, "detail": d.detail, "max_abs": d.max_abs, "max_rel": d.max_rel}


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command; return its exit status.

    Example:
        >>> import io, os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "w.npy")
        >>> np.save(p, np.ones(3, np.float32))
        >>> main(["inspect", p, "--json"], out=io.StringIO())
        0
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "convert":
            return _convert(args, out, err)
        if args.command == "inspect":
            return _inspect(args, out)
        if args.command == "diff":
            return _diff(args, out)
        from .tour import run_tour

        return run_tour(quiet=args.quiet)
    except KeyboardInterrupt:
        err.write("tensorbridge: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`tensorbridge inspect f | head`): stop quietly, as Unix tools do.
        if out is sys.stdout:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ConversionError, OSError) as e:
        err.write(f"tensorbridge: error: {e}\n")
        return EXIT_ERROR
    except Exception as e:  # never a traceback on bad input: one line, and the class to report
        err.write(f"tensorbridge: error: unexpected {type(e).__name__}: {e} (please report this file)\n")
        return EXIT_ERROR
