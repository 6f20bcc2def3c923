"""Speed of the approximation-error engine against the authors' per-set lstsq method.

    python bench/bench_analyze.py                    # the full Fig. 3 workload, side by side
    python bench/bench_analyze.py --authors-sets 0   # the authors' method on every set (~40 min)

One run, one process, the workload of ``experiment=fig3`` (PG(2,9) BIBD, construction (7),
m = 2; 15 values of s × 100 encoder draws × 1000 survivor sets = 1.5 million errors (3)):

1. our engine, the whole study as the ``analyze`` app runs it (plus the stack baseline and
   the per-set Lemma-1 bound), and the errors alone;
2. the authors' method (one ``np.linalg.lstsq`` per column per survivor set, as in their
   notebooks) on the same draws and sets. Its cost is the same for every set, so by default
   it is timed on ``--authors-sets`` sets per s of every ``--authors-draw-step``-th draw and
   scaled to the 1.5 million sets (``--authors-sets 0``: on every set). Both sides run BLAS
   on one thread, the authors' best case (with default threads it was 30× slower here).

Prints both times, the speed-up (target ≥ 400×), the largest difference of the errors on
the sets both computed (target ≤ 1e-8) and ``uptime`` before and after (the machine's load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
from hydra import compose, initialize_config_dir

from agc_pipeline.analysis.engine import ErrorStudy, encoder_rng
from agc_pipeline.analyze import build_study
from agc_pipeline.coding.decoding import SurvivorSets, one_blas_thread
from agc_pipeline.conf_path import CONFIG_DIR

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402


def authors_method(b: np.ndarray, f: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """One lstsq per column per survivor set, as in the authors' notebooks."""
    out = np.empty(len(masks))
    for i, mask in enumerate(masks):
        b_f = b[:, np.sort(np.flatnonzero(mask))]
        err = 0.0
        for t in range(f.shape[1]):
            a = f[:, t : t + 1]
            x = np.linalg.lstsq(b_f, a, rcond=None)[0]
            err += float(np.linalg.norm(b_f @ x - a, 2) ** 2)
        out[i] = err
    return out


def fig3_study() -> ErrorStudy:
    """The study of ``python -m agc_pipeline.analyze experiment=fig3``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="analyze", overrides=["experiment=fig3"])
    return build_study(cfg)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def engine_errors(study: ErrorStudy) -> tuple[float, list[list[np.ndarray]]]:
    """Seconds for the scheme's errors on every draw and set, and the errors [draw][s]."""
    scheme, decoder = study.scheme, study.decoder
    start = time.perf_counter()
    with one_blas_thread():
        sets = {s: SurvivorSets(m) for s, m in study.survivor_masks().items()}
        errors = []
        for r in range(study.realizations):
            errors_of = decoder.evaluator(scheme.encode(encoder_rng(study.seed, r)),
                                          scheme.target)
            errors.append([errors_of(sets[s]) for s in study.s_values])
    return time.perf_counter() - start, errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-sets", type=at_least(0, int), default=25,
                        help="survivor sets per s timed for the authors' method (0: all)")
    parser.add_argument("--authors-draw-step", type=at_least(1, int), default=25,
                        help="time the authors' method on every this-many-th draw")
    args = parser.parse_args(argv)
    print(f"uptime before: {uptime()}")
    study = fig3_study()
    total = study.realizations * study.straggler_sets * len(study.s_values)
    print(f"workload: experiment=fig3, n = {study.scheme.n}, m = {study.scheme.m}, "
          f"{len(study.s_values)} values of s × {study.realizations} draws × "
          f"{study.straggler_sets} sets = {total} errors")

    start = time.perf_counter()
    study.run()
    t_study = time.perf_counter() - start
    t_errors, ours = engine_errors(study)
    print(f"  ours, whole study (errors + stack baseline + Lemma 1): {t_study:7.2f} s")
    print(f"  ours, errors only:                                      {t_errors:7.2f} s")

    every = args.authors_sets == 0
    sets = study.straggler_sets if every else min(args.authors_sets, study.straggler_sets)
    draws = range(0, study.realizations, 1 if every else args.authors_draw_step)
    masks = study.survivor_masks()
    scheme, diff, timed = study.scheme, 0.0, 0
    start = time.perf_counter()
    with one_blas_thread():
        for r in draws:
            b = scheme.encode(encoder_rng(study.seed, r))
            for i, s in enumerate(study.s_values):
                theirs = authors_method(b, scheme.target, masks[s][:sets])
                diff = max(diff, float(np.abs(theirs - ours[r][i][:sets]).max()))
                timed += sets
    t_timed = time.perf_counter() - start
    t_authors = t_timed / timed * total
    how = "measured" if every else (f"measured on {timed} sets ({len(draws)} draws × {sets} "
                                    f"sets per s, {t_timed:.1f} s), scaled to {total}")
    print(f"  authors' per-set lstsq: {t_authors:9.1f} s   ({how}; "
          f"{t_timed / timed * 1e6:.0f} µs/set)")
    print(f"speed-up, whole study: {t_authors / t_study:6.0f}×   (target ≥ 400×)")
    print(f"speed-up, errors only: {t_authors / t_errors:6.0f}×")
    print(f"max |difference| of the errors: {diff:.1e}   (target ≤ 1e-8)")
    print(f"uptime after:  {uptime()}")


if __name__ == "__main__":
    main()
