"""The planner behind ``agc-plan``: predicted time to a fixed loss for DDP and coded schemes
on a modelled cluster (pure numpy; the app is :mod:`agc_pipeline.plan`).

Method. time to the loss = iterations to the loss × expected iteration time.

* Expected iteration time: Monte Carlo over per-worker, per-iteration slowdowns (a worker is
  ``slowdown``× slower with probability p; the same draws for every scheme) through the cost
  model of :mod:`agc_pipeline.cluster.costmodel`: DDP waits for the slowest worker and all-reduces
  d values over a ring; the PS broadcasts, each worker computes its δ/k share of the global
  batch, the messages of ⌈d/m⌉ values queue on the PS's link, the PS takes the first n − s
  and decodes.
* Iterations to the loss of a scheme with normalised decoding error ē = E[Err_𝓕(B)]/(mk)
  (eq. 3, survivor sets of size n − s uniformly at random): ``I_0 · (1 + κ·ē/(1 − ē))``.
  With optimal decoding B R is the projection of F on the span of B_𝓕, so
  ``tr Fᵀ E[B R] = mk − E[Err]`` and α = 1 − ē whenever E[B R] = α F (Section VII); the
  step divided by α is unbiased, and if the partial-gradient blocks were orthogonal with
  equal norms its relative variance would be ``E‖BR‖²/(α² mk) − 1 = ē/(1 − ē)``, costing a
  factor 1 + ē/(1 − ē) in iterations at a tuned step size (κ = 1, the isotropic bound).
  Real partial gradients are strongly aligned, so κ is measured: fitted by least squares to
  the iterations to the same loss of measured runs at several ē
  (``bench/measure_convergence.py``; packaged: MNIST, the paper's MLP, AG(2,4)). I_0, the
  exact gradient's iterations to the loss, is read from the same curves: time-to-loss
  ratios between schemes do not depend on it.
* ē at large n: the repository's constructions (codes/) and its Monte Carlo error engine
  (:class:`~agc_pipeline.analysis.engine.ErrorStudy`, optimal decoding), with the paper's
  closed-form bound next to it where one exists (eqs. 10, 12, 17). Exact codes (FRC, the
  communication-efficient FRC) have ē = 0 at their design s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agc_pipeline.cluster.convergence import (
    Convergence,
    fit_kappa,
    iterations_label,
    load_arena_convergence,
    load_convergence,
)
from agc_pipeline.cluster.costmodel import (
    ClusterModel,
    ddp_iteration_times,
    ps_cpu_work,
    sharded_iteration_times,
    slowdowns,
)
from agc_pipeline.cluster.mitigations import local_sgd_row
from agc_pipeline.cluster.plan_codes import (
    FAMILIES,
    Code,
    backup_code,
    code_errors,
    family_codes,
)
from agc_pipeline.cluster.plan_settings import PlanSettings
from agc_pipeline.cluster.plan_summary import best_per_setting, crossovers, headline

__all__ = ["ASSUMPTIONS", "FAMILIES", "METHOD", "Code", "Convergence", "PlanSettings",
           "family_codes", "fit_kappa", "load_arena_convergence", "load_convergence",
           "run_plan"]

#: a code and its normalised decoding error ē(s) per s
CodeError = tuple[Code, dict[int, float]]

#: third entry of the slowdown RNG seed
SLOW_STREAM = 0x91A7

METHOD = (
    "time to the loss = iterations to the loss x expected iteration time. Iteration time: "
    "Monte Carlo over per-worker per-iteration slowdowns (factor r with probability p, the "
    "same draws for every scheme) through the cost model (agc_pipeline/cluster/costmodel.py): "
    "DDP = "
    "slowest worker's compute + ring all-reduce 2(n-1)a + 2(n-1)/n d b/B; PS = broadcast + "
    "compute of the worker's delta/k share of the global batch + FIFO upload of ceil(d/m)-value "
    "messages on the PS link + the (n-s)-th delivery + decode. Iterations: I0 (1 + kappa "
    "e/(1-e)) with e = E[Err_F(B)]/(mk) the normalised decoding error of optimal decoding at "
    "n-s random survivors (Monte Carlo with the repository's codes), derived from alpha = 1 - e "
    "(Section VII) and the relative variance e/(1-e) of the alpha-rescaled step for orthogonal "
    "equal-norm partial gradients (kappa = 1); kappa fitted to measured convergence curves at "
    "several e (bench/measure_convergence.py). Each scheme's s is the one minimising its time "
    "to the loss. Baselines (agc_pipeline/cluster/mitigations.py): backup workers = the "
    "uncoded PS (A = I, each worker 1/n of the batch) taking the first n-s, e = s/n; local "
    "SGD = (max over workers of the compute summed over each averaging period H + ring "
    "all-reduce of the d parameters) / H; hierarchical SGD = groups of g average every H "
    "steps, everyone every G steps. The winner per setting is the fastest to the loss among "
    "DDP, backup workers, local/hierarchical SGD, the best code on the PS and the best scheme "
    "on the sharded runtime (trainer=sharded: slices of the coded message to the shards' "
    "owners, each decoding from its own first n-s, then an all-gather; a tie goes to the "
    "baseline).")

ASSUMPTIONS = (
    "links: every node has one full-duplex link of the cluster's bandwidth and latency; the "
    "switch is non-blocking: no contention beyond the PS's own link",
    "no overlap of compute and communication (DDP's bucketed all-reduce during the backward "
    "pass is not modelled, nor a worker streaming its message as it computes)",
    "the PS decodes after the (n-s)-th message; late messages are dropped at once and take no "
    "bandwidth; a slowed worker abandons its iteration when the next one starts",
    "the straggler set is a uniformly random set of s workers (the decoding error is evaluated "
    "on such sets; with unicast the PS is taken to randomise its sending order)",
    "compute is proportional to the samples a worker processes (a coded worker holding delta of "
    "k subsets processes delta/k of the global batch, as the one-pass coded gradient costs a "
    "plain step over them) times flops_per_sample x d / worker_flops; memory limits ignored",
    "a node's fixed work per iteration is d x step_time_per_parameter (0 for the published "
    "clusters: the optimizer step is then ignored); protocol overheads beyond the link's "
    "effective bandwidth are ignored",
    "shared_cores (cluster=loopback only: every process on one host): an iteration takes at "
    "least the CPU work of all processes (compute, decode, 2 x bytes x transfer_cpu_per_byte "
    "+ messages x message_cpu) over the cores, with perfect packing",
    "iterations to the loss scale as 1 + kappa e/(1-e) with kappa measured on a small model "
    "(MNIST, the paper's MLP) and the same global batch for every scheme and every n; the "
    "iteration count I0 itself comes from that small model: only ratios transfer",
    "the PS's concurrent broadcast (all n copies posted at once, sharing its link) is what "
    "this repository's PS does; unicast (one copy after another) and the pipelined (chain) "
    "broadcast are modelled but not implemented here",
    "sharded rows (trainer=sharded): every owner decodes its slice from its own first n-s "
    "arrivals with the PS's decoding error at that s; the all-gather moves the parameters in "
    "grad_bytes (the model's dtype); a straggler's late slices take no bandwidth; both phases "
    "run at sharded_link_efficiency x bandwidth (1, lossless, on the published clusters; "
    "measured on the emulated links, where converging flows lose packets)",
    "local and hierarchical SGD: iterations to the loss assumed equal to DDP's (not measured); "
    "no warm-up phase of synchronous steps; a group's all-reduce uses the cluster's link; no "
    "shared-host CPU bound; every worker processes B/n samples per step as in DDP",
    "stall > 0 (plan.stall): a hit worker (probability p per worker and step, the slowdown "
    "draws) also waits stall seconds, e.g. the 1 s stalls of the PyTorch hierarchical-SGD post",
)


# ------------------------------------------------------------------------------------------
# code families at a given n (the repository's constructions)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def _designs(st: PlanSettings, progress: Callable[[str], None] | None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, list[CodeError]]]:
    """The codes of every family at every n with their decoding errors: (``designs``,
    ``errors``, the codes per n)."""
    designs: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    codes: dict[int, list[CodeError]] = {}
    for n in st.n:
        codes[n] = []
        designs[str(n)] = {}
        for family in st.families:
            entry: dict[str, Any] = {"description": FAMILIES[family], "available": False,
                                     "codes": []}
            reasons = []
            for m in st.m:
                found, why = family_codes(family, n, m, st.s_fractions)
                if why is not None:
                    reasons.append(f"m={m}: {why}")
                for code in found:
                    if progress is not None:
                        progress(f"n={n} {family} m={m} {code.construction}")
                    err, bound = code_errors(code, st.error_realizations, st.error_sets,
                                             st.seed)
                    codes[n].append((code, err))
                    entry["available"] = True
                    entry["codes"].append({"m": m, "construction": code.construction,
                                           "k": code.scheme.k, "load": code.load,
                                           "s": code.s_values})
                    errors += [{"n": n, "family": family, "m": m, "s": s,
                                "construction": code.construction,
                                "normalised_error": err[s], "normalised_bound": bound[s]}
                               for s in code.s_values]
            if reasons:
                entry["not_available"] = reasons
            designs[str(n)][family] = entry
    return designs, errors, codes


def _compute_of(cluster: ClusterModel, st: PlanSettings, n: int, p: float,
                d: int) -> Callable[[float], np.ndarray]:
    """Per-worker compute times (draws, n) of a worker processing a given number of samples:
    ``slowdown``× with probability p, plus ``stall`` seconds then (the same draws for every
    scheme at (n, p))."""
    rng = np.random.default_rng([st.seed, n, int(round(p * 1e6)), SLOW_STREAM])
    slow = slowdowns(rng, st.draws, n, p, st.slowdown)
    if st.stall > 0:  # the same uniforms as the slowdowns: hit ⇔ u < p
        hit = np.random.default_rng([st.seed, n, int(round(p * 1e6)), SLOW_STREAM]).random(
            (st.draws, n)) < p
        extra = np.where(hit, st.stall, 0.0)
    else:
        extra = np.zeros_like(slow)

    def compute_of(samples: float) -> np.ndarray:
        return cluster.worker_compute(samples, st.flops_per_sample * d, d, slow) + extra

    return compute_of


def _baseline_rows(cluster: ClusterModel, st: PlanSettings, convergence: Convergence,
                   compute_of: Callable[[float], np.ndarray], n: int, p: float,
                   d: int) -> list[dict[str, Any]]:
    """DDP, backup workers (per broadcast) and the local-SGD schedules at (n, p, d)."""
    i0 = convergence.iterations_exact
    where = {"n": n, "d": d, "p": p}
    compute = compute_of(st.global_batch(n) / n)
    t_ddp = _mean(ddp_iteration_times(cluster, compute, d, st.grad_bytes))
    rows = [{**where, "scheme": "ddp", "family": "ddp", "coded": False, "m": 1, "s": 0,
             "runtime": "allreduce", "broadcast": None, "normalised_error": 0.0,
             "iterations_factor": 1.0,
             "iteration_time": t_ddp, "time_to_loss": i0 * t_ddp,
             "time_to_loss_isotropic": i0 * t_ddp, "s_isotropic": 0,
             "iterations": iterations_label("ddp", convergence)}]
    backup = backup_code(n, st.s_fractions)
    if backup is not None:
        err = {s: s / n for s in backup.s_values}  # A = I: Err = s exactly (eq. 3)
        for runtime, broadcast in _runtimes(st):
            row = _best_s(cluster, st, backup, err, compute_of, d, broadcast, convergence, p,
                          runtime)
            name = "backup workers" + (" (sharded)" if runtime == "sharded" else "")
            rows.append({**row, "scheme": name, "family": "backup",
                         "iterations": iterations_label("backup", convergence)})
    for spec in st.averaging:
        row = local_sgd_row(cluster, spec, compute, d, st.grad_bytes)
        if row["available"]:
            factor = convergence.local_sgd_factor
            row.update(time_to_loss=i0 * factor * row["iteration_time"],
                       iterations_factor=factor,
                       iterations=iterations_label(spec.kind, convergence))
        rows.append({**where, "coded": False, "runtime": "allreduce", "broadcast": None, **row})
    return rows


def run_plan(cluster: ClusterModel, settings: PlanSettings, convergence: Convergence,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate every scheme and baseline at every (n, d, p); return the ``plan.json``
    content."""
    start = time.perf_counter()
    st = settings
    designs, errors, codes = _designs(st, progress)
    rows: list[dict[str, Any]] = []
    for n in st.n:
        for p in st.p:
            for d in st.d:
                compute_of = _compute_of(cluster, st, n, p, d)
                rows += _baseline_rows(cluster, st, convergence, compute_of, n, p, d)
                for code, err in codes[n]:
                    for runtime, broadcast in _runtimes(st):
                        row = _best_s(cluster, st, code, err, compute_of, d, broadcast,
                                      convergence, p, runtime)
                        rows.append({**row, "iterations": iterations_label("code",
                                                                           convergence)})
    best = best_per_setting(rows, st)
    return {
        "cluster": cluster.describe(),
        "settings": st.describe(),
        "method": METHOD,
        "assumptions": list(ASSUMPTIONS),
        "convergence": convergence.describe(),
        "designs": designs,
        "errors": errors,
        "results": rows,
        "best": best,
        "crossovers": crossovers(best, st),
        "headline": headline(cluster, best, st, convergence.kappa),
        "seconds": time.perf_counter() - start,
    }


