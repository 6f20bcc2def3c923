"""Speed of the approximation-error engine against the authors' per-set lstsq method.

    python bench/bench_analyze.py            # reduced side-by-side run + the full Fig. 3 workload
    python bench/bench_analyze.py --quick    # reduced side-by-side run only

1. Side by side, in one process, on the same encoder draws and survivor sets (Fig. 3 setting:
   PG(2,9), construction (7), m = 2): one ``np.linalg.lstsq`` per column per survivor set
   (the authors' scripts) against our batched Gram/Schur evaluation. Prints the speed-up
   (target ≥ 50×) and the largest absolute difference of the errors (target ≤ 1e-8).
2. The full Fig. 3 workload (15 values of s × 100 draws × 1000 survivor sets, plus the
   stack baseline and the per-set Lemma-1 bound) through the `analyze` engine (target < 60 s
   on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agc_pipeline.analysis.engine import ErrorStudy, encoder_rng, paper_grid
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.stack import Stack
from agc_pipeline.decoding import OptimalDecoder


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


def side_by_side(draws: int, sets: int, s_values: list[int]) -> None:
    scheme = RandomDiagonal(bibd("projective_plane", q=9), 2)
    study = ErrorStudy(scheme, s_values, draws, sets, seed=0)
    masks_by_s = study.survivor_masks()
    encodings = [scheme.encode(encoder_rng(0, r)) for r in range(draws)]
    total = draws * sets * len(s_values)

    t0 = time.perf_counter()
    slow = [authors_method(b, scheme.target, masks_by_s[s]) for b in encodings for s in s_values]
    t_slow = time.perf_counter() - t0

    t0 = time.perf_counter()
    decoder = OptimalDecoder()
    fast = []
    for b in encodings:
        errors_of = decoder.evaluator(b, scheme.target)
        fast += [errors_of(masks_by_s[s]) for s in s_values]
    t_fast = time.perf_counter() - t0

    diff = max(float(np.abs(x - y).max()) for x, y in zip(slow, fast, strict=True))
    print(f"side by side: {total} survivor sets (n = 91, m = 2, s ∈ {s_values}, "
          f"{draws} draws × {sets} sets)")
    print(f"  per-set lstsq (authors): {t_slow:8.3f} s  ({t_slow / total * 1e6:8.1f} µs/set)")
    print(f"  batched Gram/Schur (ours): {t_fast:6.3f} s  ({t_fast / total * 1e6:8.1f} µs/set)")
    print(f"  speed-up: {t_slow / t_fast:.0f}×   (target ≥ 50×)")
    print(f"  max |difference| of errors: {diff:.2e}   (target ≤ 1e-8)")


def full_fig3() -> None:
    a = bibd("projective_plane", q=9)
    study = ErrorStudy(RandomDiagonal(a, 2), paper_grid(a.n), realizations=100,
                       straggler_sets=1000, seed=0, baseline=Stack(a, 2))
    t0 = time.perf_counter()
    res = study.run()
    seconds = time.perf_counter() - t0
    print(f"full Fig. 3 workload (15 s × 100 draws × 1000 sets + baseline + Lemma 1): "
          f"{seconds:.1f} s   (target < 60 s)")
    last = res["points"][-1]
    print(f"  s = {last['s']}: empirical {last['empirical_mean']:.3f} ≤ bound (10) "
          f"{last['upper_bound']:.3f} < baseline {last['baseline_mean']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the full Fig. 3 workload")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--sets", type=int, default=100)
    args = parser.parse_args()
    side_by_side(args.draws, args.sets, [6, 13, 22])
    if not args.quick:
        full_fig3()


if __name__ == "__main__":
    main()
