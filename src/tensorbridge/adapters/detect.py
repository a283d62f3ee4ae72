"""Recognizing other libraries' types without importing them.

An object of a library's type cannot exist unless that library was imported, so the class is
looked up in ``sys.modules`` only: if the module is not there, the answer is no, at the cost of
one dict lookup. Found classes are cached (array-api-compat's ``_issubclass_fast`` pattern).
"""

from __future__ import annotations

import sys

__all__ = ["is_instance"]

_FOUND: dict[tuple[str, str], type] = {}


def is_instance(obj: object, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, or False when ``module`` was never imported.

    Example:
        >>> is_instance(3, "a_module_nobody_imported", "Thing")
        False
        >>> import fractions
        >>> is_instance(fractions.Fraction(1, 2), "fractions", "Fraction")
        True
    """
    cls = _FOUND.get((module, name))
    if cls is None:
        mod = sys.modules.get(module)
        found = getattr(mod, name, None) if mod is not None else None
        if not isinstance(found, type):
            return False
        cls = _FOUND[(module, name)] = found
    return isinstance(obj, cls)