def _runtimes(st: PlanSettings) -> list[tuple[str, str | None]]:
    """(runtime, broadcast) of the rows of a PS-style scheme: the PS once per broadcast, then
    ``trainer=sharded`` (no broadcast: the owners all-gather the parameters)."""
    return [*(("ps", b) for b in st.broadcast), ("sharded", None)]


def _iteration_time(cluster: ClusterModel, st: PlanSettings, code: Code,
                    compute: np.ndarray, d: int, broadcast: str | None,
                    runtime: str) -> Callable[[int], float]:
    """The mean iteration time of ``code`` at a given s on ``runtime``: the PS (broadcast,
    FIFO uploads, the (n − s)-th delivery, decode, update; the shared-host bound) or
    ``trainer=sharded`` (:func:`sharded_iteration_times`: every owner decodes its slice
    from its own first n − s arrivals, then the all-gather)."""
    n, m, k = code.n, code.m, code.scheme.k
    if runtime == "sharded":
        return lambda s: _mean(sharded_iteration_times(cluster, compute, n - s, d, m, k,
                                                       st.grad_bytes))
    assert broadcast is not None
    length = math.ceil(d / m)
    starts = cluster.broadcast_starts(n, d * st.param_bytes, broadcast)
    done = np.sort(cluster.ps_deliveries(starts + compute, length * st.grad_bytes), axis=1)

    def ps(s: int) -> float:
        w = n - s
        return _mean(np.maximum(
            done[:, w - 1] + cluster.decode_time(w, m, k, length, st.grad_bytes)
            + d * cluster.step_time_per_parameter,
            cluster.shared_host_bound(ps_cpu_work(cluster, compute, w, d, m, k, st.grad_bytes,
                                                  st.param_bytes))))

    return ps


