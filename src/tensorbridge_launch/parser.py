"""The ``tensorbridge`` command's arguments: the one parser, for ``--help`` and for the real run.

It lives outside the ``tensorbridge`` package, and imports nothing but the standard library, so
``tensorbridge --help`` and ``tensorbridge SUBCOMMAND --help`` answer without importing torch or
NumPy (``tensorbridge/__init__.py`` imports both, which takes seconds). ``tensorbridge.cli``
parses with the same :func:`build_parser`, then imports the modules that do the work.

Each default is written once, in its ``add_argument`` call; the help shows it through
``%(default)s`` (see :class:`_Formatter`). Options whose default is ``None`` say in words what
happens without them.
"""

from __future__ import annotations

import argparse

__all__ = ["build_parser"]

_DESCRIPTION = (
    "Convert, inspect and compare tensor files (.npy, .npz, .pt/.pth/.bin, .safetensors, "
    "Hugging Face sharded safetensors sets: a directory holding model.safetensors.index.json, and "
    "torch.distributed.checkpoint directories: read, and written with --to dcp)."
)

_EPILOG = (
    "Exit status: 0 ok (diff: same), 1 differences found or verification failed, 2 error, "
    "129/130/143 ended by SIGHUP/SIGINT/SIGTERM (convert leaves DST untouched or complete), "
    "141 the output pipe was closed."
)

_FORMATS = "npy, npz, pt, safetensors, safetensors-set or dcp"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: ...)`` after each help text, except where the default is ``None``.

    A ``None`` default means "not given", which the help text describes in words; printing
    ``(default: None)`` would say nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``tensorbridge`` command's parser: subcommands ``convert``, ``inspect``, ``diff`` and ``tour``.

    Args:
        parser_class: the class of the parser and of its subcommands' parsers (a subclass can,
            say, override :meth:`argparse.ArgumentParser.error`).

    Returns:
        A new parser; ``parse_args`` gives a namespace whose ``command`` names the subcommand.

    Example:
        >>> args = build_parser().parse_args(["diff", "a.npz", "b.npz", "--atol", "1e-6"])
        >>> args.command, args.a, args.b, args.atol, args.rtol
        ('diff', 'a.npz', 'b.npz', 1e-06, 0.0)
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        ...     build_parser().parse_args(["diff", "--help"])
        >>> "a fraction of |b| (default: 0.0)" in " ".join(out.getvalue().split())
        True
    """
    formatter = _Formatter  # each subcommand's parser needs it too: argparse does not pass it on
    p = parser_class(prog="tensorbridge", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=formatter)
    sub = p.add_subparsers(
        dest="command",
        required=True,
        help="what to do; tensorbridge <subcommand> --help describes its arguments",
    )

    c = sub.add_parser(
        "convert",
        help="convert SRC to DST, one tensor at a time",
        description="Convert SRC to DST, one tensor at a time; DST is written completely or not at all.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    c.add_argument("src", help="the file or directory to read; its format comes from its suffix, or --from")
    c.add_argument(
        "dst",
        help="the file or directory to write; its format comes from its suffix, or --to (a directory name, with "
        "no suffix or a trailing /, is a Hugging Face sharded safetensors set)",
    )
    c.add_argument(
        "--dtype",
        help="cast floating-point tensors to this floating-point dtype, rounding once to nearest (a value that "
        "would become inf/NaN is an error); integer, bool and complex tensors are kept, as nn.Module.to(dtype) "
        "does; without it every tensor keeps its dtype",
    )
    c.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="keep only the names matching PATTERN (shell wildcards; repeatable: a name matching any is kept); "
        "without it every name is kept",
    )
    c.add_argument("--verify", action="store_true", help="read DST back and compare it bit for bit")
    c.add_argument("--force", action="store_true", help="replace DST if it exists")
    c.add_argument(
        "--from",
        dest="src_format",
        metavar="FORMAT",
        help=f"the source format ({_FORMATS}); without it, SRC's suffix (or contents, for a directory) says",
    )
    c.add_argument(
        "--to",
        dest="dst_format",
        metavar="FORMAT",
        help=f"the destination format ({_FORMATS}: DST becomes a torch.distributed.checkpoint directory); "
        "without it, DST's suffix says",
    )
    c.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="write DST as a Hugging Face sharded set (a directory of model-0000K-of-0000N.safetensors and "
        "model.safetensors.index.json) with at most SIZE bytes per shard: 5GB, 500MB, 2GiB or bytes; without "
        "it a DST directory or name without suffix is a set with 5GB shards, and any other DST is one file",
    )
    c.add_argument(
        "--strip-prefix",
        metavar="PREFIX",
        help="remove PREFIX (e.g. model.) from the names starting with it; without it names are kept as they are",
    )
    c.add_argument("--quiet", action="store_true", help="print nothing but errors (no summary, warnings or bar)")

    i = sub.add_parser(
        "inspect",
        help="list names, dtypes, shapes, sizes and metadata (from headers only)",
        description="List a file's names, dtypes, shapes, sizes and metadata, reading its headers only.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    i.add_argument("file", help="the file or directory to inspect")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.add_argument(
        "--format",
        metavar="FORMAT",
        help=f"the format ({_FORMATS}); without it, FILE's suffix (or contents, for a directory) says",
    )

    d = sub.add_parser(
        "diff",
        help="compare two files name by name, then their metadata",
        description="Compare two files name by name (presence, shape, dtype, values), then their metadata. "
        "Values a (in A) and b (in B) match when |a - b| <= atol + rtol * |b|; NaN matches NaN; "
        "strings and other non-numbers are compared by equality.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    d.add_argument("a", metavar="A", help="the first file or directory")
    d.add_argument("b", metavar="B", help="the second file or directory")
    d.add_argument("--rtol", type=float, default=0.0, metavar="RTOL", help="relative tolerance, a fraction of |b|")
    d.add_argument(
        "--atol", type=float, default=0.0, metavar="ATOL", help="absolute tolerance (both 0: values must be identical)"
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of one line per difference")
    d.add_argument(
        "--ignore-metadata",
        action="store_true",
        help="compare the arrays only, not the metadata (compared where both formats hold it: .safetensors, .npz)",
    )

    t = sub.add_parser(
        "tour",
        help="walk through the tutorials' conversions (what is shared, what is copied)",
        description="Walk through the tutorials' conversions, printing what is shared and what is copied.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    t.add_argument("--quiet", action="store_true", help="print nothing; only check that every step still works")
    return p
