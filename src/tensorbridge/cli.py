r"""The ``tensorbridge`` command: running and printing only (the work is in ``files/convert.py``).

The arguments are parsed by ``tensorbridge_launch.parser``, a module that imports no torch or
NumPy, so that the ``tensorbridge`` console script answers ``--help`` without importing them.

Exit statuses:

* 0: success (``diff``: the files are the same).
* 1: ``diff`` found differences, or ``convert --verify`` read back different bytes.
* 2: an error: a missing, unreadable, malformed, truncated or hostile file, a directory where a
  file was expected, an unknown format, a destination that exists without ``--force``, bad
  arguments, no room on the disk.
* 128 + the signal's number when a signal ends the command: 129 SIGHUP, 130 SIGINT (Ctrl-C),
  143 SIGTERM; ``convert`` removes its unfinished file first, so DST is either untouched or
  complete. 141 when the reader of the output went away (SIGPIPE, ``tensorbridge inspect f | head``).

Sharded Hugging Face sets (a directory holding ``model.safetensors.index.json`` and its shards)
are read wherever a file is, by the directory or the index's path; ``convert`` writes one when
DST is a directory name (no suffix, or a trailing ``/``) or ``--max-shard-size`` is given.
torch.distributed.checkpoint (DCP) directories (holding ``.metadata``) are read likewise, and
``convert SRC DST --to dcp`` writes one (torch's own ``dcp.save``, one data file per tensor).

Errors print one line on stderr, never a traceback; paths are printed with undecodable bytes as
``\xff`` escapes. ``--quiet`` prints nothing but errors; otherwise warnings (from NumPy, say) are
one ``tensorbridge: warning:`` line each.

``convert`` shows a progress bar on stderr (tqdm: bytes done, rate, time left), for writing and
then for ``--verify``, only when stderr is a terminal and the work takes over half a second; the
bar is cleared when it ends, so what stays on the screen is the one-line summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from tensorbridge_launch.parser import build_parser as _parser

from .errors import ConversionError

__all__ = ["main"]

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
EXIT_PIPE = 128 + 13  # SIGPIPE's status, as a shell reports a process it ended

#: The signals that end a command like Ctrl-C does: raised as :class:`Interrupted`, so ``finally``
#: clauses run (``convert`` removes its unfinished file) and the status is 128 + the number.
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop (a KeyboardInterrupt, so code that lets Ctrl-C through lets it through)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP (and SIGINT) raise :class:`Interrupted` while the command runs.

    A signal someone chose to ignore (``nohup`` ignores SIGHUP) stays ignored; handlers can only
    be installed from the main thread, so elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before: dict[int, Any] = {}
    try:
        for sig in _SIGNALS:
            old = signal.getsignal(sig)
            if old in (signal.SIG_DFL, signal.default_int_handler):
                before[sig] = old
                signal.signal(sig, _raise)
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def _status(interrupt: KeyboardInterrupt) -> tuple[int, str]:
    signum = interrupt.signum if isinstance(interrupt, Interrupted) else int(signal.SIGINT)
    return 128 + signum, signal.Signals(signum).name


def _printable(text: str, stream: TextIO) -> str:
    """``text`` as ``stream`` can take it: undecodable file-name bytes and unencodable characters escaped."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    encoding = getattr(stream, "encoding", None)
    if isinstance(encoding, str):
        with contextlib.suppress(LookupError):
            text = text.encode(encoding, "backslashreplace").decode(encoding)
    return text


def _say(stream: TextIO, text: str) -> None:
    stream.write(_printable(text, stream))


