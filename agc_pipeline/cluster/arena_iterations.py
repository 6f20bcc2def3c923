"""Iterations to the target from measured arena runs (issue 18), for the planner.

The arena (``experiment=arena``; its report writes ``arena.json``) measures, per regime ×
placement × mitigation, the iterations each mitigation needed to reach a target test
accuracy, over seeds. The planner takes one regime and placement (default: ``slowdown``, iid,
the planner's own straggler model) and reads:

* I_0 = the mean iterations of DDP (synchronous SGD, the exact gradient) to the target;
* per measured mitigation, its ratio r = mean iterations / I_0 and the ratio's spread
  (standard deviation of its iterations / I_0) and seeds;
* κ of the planner's iteration model ``I_0 (1 + κ ē/(1 − ē))``, fitted by least squares
  (:func:`~agc_pipeline.cluster.planner.fit_kappa`) to the measured (ē, r) of the mitigations
  with a gradient error: backup workers (ē = s/n) and the approximate codes (ē = 1 − α);
* local SGD's measured ratio, applied to the planner's local and hierarchical schedules —
  where local SGD missed the target in some seed, the lower bound its runs' length gives
  (``censored``: the plan's local-SGD times are then optimistic, and say so).

What is extrapolated, and how (stated in ``plan.json``): the counts are those of the
arena's model (the MNIST CNN, n = 12 workers, its batch): the plan applies I_0 and the
ratios unchanged at every (n, d), and the codes and backup workers at the plan's s through κ;
local SGD's ratio was measured at the arena's period and is applied to the plan's schedules.
Exact codes need I_0 (the same gradient as DDP).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from agc_pipeline.errors import ConfigError, require

__all__ = ["PACKAGED_ARENA", "arena_points"]

#: the arena measurement shipped with the package
PACKAGED_ARENA = "data/convergence/arena_mnist_cnn.json"


def _read(path: str | Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        ref = resources.files("agc_pipeline") / PACKAGED_ARENA
        return json.loads(ref.read_text(encoding="utf-8")), f"agc_pipeline/{PACKAGED_ARENA}"
    file = Path(path).expanduser()
    require(file.is_file(), f"plan.arena: {'not a file' if file.exists() else 'no such file'} "
                            f"{str(file)!r} (an arena.json written by the arena report)")
    try:
        return json.loads(file.read_text(encoding="utf-8")), str(file)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"plan.arena {file}: not readable JSON ({exc})") from None


def arena_points(path: str | Path | None, regime: str,
                 placement: str) -> dict[str, Any]:
    """The measured iterations of ``regime`` × ``placement`` in an ``arena.json``: ``source``,
    ``target``, ``iterations_exact`` (DDP's mean), ``ddp`` (its spread), ``measured``
    (mitigation → ratio, std_ratio, runs, normalised_error) and ``points`` (for κ)."""
    data, source = _read(path)
    try:
        cells = [c for c in data["cells"]
                 if c["regime"] == regime and c["placement"] == placement]
        target = float(data["targets"]["accuracy"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"plan.arena {source}: not an arena.json ({type(exc).__name__}: "
                          f"{exc})") from None
    require(bool(cells), f"plan.arena {source}: no runs of regime {regime!r}, placement "
                         f"{placement!r} (plan.arena_regime, plan.arena_placement)")
    by_name = {c["mitigation"]: c for c in cells}
    ddp = by_name.get("ddp")
    require(ddp is not None and ddp["accuracy"]["reached"] == ddp["accuracy"]["runs"] > 0,
            f"plan.arena {source}: DDP did not reach the target in every seed of {regime}, "
            f"{placement}: no I_0 to scale by")
    assert ddp is not None
    i0 = float(ddp["accuracy"]["mean_iteration"])
    require(i0 > 0, f"plan.arena {source}: DDP's mean iterations must be positive")
    measured: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    for name, cell in sorted(by_name.items()):
        agg = cell["accuracy"]
        if not agg["runs"]:
            continue
        done = agg["reached"] == agg["runs"]
        iterations = agg["mean_iteration"] if done else None
        # a mitigation that missed the target in some seed needed more than its runs' length
        bound = cell.get("iterations")
        entry = {"ratio": None if iterations is None else iterations / i0,
                 "censored": not done,
                 "ratio_at_least": None if done or not bound else float(bound) / i0,
                 "std_ratio": (None if agg.get("std_iteration") is None or not done
                               else agg["std_iteration"] / i0),
                 "runs": agg["runs"], "reached": agg["reached"],
                 "normalised_error": cell.get("normalised_error")}
        measured[name] = entry
        error = cell.get("normalised_error")
        if done and error is not None and 0.0 < error < 1.0:
            points.append({"label": name, "normalised_error": float(error),
                           "iterations": iterations, "censored": False,
                           "ratio": entry["ratio"]})
    return {"source": f"{source} (regime {regime}, placement {placement}, iterations to test "
                      f"accuracy ≥ {target:g})",
            "target": target, "iterations_exact": i0, "measured": measured, "points": points,
            "ddp": {"mean_iteration": i0, "std_iteration": ddp["accuracy"].get("std_iteration"),
                    "runs": ddp["accuracy"]["runs"]}}
