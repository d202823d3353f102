"""Old public spellings that still work (README, "Changes of names"): one warning at the
caller, and giving the old and the new spelling together is refused."""

from __future__ import annotations

import warnings
from typing import Any


class _Missing:
    """The default of a deprecated parameter: "not given" (shown as such by ``help()``)."""

    def __repr__(self) -> str:
        return "<not given>"


_MISSING: Any = _Missing()


def renamed(where: str, new: str, new_value: Any, old: str, old_value: Any, *,
            stacklevel: int = 3, note: str = "") -> Any:
    """Resolve a renamed parameter: the old spelling warns (DeprecationWarning at the caller
    of the public function, ``stacklevel`` frames up from here) and giving both is refused.

    ``new_value``/``old_value`` are ``_MISSING`` when not given; the return is the value to use
    (``_MISSING`` when neither was given, so the caller applies its own default).
    """
    if old_value is _MISSING:
        return new_value
    if new_value is not _MISSING:
        raise TypeError(f"{where}: give {new}= only ({old}= is its deprecated old spelling)")
    warnings.warn(f"{where}: {old}= is deprecated, use {new}= instead{note}",
                  DeprecationWarning, stacklevel=stacklevel)
    return old_value
