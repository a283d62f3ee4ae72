"""A griffe extension for the docs build: read ``Example:`` sections as examples.

The docstrings of tensorbridge (Google style) head their doctests ``Example:``; griffe's Google
parser knows only the plural ``Examples:`` as an examples section and reads the singular as an
admonition, whose text is then rendered as Markdown (``>>>`` lines become nested block quotes, and
``batch["rgb"][0, 0]`` a broken reference link). This renames the heading when the docs are
built, so the sources need no change.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` headings to ``Examples:`` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rename the heading of ``obj``'s docstring, before griffe parses it (parsing is lazy)."""
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
