"""Argparse types shared by the benchmarks: a bad value is one usage line (exit status 2)
naming the option, before anything is built or timed, never a traceback from deep inside
(an empty median, a negative tensor size, a zero tile width)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["at_least", "between", "device", "int_list"]


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}"
                                         f": {text!r}") from None


def at_least(minimum: float, kind: type = float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)`` ≥ ``minimum`` (> with ``strict``), else a one-line
    usage error naming the option (argparse adds its name) before anything is built."""
    def parse(text: str) -> Any:
        value = _number(text, kind)
        if value < minimum or (strict and value == minimum) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '≥'} {minimum:g} "
                                             f"(got {text})")
        return value
    return parse


def between(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a number in [low, high] (e.g. a probability)."""
    def parse(text: str) -> float:
        value = _number(text, float)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low:g}, {high:g}] (got {text})")
        return value
    return parse


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated integers, each ≥ ``minimum`` (empty: none)."""
    item = at_least(minimum, int)

    def parse(text: str) -> list[int]:
        return [item(part.strip()) for part in text.split(",") if part.strip()]
    return parse


def device(text: str) -> str:
    """An argparse ``type``: ``cpu``, ``cuda`` or ``cuda:N``."""
    kind, colon, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N (got {text!r})")
    return text
