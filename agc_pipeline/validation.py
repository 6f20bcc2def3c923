"""Validation helpers: one rule per kind of value, one message shape for every app.

Each ``require_*`` returns the checked value (converted to a plain Python type) or raises
:class:`~agc_pipeline.errors.ConfigError` naming the parameter and the rule it breaks, e.g.
``"m must be a positive integer (got 2.5)"``. Booleans are never integers and strings are
never numbers here, even where Python or YAML would convert them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from agc_pipeline.errors import ConfigError

__all__ = [
    "is_int",
    "is_number",
    "require_bool",
    "require_choice",
    "require_finite",
    "require_int",
    "require_int_list",
    "require_interval",
    "require_list",
    "require_memory",
    "require_optional_str",
]


def is_int(value: Any) -> bool:
    """True for Python/numpy integers, False for bools, floats (even 2.0) and strings."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_number(value: Any) -> bool:
    """True for real numbers (ints and floats, Python or numpy), False for bools and strings."""
    return isinstance(value, int | float | np.integer | np.floating) \
        and not isinstance(value, bool | np.bool_)


def require_int(value: Any, name: str, minimum: int | None = None,
                maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum]; ``name`` is the config key."""
    if minimum == 1 and maximum is None:
        rule = "a positive integer"
    elif minimum == 0 and maximum is None:
        rule = "a non-negative integer"
    elif minimum is not None and maximum is not None:
        rule = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        rule = f"an integer ≥ {minimum}"
    elif maximum is not None:
        rule = f"an integer ≤ {maximum}"
    else:
        rule = "an integer"
    ok = is_int(value) and (minimum is None or value >= minimum) \
        and (maximum is None or value <= maximum)
    if not ok:
        raise ConfigError(f"{name} must be {rule} (got {value!r})")
    return int(value)


def require_finite(value: Any, name: str, minimum: float | None = None,
                   maximum: float | None = None, strict_minimum: bool = False) -> float:
    """``value`` as a finite float within the bounds (``strict_minimum``: > minimum)."""
    if not is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number (got {value!r})")
    v = float(value)
    if minimum is not None and (v <= minimum if strict_minimum else v < minimum):
        raise ConfigError(f"{name} must be {'>' if strict_minimum else '≥'} {minimum} "
                          f"(got {value!r})")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{name} must be ≤ {maximum} (got {value!r})")
    return v


def require_interval(value: Any, name: str, low: float, high: float,
                     open_high: bool = False) -> float:
    """``value`` as a float in [low, high] (``open_high``: [low, high)), e.g. a probability."""
    if not is_number(value) or not low <= float(value) <= high \
            or (open_high and float(value) == high):
        raise ConfigError(f"{name} must lie in [{low:g}, {high:g}{')' if open_high else ']'} "
                          f"(got {value!r})")
    return float(value)


def require_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (YAML true/false)."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name} must be true or false (got {value!r})")
    return bool(value)


def require_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        listed = " | ".join(str(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed} (got {value!r})")
    return value


def require_int_list(values: Any, name: str, minimum: int | None = None) -> list[int]:
    """A list (or tuple) of integers, each ≥ ``minimum``."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} must be a list of integers (got {values!r})")
    return [require_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(values)]


def require_list(values: Any, name: str) -> list[Any]:
    """A non-empty list (or tuple) given for ``name``, as a list (a string is not a list)."""
    if isinstance(values, str) or not hasattr(values, "__iter__") or len(values) == 0:
        raise ConfigError(f"{name} must be a non-empty list (got {values!r})")
    return list(values)


def require_optional_str(value: Any, name: str) -> str | None:
    """``value`` if it is a string or None (null)."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string or null (got {value!r})")
    return value


def require_str(value: Any, name: str) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string (got {value!r})")
    return value


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(size: float) -> str:
    """``size`` bytes as a short figure with its unit (``"7.3 GiB"``, ``"6.9e+06 TiB"``)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.2g} {unit}"
    return f"{int(size)} B"


def require_memory(what: str, need: float, fix: str) -> None:
    """Refuse, before allocating anything, sizes whose arrays (``need`` bytes, estimated from
    the sizes alone) exceed the machine's physical memory: one line naming ``what`` (the
    parameter and its value), the estimate, the memory and ``fix``."""
    have = physical_memory()
    if need > have:
        raise ConfigError(f"{what} needs about {format_bytes(need)} of memory for its arrays, "
                          f"more than this machine's {format_bytes(have)}: {fix}")