@contextlib.contextmanager
def _warnings_shown(err: TextIO, quiet: bool) -> Iterator[None]:
    """Warnings as one ``tensorbridge: warning:`` line each, or none at all with ``--quiet``."""

    def show(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        _say(err, f"tensorbridge: warning: {message}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet else "default")
        warnings.showwarning = show
        yield


#: Seconds before a progress bar appears (quick conversions show none), and between its updates.
_PROGRESS_DELAY = 0.5
_PROGRESS_INTERVAL = 0.1
_PHASES = {"convert": "converting", "verify": "verifying"}


class _Progress:
    """Progress by bytes on ``stream``, a tqdm bar per phase, only if the stream is a terminal.

    Called as ``convert``'s ``progress(phase, done, total)``; tqdm is imported only when a bar is
    shown, so ``inspect``, ``diff`` and piped runs never load it.
    """

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled and _isatty(stream)
        self.bar: Any = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or phase != self.phase:
            self.close()
            from tqdm import tqdm

            self.phase = phase
            self.bar = tqdm(
                total=total,
                desc=_PHASES.get(phase, phase),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=False,  # the summary line replaces it
                delay=_PROGRESS_DELAY,
                mininterval=_PROGRESS_INTERVAL,
                dynamic_ncols=True,
            )
        self.bar.update(max(0, min(done, total) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .files.convert import VerifyError, convert

    bar = _Progress(err, not args.quiet)
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
            max_shard_size=args.max_shard_size,
            strip_prefix=args.strip_prefix,
        )
    except VerifyError as e:
        bar.close()
        _say(err, f"tensorbridge: verification failed: {e}\n")
        return EXIT_DIFFERENT
    finally:
        bar.close()  # before any message, and on Ctrl-C too
    if not args.quiet:
        checked = ", verified bit for bit" if report.verified else ""
        size = _size(report.nbytes)
        cast = f", {report.cast} cast to {report.dtype}, {report.kept} kept" if report.dtype is not None else ""
        _say(out, f"{report.source} -> {report.destination}: {report.entries} arrays, {size}{cast}{checked}\n")
    return EXIT_OK


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    from .files.convert import inspect

    found = inspect(args.file, args.format)
    rows = found.rows
    total = sum(r.nbytes for r in rows)
    if args.json:
        arrays = [{"name": r.name, "dtype": r.dtype, "shape": list(r.shape), "nbytes": r.nbytes} for r in rows]
        doc = {
            "file": args.file,
            "format": found.format,
            "arrays": arrays,
            "total_bytes": total,
            "nested": found.structure is not None,
            "metadata": found.metadata,
        }
        _say(out, json.dumps(doc, indent=1) + "\n")
        return EXIT_OK
    width = max([4, *(len(r.name) for r in rows)])
    _say(out, f"{args.file} ({found.format}): {len(rows)} arrays, {_size(total)}\n")
    _say(out, f"{'name':<{width}}  {'dtype':<14} {'shape':<20} size\n")
    for r in rows:
        _say(out, f"{r.name:<{width}}  {r.dtype:<14} {list(r.shape)!s:<20} {_size(r.nbytes)}\n")
    if found.metadata:
        _say(out, f"metadata ({len(found.metadata)} keys):\n")
        for key, value in found.metadata.items():
            _say(out, f"  {key}: {_clipped(value)}\n")
    return EXIT_OK


def _clipped(value: str, limit: int = 200) -> str:
    """A metadata value on one line, its start only if it is long (``--json`` prints it whole)."""
    text = " ".join(value.split())
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(value)} characters)"


def _diff(args: argparse.Namespace, out: TextIO) -> int:
    from .files.convert import diff

    found = diff(args.a, args.b, rtol=args.rtol, atol=args.atol, metadata=not args.ignore_metadata)
    if args.json:
        _say(out, json.dumps({"a": args.a, "b": args.b, "differences": [_plain(d) for d in found]}, indent=1) + "\n")
    else:
        for d in found:
            shown = d.kind == "values" and d.numeric
            errs = f" (max abs error {d.max_abs:g}, max rel error {d.max_rel:g})" if shown else ""
            _say(out, f"{d.name}: {d.kind}: {d.detail}{errs}\n")
        keys = sum(d.kind == "metadata" for d in found)
        names = len(found) - keys
        summary = [f"{names} names differ"] if names else []
        summary += [f"{keys} metadata keys differ"] if keys else []
        _say(out, f"{', '.join(summary)}\n" if found else "no differences\n")
    return EXIT_DIFFERENT if found else EXIT_OK


def _plain(d: Any) -> dict[str, Any]:
    errors = d.numeric  # values compared by equality alone (strings) have no error sizes
    max_abs, max_rel = (d.max_abs, d.max_rel) if errors else (None, None)
    return {"name": d.name, "kind": d.kind, "detail": d.detail, "max_abs": max_abs, "max_rel": max_rel}


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
    try:
        with _signals_interrupt():
            args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
            with _warnings_shown(err, quiet=getattr(args, "quiet", False)):
                return _run(args, out, err)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: the unfinished file is gone by now
        status, name = _status(e)
        with contextlib.suppress(OSError, ValueError):
            _say(err, f"tensorbridge: interrupted by {name}\n")
        return status
    except BrokenPipeError:
        # The reader went away (`tensorbridge inspect f | head`): stop quietly, as Unix tools do.
        if out is sys.stdout:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except (ConversionError, OSError) as e:
        _say(err, f"tensorbridge: error: {e}\n")
        return EXIT_ERROR
    except MemoryError:
        _say(err, "tensorbridge: error: out of memory. Convert fewer arrays at a time (--only) or free memory.\n")
        return EXIT_ERROR
    except Exception as e:  # a bug, never bad input (the readers' failures are FileFormatError): one line to report
        _say(err, f"tensorbridge: error: unexpected {type(e).__name__}: {e} (please report this)\n")
        return EXIT_ERROR


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "convert":
        return _convert(args, out, err)
    if args.command == "inspect":
        return _inspect(args, out)
    if args.command == "diff":
        return _diff(args, out)
    from .tour import run_tour

    return run_tour(quiet=args.quiet)
