"""The ``plan`` app: the cluster cost model without training. Predicted time to a fixed loss
for DDP and for coded schemes on a modelled cluster (method: :mod:`agc_pipeline.cluster.planner`).

    python -m agc_pipeline.plan experiment=scale_study      # n × d × m × p, ~1 min
    python -m agc_pipeline.plan cluster=ethernet_10g plan.n=[16,64] plan.d=[1000000]

Writes ``plan.json`` (every scheme's predicted iteration time, iterations and time to the
loss, the best coded scheme against DDP per setting, the crossovers in n, the designs that
exist at each n, the method and its assumptions) and ``time_to_loss.png`` in the Hydra run
dir, then ``summary.json``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.build import build_cluster, refuse_foreign_presets, require_app, run_app
from agc_pipeline.cluster.costmodel import ClusterModel
from agc_pipeline.cluster.planner import (
    PlanSettings,
    load_arena_convergence,
    load_convergence,
    run_plan,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import require
from agc_pipeline.reporting.jobs import save_run_record
from agc_pipeline.reporting.provenance import record
from agc_pipeline.reporting.sinks import write_json
from agc_pipeline.validation import (
    require_bool,
    require_choice,
    require_finite,
    require_optional_str,
    require_str,
)

log = logging.getLogger("agc_pipeline.plan")


def build_plan(cfg: DictConfig) -> tuple[ClusterModel, PlanSettings, Any]:
    """The cluster, the validated settings and the convergence model of ``cfg``."""
    require_app(cfg, "plan")
    cluster = build_cluster(cfg)
    require(cluster is not None, "the plan app needs a cluster model: cluster=loopback | "
                                 "ethernet_10g | ib_100g")
    assert cluster is not None
    p = cfg.plan
    settings = PlanSettings(  # validates every key
        n=p.n, d=p.d, m=p.m, p=p.p, slowdown=p.slowdown,
        samples_per_iteration=p.samples_per_iteration, flops_per_sample=p.flops_per_sample,
        grad_bytes=p.grad_bytes, param_bytes=p.param_bytes, broadcast=p.broadcast,
        families=p.families, s_fractions=p.s_fractions, draws=p.draws,
        error_realizations=p.error_realizations, error_sets=p.error_sets, seed=cfg.seed,
        stall=p.get("stall", 0.0), samples_per_worker=p.get("samples_per_worker"),
        local_sgd=p.get("local_sgd"), hierarchical_sgd=p.get("hierarchical_sgd"))
    require_bool(p.plot, "plan.plot")
    fraction = require_finite(p.target_fraction, "plan.target_fraction", 0.0, 1.0,
                              strict_minimum=True)
    kappa = None if p.kappa is None else require_finite(p.kappa, "plan.kappa", 0.0)
    require_optional_str(p.get("title"), "plan.title")
    source = require_choice(p.get("iterations", "curves"), "plan.iterations",
                            ("arena", "curves"))
    files = {key: require_optional_str(p.get(key), f"plan.{key}")
             for key in ("arena", "convergence")}
    other, needs = ("convergence", "curves") if source == "arena" else ("arena", "arena")
    require(files[other] is None, f"plan.{other}={files[other]} is read only with plan."
            f"iterations={needs} (got plan.iterations={source}): pass plan.iterations={needs} "
            f"or drop plan.{other}")
    if source == "arena":
        convergence = load_arena_convergence(
            files["arena"],
            require_str(p.get("arena_regime", "slowdown"), "plan.arena_regime"),
            require_str(p.get("arena_placement", "iid"), "plan.arena_placement"), kappa)
    else:
        convergence = load_convergence(files["convergence"], fraction, kappa)
    return cluster, settings, convergence


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate the plan of ``cfg``; write plan.json, the figure and summary.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster, settings, convergence = build_plan(cfg)
    save_run_record(cfg, out_dir)
    result = run_plan(cluster, settings, convergence, progress=log.debug)
    result["name"] = str(cfg.name)
    result.update(record())
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    figure = None
    if cfg.plan.plot:
        figure = plot_plan(result, out_dir / "time_to_loss.png", cfg.plan.get("title"))
        result["figure"] = figure.name
    write_json(out_dir / "plan.json", result)
    for c in result["crossovers"]:
        log.info("d=%-10d p=%-5g %-9s speed-up of the best coded scheme vs DDP by n: %s%s",
                 c["d"], c["p"], c["broadcast"],
                 ", ".join(f"{n}: {r:.2f}x" for n, r in c["speedups"].items()),
                 "".join(f"; crossover n ≈ {x['n']:.0f} (coded wins {x['coded_wins']})"
                         for x in c["crossovers"]))
    for b in result["best"]:
        log.info("n=%-4d d=%-10d p=%-5g %-9s winner: %s; step speed-up vs DDP: %s", b["n"],
                 b["d"], b["p"], b["broadcast"], b["winner"]["scheme"],
                 ", ".join(f"{k} {v:.2f}x" for k, v in b["step_speedup_vs_ddp"].items()))
    log.info("%s", result["headline"])
    write_json(out_dir / "summary.json", {
        "app": "plan", "status": "completed", "plan": "plan.json",
        "figure": None if figure is None else figure.name, "name": result["name"],
        "seconds": result["seconds"], "headline": result["headline"],
        "cluster": cluster.name, "versions": result.get("versions"),
        "provenance": result.get("provenance"), "config": result["config"]})
    log.info("wrote %s (%.1f s)", out_dir / "plan.json", result["seconds"])
    return result


def plot_plan(result: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Per straggler severity p (columns) and model size d (rows): predicted time to the
    loss against n for DDP, the best coded scheme (per broadcast) and the best uncoded PS,
    crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = result["settings"]
    ds, ps, ns = st["d"], st["p"], st["n"]
    fig, axes = plt.subplots(len(ds), len(ps), figsize=(4.2 * len(ps), 3.3 * len(ds)),
                             squeeze=False, sharex=True)
    styles = {"unicast": ("tab:blue", "-"), "pipelined": ("tab:green", "--")}
    for i, d in enumerate(ds):
        for j, p in enumerate(ps):
            ax = axes[i][j]
            here = [b for b in result["best"] if b["d"] == d and b["p"] == p]
            first = [b for b in here if b["broadcast"] == st["broadcast"][0]]
            first.sort(key=lambda b: b["n"])
            ax.plot([b["n"] for b in first], [b["ddp_time_to_loss"] for b in first], "k-o",
                    label="DDP (ring all-reduce)", ms=4)
            _plot_baselines(ax, first)
            for broadcast in st["broadcast"]:
                rows = sorted((b for b in here if b["broadcast"] == broadcast
                               and b["best_coded"] is not None), key=lambda b: b["n"])
                color, ls = styles.get(broadcast, ("tab:red", ":"))
                ax.plot([b["n"] for b in rows], [b["best_coded"]["time_to_loss"] for b in rows],
                        color=color, ls=ls, marker="s", ms=4,
                        label=f"best coded PS, {broadcast} broadcast")
                if broadcast == st["broadcast"][0]:
                    iso = [b for b in rows if b["best_coded_isotropic"] is not None]
                    ax.plot([b["n"] for b in iso],
                            [b["best_coded_isotropic"]["time_to_loss"] for b in iso],
                            color=color, ls=":", lw=1.0, alpha=0.8,
                            label=f"best coded PS, {broadcast}, κ = 1 (isotropic bound)")
                    for b in rows:
                        c = b["best_coded"]
                        ax.annotate(f"{c['family']} m={c['m']} s={c['s']}",
                                    (b["n"], c["time_to_loss"]), fontsize=6, color=color,
                                    textcoords="offset points", xytext=(3, 4))
                    unc = [b for b in rows if b["best_uncoded_ps"] is not None]
                    ax.plot([b["n"] for b in unc],
                            [b["best_uncoded_ps"]["time_to_loss"] for b in unc],
                            color="tab:gray", ls=":", marker=".", label="best uncoded PS")
                cross = next((c for c in result["crossovers"] if (c["d"], c["p"],
                              c["broadcast"]) == (d, p, broadcast)), None)
                height = 0.02 + 0.07 * st["broadcast"].index(broadcast)
                for x in cross["crossovers"] if cross else []:
                    ax.axvline(x["n"], color=color, ls=ls, lw=0.8, alpha=0.7)
                    ax.text(x["n"], height, f" n≈{x['n']:.0f}", color=color, fontsize=7,
                            transform=ax.get_xaxis_transform())
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ns)
            ax.set_xticklabels([str(n) for n in ns])
            ax.set_title(f"d = {_fmt(d)}, p = {p:g}", fontsize=9)
            if i == len(ds) - 1:
                ax.set_xlabel("workers n")
            if j == 0:
                ax.set_ylabel("predicted time to the loss (s)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    cluster = result["cluster"]["name"]
    kappa = result["convergence"]["kappa"]
    stall = f", stall {st['stall']:g} s" if st.get("stall") else ""
    fig.suptitle(f"{title or 'Predicted time to the loss'} (cluster={cluster}, slowdown "
                 f"{st['slowdown']:g}x{stall}, κ = {kappa:.3g})", fontsize=10)
    fig.tight_layout(rect=(0.0, 0.06, 1.0, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: line styles of the baselines other than DDP in the figure
BASELINE_STYLES = {"backup": ("tab:orange", "-.", "backup workers (first n - s)"),
                   "local_sgd": ("tab:purple", "-", "local SGD"),
                   "hierarchical_sgd": ("tab:brown", "--", "hierarchical SGD")}


def _plot_baselines(ax: Any, best: list[dict[str, Any]]) -> None:
    """Backup workers and local / hierarchical SGD against n, and each n's winner."""
    for family, (color, ls, label) in BASELINE_STYLES.items():
        pts = [(b["n"], b["baselines"][family]["time_to_loss"]) for b in best
               if family in b["baselines"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=color, ls=ls, marker="^", ms=3, lw=1.0,
                    label=label)
    for b in best:
        win = b["winner"]
        name = win["scheme"] if win["kind"] == "code" else win["family"]
        ax.text(b["n"], 0.98, "winner: " + name, fontsize=6, rotation=90,
                ha="center", va="top", transform=ax.get_xaxis_transform(), color="dimgray")


def _fmt(d: int) -> str:
    exp = math.log10(d)
    return f"1e{exp:.0f}" if exp == int(exp) else f"{d:,}"


@hydra.main(config_path=str(CONFIG_DIR), config_name="plan", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_app(lambda: run(cfg, out_dir), "agc-plan")


def main() -> None:
    """Console-script entry point (``agc-plan``)."""
    refuse_foreign_presets("plan")  # e.g. experiment=fig3 (an analyze preset)
    _hydra_main()


if __name__ == "__main__":
    main()


__all__ = ["build_plan", "main", "plot_plan", "run"]
