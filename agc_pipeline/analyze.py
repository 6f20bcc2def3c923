"""The ``analyze`` app: approximation error of a gradient code against the paper's bounds.

    python -m agc_pipeline.analyze experiment=fig3        # Fig. 3 (also fig4, fig5)
    python -m agc_pipeline.analyze assignment=srg assignment.graph=petersen m=2

Writes ``results.json`` and ``error_vs_stragglers.png`` in the Hydra run dir, then
``summary.json`` (status, seed, library versions, git commit, resolved config: what
reproduces the run); with ``logger=wandb`` also logs them to W&B (offline by default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.analysis.engine import ErrorStudy, paper_grid
from agc_pipeline.analysis.plot import plot_results
from agc_pipeline.build import (
    build_assignment,
    build_decoder,
    build_scheme,
    refuse_foreign_presets,
    require_app,
    run_app,
)
from agc_pipeline.codes.stack import Stack
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import require
from agc_pipeline.reporting.jobs import app_job, run_group, run_name, save_run_record
from agc_pipeline.reporting.progress import progress
from agc_pipeline.reporting.provenance import record
from agc_pipeline.reporting.sinks import check_logger, make_logger_sink, write_json
from agc_pipeline.reporting.sweeps import skip_finished_job
from agc_pipeline.validation import require_bool, require_finite, require_int, require_int_list

log = logging.getLogger("agc_pipeline.analyze")

#: the x-axes of an analyze run's W&B charts (``straggler_fraction`` is the default)
X_AXES = ("straggler_fraction", "s")


def build_study(cfg: DictConfig) -> ErrorStudy:
    """Everything the study needs, built and validated before any computation."""
    require_app(cfg, "analyze")
    m = require_int(cfg.m, "m", minimum=1)
    seed = require_int(cfg.seed, "seed", minimum=0)
    a = cfg.analysis
    realizations = require_int(a.realizations, "analysis.realizations", minimum=1)
    straggler_sets = require_int(a.straggler_sets, "analysis.straggler_sets", minimum=1)
    s_values = None if a.s is None else require_int_list(a.s, "analysis.s", minimum=0)
    for key in ("include_zero", "baseline", "plot", "progress", "skip_finished"):
        require_bool(a.get(key, True), f"analysis.{key}")
    if s_values is None:
        points = require_int(a.grid_points, "analysis.grid_points", minimum=1)
        fraction = require_finite(a.max_fraction, "analysis.max_fraction", minimum=0.0,
                                  maximum=1.0)
    assignment = build_assignment(cfg)
    scheme = build_scheme(cfg.scheme, assignment, m)
    if s_values is None:
        s_values = paper_grid(assignment.n, points, fraction, a.include_zero)
    compare = {str(label): build_scheme(node, assignment, m, f"analysis.compare.{label}")
               for label, node in (a.compare or {}).items()}
    baseline = Stack(assignment, m) if a.baseline and scheme.name != "stack" else None
    return ErrorStudy(scheme=scheme, s_values=s_values, realizations=realizations,
                      straggler_sets=straggler_sets, seed=seed, decoder=build_decoder(cfg),
                      baseline=baseline, compare=compare)


def run_analysis(cfg: DictConfig, out_dir: Path, replace: bool = False) -> dict[str, Any]:
    """Run the study of ``cfg``, write ``results.json`` and the plot into ``out_dir``.

    A finished analysis already in ``out_dir`` is refused (nothing written) unless
    ``analysis.overwrite=true`` or ``replace`` (the app passes it for the jobs of a re-run
    sweep, which run again only when unfinished or changed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = build_study(cfg)
    _check_plot_bounds(cfg.analysis.get("plot_bounds"), study)
    overwrite = require_bool(cfg.analysis.get("overwrite", False), "analysis.overwrite")
    require(replace or overwrite or not (out_dir / "results.json").exists(),
            f"{out_dir} already holds an analysis (results.json): pass a new hydra.run.dir, "
            "or replace it with analysis.overwrite=true")
    check_logger(cfg.get("logger"))
    save_run_record(cfg, out_dir)  # every check passed: the run dir is this run's now
    config = OmegaConf.to_container(cfg, resolve=True)
    keys = run_keys(study, cfg)
    sink = make_logger_sink(cfg.get("logger"), out_dir, config,
                            group=run_group(str(cfg.name), out_dir), job_type="analyze",
                            name=run_name(str(cfg.name)), keys=keys,
                            x_axes=X_AXES, step_metric="straggler_fraction")
    try:
        show = bool(cfg.analysis.get("progress", True))
        results = study.run(progress=lambda it: progress(it, desc=f"analyze {cfg.name}",
                                                         unit="draw", disable=not show))
        results["name"] = str(cfg.name)
        results["keys"], results["wandb"] = keys, sink.describe()
        results.update(record())
        results["config"] = config
        write_json(out_dir / "results.json", results)
        for p in results["points"]:
            log.info("s=%d  mean=%.4f  max=%.4f  baseline=%s  upper=%s  lower=%.1f", p["s"],
                     p["empirical_mean"], p["empirical_max"], _fmt(p["baseline_mean"]),
                     _fmt(p["upper_bound"]), p["lower_bound"])
        bounds = cfg.analysis.get("plot_bounds")
        plot = plot_results(results, out_dir / "error_vs_stragglers.png",
                            title=cfg.analysis.get("title"),
                            bounds=list(bounds) if bounds is not None else None,
                            ) if cfg.analysis.plot else None
        for p in results["points"]:
            sink.log({k: v for k, v in p.items() if not isinstance(v, dict)}
                     | {f"bound/{k}": v for k, v in p["bounds"].items()}, step=int(p["s"]))
        sink.table("points", [{k: v for k, v in p.items() if not isinstance(v, dict)}
                              for p in results["points"]])
        if plot is not None:
            sink.image("error_vs_stragglers", plot)
        sink.summary(headline(results))
        write_json(out_dir / "summary.json", _summary(results))  # last: marks completion
        log.info("wrote %s (%.1f s)", out_dir / "results.json", results["seconds"])
        return results
    finally:
        sink.close()


def bound_names(study: ErrorStudy) -> list[str]:
    """The bounds results.json will hold for ``study`` (keys of its points' ``bounds``): the
    scheme's closed-form bounds and the mean and max of its per-set bounds (one cheap
    encoding and survivor set give their names)."""
    scheme, s = study.scheme, min(study.s_values)
    names = list(scheme.closed_form_bounds(s))
    mask = np.ones((1, scheme.n), dtype=bool)
    mask[0, :s] = False
    b = scheme.encode(np.random.default_rng(study.seed))
    for name in scheme.set_bounds(b, mask):
        names += [f"{name}_mean", f"{name}_max"]
    return names


def _check_plot_bounds(bounds: Any, study: ErrorStudy) -> None:
    """``analysis.plot_bounds`` is null or a list of the study's bound names (an unknown name
    drew nothing, silently)."""
    if bounds is None:
        return
    require(OmegaConf.is_list(bounds) or isinstance(bounds, list),
            f"analysis.plot_bounds must be a list of bound names or null (got {bounds!r})")
    allowed = bound_names(study)
    for name in bounds:
        require(name in allowed,
                f"analysis.plot_bounds: {name!r} is not a bound of scheme "
                f"{study.scheme.name} (allowed: {', '.join(allowed) or 'none'})")


def run_keys(study: ErrorStudy, cfg: DictConfig) -> dict[str, Any]:
    """The flat, groupable keys of the run's W&B config (as the train app's; ``code`` is the
    scheme, the straggler count s varies along the run's points)."""
    scheme = study.scheme
    experiment = (HydraConfig.get().runtime.choices.get("experiment")
                  if HydraConfig.initialized() else None)
    return {"app": "analyze", "preset": experiment, "code": scheme.name, "scheme": scheme.name,
            "assignment": scheme.assignment.kind, "n": scheme.assignment.n,
            "k": scheme.assignment.k, "m": scheme.m, "straggler": "fixed", "s": None, "q": None,
            "runtime": None, "model": None, "d": None, "decoder": study.decoder.name,
            "seed": study.seed}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The W&B summary of an analyze run: its size and the error at the largest s."""
    last = max(results["points"], key=lambda p: p["s"])
    return {"seconds": results["seconds"], "n": results["n"], "k": results["k"],
            "m": results["m"], "points": len(results["points"]), "max_s": last["s"],
            "max_straggler_fraction": last["straggler_fraction"],
            "error_mean_at_max_s": last["empirical_mean"],
            "error_max_at_max_s": last["empirical_max"],
            "baseline_mean_at_max_s": last["baseline_mean"],
            "upper_bound_at_max_s": last["upper_bound"]}


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """summary.json of an analyze run: what it computed and what reproduces it."""
    keys = ("name", "seconds", "n", "k", "m", "delta", "gamma", "scheme", "assignment", "seed",
            "versions", "provenance", "keys", "wandb", "config")
    return {"app": "analyze", "status": "completed", "results": "results.json",
            "points": len(results["points"]), **{key: results.get(key) for key in keys}}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _job(cfg: DictConfig, out_dir: Path, multirun: bool = False) -> dict[str, Any] | None:
    """One run (or sweep job); no torch threads to pin: the study is numpy on one BLAS
    thread (:mod:`agc_pipeline.analysis.engine`)."""
    if skip_finished_job(cfg, out_dir, ("results.json",)):
        return None  # a re-run sweep: this job's complete run is already there
    with app_job(cfg, out_dir, "analyze") as job:
        results = run_analysis(cfg, out_dir, replace=multirun)
        last = max(results["points"], key=lambda p: p["s"])
        job.result = (f"mean error {last['empirical_mean']:.4f} at s={last['s']} "
                      f"-> {out_dir}")
        return results


@hydra.main(config_path=str(CONFIG_DIR), config_name="analyze", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_app(lambda: _job(cfg, out_dir, multirun), "agc-analyze")


def main() -> None:
    """Console-script entry point (``agc-analyze``)."""
    refuse_foreign_presets("analyze")  # e.g. experiment=fig6_bibd7 (a train preset)
    _hydra_main()


if __name__ == "__main__":
    main()