def _best_s(cluster: ClusterModel, st: PlanSettings, code: Code, err: dict[int, float],
            compute_of: Callable[[float], np.ndarray], d: int, broadcast: str | None,
            convergence: Convergence, p: float, runtime: str = "ps") -> dict[str, Any]:
    """The row of ``code`` at (d, runtime, broadcast): its s minimising the time to the
    loss (chosen the same way on both runtimes)."""
    n, m = code.n, code.m
    compute = compute_of(code.load * st.global_batch(n))
    time_at = _iteration_time(cluster, st, code, compute, d, broadcast, runtime)
    i0 = convergence.iterations_exact
    best: dict[str, Any] | None = None
    iso: tuple[float, int] = (math.inf, 0)
    for s in code.s_values:
        t = time_at(s)
        factor = convergence.factor(err[s])
        total = i0 * factor * t
        iso = min(iso, (i0 * convergence.factor(err[s], 1.0) * t, s))
        if best is None or total < best["time_to_loss"]:
            name = f"{code.family} m={m}" + (" (sharded)" if runtime == "sharded" else "")
            best = {"n": n, "d": d, "p": p, "scheme": name,
                    "family": code.family, "coded": code.coded, "m": m, "s": s,
                    "runtime": runtime, "broadcast": broadcast, "construction": code.construction,
                    "load": code.load, "normalised_error": err[s],
                    "iterations_factor": factor, "iteration_time": t, "time_to_loss": total}
    assert best is not None
    best["time_to_loss_isotropic"], best["s_isotropic"] = iso
    return best
