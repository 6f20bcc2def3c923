"""The planner's iteration model (``agc-plan``): iterations to the target as a function of
the normalised decoding error, from measured convergence curves (κ fit) or from measured
arena runs (:mod:`agc_pipeline.cluster.arena_iterations`), and the label each ``plan.json``
row carries about where its iterations come from. Pure numpy."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agc_pipeline.cluster.arena_iterations import arena_points
from agc_pipeline.errors import ConfigError, require

__all__ = ["ARENA_EXTRAPOLATION", "Convergence", "fit_kappa", "iterations_label",
           "load_arena_convergence", "load_convergence"]


# ------------------------------------------------------------------------------------------
# convergence: iterations to a fixed loss as a function of the normalised decoding error


@dataclass
class Convergence:
    """Iterations to the target loss: ``iterations_exact · (1 + kappa·ē/(1 − ē))``."""

    source: str
    target_loss: float
    iterations_exact: float  #: I_0, the exact gradient's iterations to the target
    kappa: float  #: the κ used
    fitted_kappa: float  #: least-squares κ of the measured runs
    points: list[dict[str, Any]] = field(default_factory=list)
    #: arena measurements (mitigation → ratio, spread; :mod:`.arena_iterations`), or None
    measured: dict[str, Any] | None = None
    #: iterations of local / hierarchical SGD relative to I_0 (measured in the arena, else 1)
    local_sgd_factor: float = 1.0

    def factor(self, error: float, kappa: float | None = None) -> float:
        """Iterations relative to the exact gradient's at normalised error ``error``."""
        if error >= 1.0:
            return math.inf
        kappa = self.kappa if kappa is None else kappa
        return 1.0 + kappa * max(error, 0.0) / (1.0 - error)

    def describe(self) -> dict[str, Any]:
        out = {"source": self.source, "target_loss": self.target_loss,
               "iterations_exact": self.iterations_exact, "kappa": self.kappa,
               "fitted_kappa": self.fitted_kappa, "points": self.points}
        if self.measured is not None:
            out.update(measured=self.measured, local_sgd_factor=self.local_sgd_factor,
                       extrapolation=ARENA_EXTRAPOLATION)
        return out


#: what a plan from arena measurements extrapolates, and how
ARENA_EXTRAPOLATION = (
    "iterations measured in the arena (the MNIST CNN, n = 12, its batch) are applied "
    "unchanged at every (n, d): I0 = DDP's mean iterations to the target; backup workers and "
    "the codes at the plan's s through I0 (1 + kappa e/(1 - e)) with kappa fitted to the "
    "arena's measured (e, ratio) points; local and hierarchical SGD at the arena's measured "
    "local-SGD ratio (its period, not the plan's schedule)")


def load_arena_convergence(path: str | Path | None, regime: str, placement: str,
                           kappa: float | None) -> Convergence:
    """The planner's iteration model from an arena measurement
    (:func:`~agc_pipeline.cluster.arena_iterations.arena_points`; None: the packaged one)."""
    found = arena_points(path, regime, placement)
    fitted = fit_kappa(found["points"])
    entry = found["measured"].get("local_sgd", {})
    local = entry.get("ratio") if entry.get("ratio") is not None else entry.get("ratio_at_least")
    return Convergence(source=found["source"], target_loss=found["target"],
                       iterations_exact=found["iterations_exact"],
                       kappa=fitted if kappa is None else float(kappa), fitted_kappa=fitted,
                       points=found["points"], measured=found["measured"],
                       local_sgd_factor=1.0 if local is None else float(local))


def iterations_label(kind: str, convergence: Convergence) -> dict[str, Any]:
    """Where a row's iterations to the loss come from (``plan.json``'s ``iterations``): every
    count is extrapolated — from the arena's measurements (:func:`load_arena_convergence`) or
    from the convergence curves' model (local SGD then assumed)."""
    source = convergence.source
    if convergence.measured is not None:
        return _arena_label(kind, convergence)
    if kind == "ddp":
        return {"source": source, "model": "I0, the exact gradient's iterations to the loss",
                "extrapolated": True}
    if kind in ("code", "backup"):
        return {"source": source, "model": "I0 (1 + kappa e/(1 - e))",
                "kappa": convergence.kappa, "extrapolated": True}
    return {"source": "assumed: I0, as many iterations as DDP (not measured; arena "
                      "measurements will replace it)", "model": "I0", "extrapolated": True}


