"""Golden numbers: what a golden check compares (every number of an analysis's points; a
train run's losses), how (bit for bit, or within a relative tolerance), and on which CPU a
golden entry was recorded (the last bits depend on the CPU's kernels)."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class GoldenError(ValueError):
    """A golden file that cannot be read or does not hold golden numbers (names the file)."""


#: tolerance kinds: analysis (relative to the curve's scale), exact, distributed
RTOL = {"analysis": 1e-12, "simulated": 0.0, "distributed": 1e-6}


def points_metrics(results: dict[str, Any]) -> dict[str, list[float | None]]:
    """Every number of the points of ``results.json``, as metric -> list over s."""
    out: dict[str, list[float | None]] = {"s": [p["s"] for p in results["points"]]}

    def add(prefix: str, values: dict[str, Any], index: int, total: int) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                add(f"{name}.", value, index, total)
            elif isinstance(value, int | float | type(None)) and not isinstance(value, bool):
                out.setdefault(name, [None] * total)[index] = value

    points = results["points"]
    for i, point in enumerate(points):
        add("", {k: v for k, v in point.items() if k != "s"}, i, len(points))
    return out


@dataclass
class Difference:
    """One metric value outside its tolerance."""

    metric: str
    got: Any
    expected: Any
    detail: str

    def __str__(self) -> str:
        return f"{self.metric}: got {self.got!r}, golden {self.expected!r} ({self.detail})"


def _label(metric: str, index: int, axis: list[Any] | None, axis_name: str,
           size: int) -> str:
    if axis is not None and len(axis) == size:
        return f"{metric}[{axis_name}={axis[index]}]"
    return f"{metric}[{index}]"


def compare(got: dict[str, list[Any]], golden: dict[str, list[Any]],
            kind: str) -> list[Difference]:
    """Differences between ``got`` and ``golden`` metrics under ``kind``'s tolerance."""
    rtol = RTOL[kind]
    axis_name = "s" if "s" in golden else "it"
    axis = golden.get("s", golden.get("iteration"))
    diffs: list[Difference] = []
    for metric in sorted(set(golden) | set(got)):
        if metric not in got or metric not in golden:
            where = "the run" if metric not in got else "the golden file"
            diffs.append(Difference(metric, got.get(metric), golden.get(metric),
                                    f"missing from {where}"))
            continue
        a, b = got[metric], golden[metric]
        if len(a) != len(b):
            diffs.append(Difference(metric, f"{len(a)} values", f"{len(b)} values",
                                    "different number of values"))
            continue
        finite = [abs(v) for v in b if isinstance(v, int | float) and math.isfinite(v)]
        scale = max(finite, default=0.0)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x == y:
                continue
            label = _label(metric, i, axis, axis_name, len(b))
            if x is None or y is None:
                diffs.append(Difference(label, x, y, "one value is missing"))
                continue
            diff = abs(x - y)
            rel = diff / abs(y) if y else math.inf
            if kind == "simulated":
                ok, rule = False, "must be bit-identical"
            elif kind == "analysis":
                ok, rule = diff <= rtol * max(abs(y), scale), f"tolerance {rtol:g} relative"
            else:
                ok, rule = diff <= rtol * max(abs(y), 1.0), f"tolerance {rtol:g}"
            if not ok:
                diffs.append(Difference(label, x, y,
                                        f"difference {diff:.3g}, relative {rel:.3g}; {rule}"))
    return diffs


def cpu_fingerprint() -> str:
    """The CPU whose kernels the last bits depend on: vendor, family, model and model name of
    the first processor in ``/proc/cpuinfo`` (elsewhere :func:`platform.processor`)."""
    keys = ("vendor_id", "cpu family", "model", "model name")
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if not line.strip() and fields:
                break  # the first processor is enough
            key, _, value = line.partition(":")
            if key.strip() in keys:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if not fields:
        return platform.processor() or platform.machine() or "unknown CPU"
    return (f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')} ({fields.get('model name', '?')})")


def reference(golden: dict[str, Any], cpu: str) -> tuple[dict[str, list[Any]], str]:
    """The golden numbers to compare with on ``cpu`` and where they were recorded: this CPU's
    own entry under ``cpus`` when there is one, else the main ``metrics``."""
    own = golden.get("cpus", {}).get(cpu)
    if own is not None:
        return own["metrics"], f"this CPU's entry ({cpu})"
    origin = golden.get("cpu", "a CPU not recorded")
    return golden["metrics"], f"the main numbers (recorded on {origin})"




def _check_metrics(metrics: Any, where: str, allow_empty: bool = False) -> None:
    if not isinstance(metrics, dict) or not (metrics or allow_empty):
        raise GoldenError(f"{where}: 'metrics' must map each metric to a list of numbers")
    for name, values in metrics.items():
        if not isinstance(values, list) or not all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                for v in values):
            raise GoldenError(f"{where}: metric {name!r} must be a list of numbers or nulls")


def read_golden(path: Path) -> dict[str, Any]:
    """The golden file ``path``, checked: a JSON object with ``overrides`` (a list), ``metrics``
    (metric -> list of numbers) and optional per-CPU entries under ``cpus``, each with its own
    ``metrics``. Raises :class:`GoldenError` naming the file and what is wrong."""
    try:
        golden = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoldenError(f"golden file {path} is unreadable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); restore it from "
                          "git or rewrite it with --update") from None
    if not isinstance(golden, dict):
        raise GoldenError(f"golden file {path} is not a JSON object")
    if not isinstance(golden.get("overrides", []), list):
        raise GoldenError(f"golden file {path}: 'overrides' must be a list")
    _check_metrics(golden.get("metrics"), f"golden file {path}")
    cpus = golden.get("cpus", {})
    if not isinstance(cpus, dict):
        raise GoldenError(f"golden file {path}: 'cpus' must map a CPU to its entry")
    for cpu, entry in cpus.items():
        _check_metrics(entry.get("metrics") if isinstance(entry, dict) else None,
                       f"golden file {path}, the entry of {cpu}", allow_empty=True)
    return golden