def _arena_label(kind: str, convergence: Convergence) -> dict[str, Any]:
    """``iterations`` of a row whose counts come from the arena: the measured ratio of the
    mitigation the row stands for (with its spread) and the model that extrapolates it."""
    measured = convergence.measured or {}
    name = {"ddp": "ddp", "backup": "backup_workers"}.get(kind, "local_sgd")
    label: dict[str, Any] = {"source": convergence.source, "extrapolated": True}
    if kind == "ddp":
        label["model"] = "I0 = DDP's measured mean iterations (applied at this n, d)"
    elif kind in ("code", "backup"):
        label.update(model="I0 (1 + kappa e/(1 - e)), kappa fitted to the arena's measured "
                           "backup workers and approximate codes", kappa=convergence.kappa)
        if kind == "code":
            label["measured"] = {k: v for k, v in measured.items()
                                 if k not in ("ddp", "local_sgd", "backup_workers")}
    else:
        censored = measured.get("local_sgd", {}).get("censored")
        label["model"] = ("I0 x the arena's measured local-SGD ratio "
                          + ("(a lower bound: it missed the target in some seed) "
                             if censored else "")
                          + f"{convergence.local_sgd_factor:.3g} (its period, not this "
                            "schedule)")
    if name in measured and kind != "code":
        label["measured"] = measured[name]
    return label


def _first_hit(loss: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(loss <= target)
    return int(hit[0]) + 1 if hit.size else None


def fit_kappa(points: list[dict[str, Any]]) -> float:
    """Least squares through the origin of ``ratio − 1`` on ``ē/(1 − ē)`` (clipped at 0)."""
    v = np.array([p["normalised_error"] / (1 - p["normalised_error"]) for p in points])
    r = np.array([p["ratio"] - 1.0 for p in points])
    if v.size == 0 or float(v @ v) == 0.0:
        return 0.0
    return max(float(v @ r / (v @ v)), 0.0)


def _read_curves(raw: bytes, source: str) -> tuple[str, dict[str, tuple[float, np.ndarray]]]:
    """The curves of a convergence file's bytes: (the exact curve's label, label →
    (normalised error, losses)); ConfigError naming ``source`` for anything else (not UTF-8,
    not JSON, missing keys, a NaN or infinite value)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        curves = {str(label): (float(curve["normalised_error"]),
                               np.asarray(curve["loss"], dtype=np.float64).reshape(-1))
                  for label, curve in data["curves"].items()}
        exact = str(data["exact"])
        curves[exact]  # noqa: B018 - the exact curve is one of them
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        why = ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError)
               else f"{type(exc).__name__}: {exc}")
        raise ConfigError(f"plan.convergence {source}: not a convergence-curves file ({why})"
                          ) from None
    for label, (error, loss) in curves.items():
        require(bool(np.isfinite(loss).all()) and np.isfinite(error),
                f"plan.convergence {source}: curve {label!r} holds a NaN or infinite value")
        require(label == exact or 0.0 <= error < 1.0,
                f"plan.convergence {source}: curve {label!r} has normalised_error {error}, "
                "outside [0, 1)")
    return exact, curves


def load_convergence(path: str | Path | None, target_fraction: float,
                     kappa: float | None) -> Convergence:
    """Read measured curves (``bench/measure_convergence.py``'s JSON; None: the packaged
    MNIST curves), fix the target loss at the exact curve's loss at ``target_fraction`` of its
    run and fit κ (used unless ``kappa`` is given)."""
    if path is None:
        ref = resources.files("agc_pipeline") / "data" / "convergence" / "mnist_mlp.json"
        raw, source = ref.read_bytes(), "agc_pipeline/data/convergence/mnist_mlp.json"
    else:
        file = Path(path).expanduser()
        require(file.exists(), f"plan.convergence: no such file {str(file)!r}")
        require(file.is_file(), f"plan.convergence: {str(file)!r} is not a regular file")
        raw, source = file.read_bytes(), str(file)
    exact_label, curves = _read_curves(raw, source)
    exact = curves[exact_label][1]
    require(exact.size >= 2, f"plan.convergence {source}: the exact curve needs ≥ 2 points")
    at = max(1, int(round(target_fraction * exact.size)))
    target = float(exact[at - 1])
    base = _first_hit(exact, target)
    assert base is not None
    points = []
    for label, (error, loss) in curves.items():
        if label == exact_label:
            continue
        hit = _first_hit(loss, target)
        points.append({"label": label, "normalised_error": error,
                       "iterations": hit if hit is not None else int(loss.size),
                       "censored": hit is None,
                       "ratio": (hit if hit is not None else loss.size) / base})
    fitted = fit_kappa(points)
    return Convergence(source=source, target_loss=target, iterations_exact=base,
                       kappa=fitted if kappa is None else float(kappa), fitted_kappa=fitted,
                       points=points)


