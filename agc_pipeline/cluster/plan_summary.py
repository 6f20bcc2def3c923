"""What ``plan.json`` concludes from the planner's rows: per setting the best code on the PS,
the best scheme on the sharded runtime (``trainer=sharded``), the best baseline (DDP, backup
workers, local / hierarchical SGD) and the winner — "don't code" is a valid answer — the
crossovers in n, and the headline."""

from __future__ import annotations

import math
from typing import Any

from agc_pipeline.cluster.plan_settings import PlanSettings

__all__ = ["BASELINES", "best_per_setting", "crossovers", "headline"]

#: the families of the baselines: synchronous SGD, backup workers, local and hierarchical SGD
BASELINES = ("ddp", "backup", "local_sgd", "hierarchical_sgd")
#: the families of the uncoded parameter-server schemes (plan.families)
UNCODED_PS = ("uncoded_wait", "uncoded_ignore")


def _brief(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("scheme", "family", "runtime", "m", "s", "construction", "load",
            "normalised_error", "iterations_factor", "iteration_time", "time_to_loss")
    return {key: row.get(key) for key in keys if key in row}


def _fastest(rows: list[dict[str, Any]], key: str = "time_to_loss") -> dict[str, Any] | None:
    return min(rows, default=None, key=lambda r: r[key])


def _winner(base: dict[str, Any], *others: dict[str, Any] | None) -> dict[str, Any]:
    """The fastest to the loss of the best baseline and ``others`` (a tie: the first)."""
    winner = base
    for row in others:
        if row is not None and row["time_to_loss"] < winner["time_to_loss"]:
            winner = row
    return winner


def _sharded(here: list[dict[str, Any]], ddp: dict[str, Any],
             ps: list[dict[str, Any]]) -> dict[str, Any]:
    """The sharded runtime's part of a ``best`` entry: its fastest scheme (coded or not) and
    fastest code, and how the former compares with DDP and with the fastest PS scheme."""
    rows = [r for r in here if r.get("runtime") == "sharded"]
    top, coded = _fastest(rows), _fastest([r for r in rows if r["coded"]])
    best_ps = _fastest(ps)
    return {
        "best_sharded": _brief(top),
        "best_sharded_coded": _brief(coded),
        "sharded_speedup_vs_ddp": ddp["time_to_loss"] / top["time_to_loss"] if top else None,
        "sharded_speedup_vs_ps": (best_ps["time_to_loss"] / top["time_to_loss"]
                                  if top and best_ps else None),
    }


def _setting(here: list[dict[str, Any]], broadcast: str) -> dict[str, Any]:
    """One entry of ``best`` from the rows at one (n, d, p), for one PS broadcast (the
    sharded rows, which have none, join every broadcast's entry)."""
    ddp = next(r for r in here if r["family"] == "ddp")
    ps = [r for r in here if r.get("runtime", "ps") == "ps" and r["broadcast"] == broadcast]
    coded = _fastest([r for r in ps if r["coded"]])
    iso = _fastest([r for r in ps if r["coded"]], "time_to_loss_isotropic")
    baselines = [r for r in here if r["family"] in BASELINES and r.get("available", True)
                 and r.get("runtime") != "sharded" and r["broadcast"] in (None, broadcast)]
    base = _fastest(baselines)
    assert base is not None  # DDP is always there
    sharded = [r for r in here if r.get("runtime") == "sharded"]
    winner = _winner(base, coded, _fastest(sharded))
    return {
        "ddp_time_to_loss": ddp["time_to_loss"],
        "ddp_iteration_time": ddp["iteration_time"],
        "best_coded": _brief(coded),
        "best_uncoded_ps": _brief(_fastest([r for r in ps if r["family"] in UNCODED_PS])),
        "baselines": {r["family"]: _brief(r) for r in baselines},
        "best_baseline": _brief(base),
        "winner": {"scheme": winner["scheme"], "family": winner["family"],
                   "kind": "code" if winner["coded"] else "baseline",
                   "runtime": winner.get("runtime", "ps"),
                   "time_to_loss": winner["time_to_loss"]},
        **_sharded(here, ddp, ps),
        "speedup_vs_ddp": ddp["time_to_loss"] / coded["time_to_loss"] if coded else None,
        "speedup_vs_best_baseline": (base["time_to_loss"] / coded["time_to_loss"]
                                     if coded else None),
        "step_speedup_vs_ddp": {r["family"]: ddp["iteration_time"] / r["iteration_time"]
                                for r in baselines if r["family"] != "ddp"},
        "best_coded_isotropic": None if iso is None else {
            "scheme": iso["scheme"], "s": iso["s_isotropic"],
            "time_to_loss": iso["time_to_loss_isotropic"]},
        "speedup_vs_ddp_isotropic": (ddp["time_to_loss"] / iso["time_to_loss_isotropic"]
                                     if iso else None),
    }


def best_per_setting(rows: list[dict[str, Any]], st: PlanSettings) -> list[dict[str, Any]]:
    """Per (n, d, p, broadcast): DDP, the best code, the best uncoded PS, each baseline, the
    best baseline and the winner (fastest to the loss; a tie goes to the baseline)."""
    out = []
    for n in st.n:
        for d in st.d:
            for p in st.p:
                here = [r for r in rows if (r["n"], r["d"], r["p"]) == (n, d, p)]
                for broadcast in st.broadcast:
                    out.append({"n": n, "d": d, "p": p, "broadcast": broadcast,
                                **_setting(here, broadcast)})
    return out


def crossovers(best: list[dict[str, Any]], st: PlanSettings) -> list[dict[str, Any]]:
    """Per (d, p, broadcast): where the best coded scheme's time to the loss crosses DDP's
    as n grows (log-linear interpolation of the ratio between grid points)."""
    out = []
    for d in st.d:
        for p in st.p:
            for broadcast in st.broadcast:
                pts = sorted((b["n"], b["speedup_vs_ddp"]) for b in best
                             if (b["d"], b["p"], b["broadcast"]) == (d, p, broadcast)
                             and b["speedup_vs_ddp"] is not None)
                cross = []
                for (n0, r0), (n1, r1) in zip(pts, pts[1:], strict=False):
                    l0, l1 = math.log(r0), math.log(r1)
                    if l0 * l1 < 0:
                        x = math.log2(n0) + (math.log2(n1) - math.log2(n0)) * l0 / (l0 - l1)
                        cross.append({"n": 2.0**x, "between": [n0, n1],
                                      "coded_wins": "below" if l0 > 0 else "above"})
                wins = [n for n, r in pts if r > 1]
                out.append({"d": d, "p": p, "broadcast": broadcast, "crossovers": cross,
                            "coded_wins_at_n": wins,
                            "speedups": {str(n): r for n, r in pts}})
    return out


def _fmt_d(d: int) -> str:
    for value, unit in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if d >= value and d % value == 0:
            return f"{d // value}{unit}"
    return str(d)


def _versus_ddp(rows: list[dict[str, Any]], broadcast: str) -> str:
    wins = [b for b in rows if b["speedup_vs_ddp"] > 1]
    top = max(rows, key=lambda b: b["speedup_vs_ddp"])
    low = min(rows, key=lambda b: b["speedup_vs_ddp"])
    text = (f"{broadcast} broadcast: the best coded scheme beats DDP in {len(wins)} of "
            f"{len(rows)} (n, d, p) settings")
    if wins:
        where = sorted({(b["p"], b["n"]) for b in wins})
        text += " (p, n) ∈ {" + ", ".join(f"({p:g}, {n})" for p, n in where) + "}"
    text += (f"; best {top['speedup_vs_ddp']:.2f}x ({top['best_coded']['scheme']} s="
             f"{top['best_coded']['s']} at n={top['n']}, d={_fmt_d(top['d'])}, "
             f"p={top['p']:g}), worst {low['speedup_vs_ddp']:.2f}x (n={low['n']}, "
             f"d={_fmt_d(low['d'])}, p={low['p']:g})")
    iso = [b for b in rows if (b["speedup_vs_ddp_isotropic"] or 0) > 1]
    text += f"; with kappa = 1 (isotropic bound) in {len(iso)} of {len(rows)}"
    faster = [b for b in rows if b["best_uncoded_ps"] is not None
              and b["best_uncoded_ps"]["time_to_loss"] < b["best_coded"]["time_to_loss"]]
    if faster:
        text += (f"; the uncoded ignore-stragglers PS beats the best coded scheme in "
                 f"{len(faster)} of the {len(rows)}")
    return text


def _versus_baselines(here: list[dict[str, Any]]) -> str:
    coded = [b for b in here if b["speedup_vs_best_baseline"] is not None]
    wins = [b for b in coded if b["speedup_vs_best_baseline"] > 1]
    counts: dict[str, int] = {}
    for b in here:
        name = "a code" if b["winner"]["kind"] == "code" else b["winner"]["family"]
        if b["winner"].get("runtime") == "sharded":
            name += " (sharded)"
        counts[name] = counts.get(name, 0) + 1
    text = (f"against the best baseline (DDP, backup workers, local SGD) the best code wins "
            f"{len(wins)} of {len(here)} settings")
    if coded:
        top = max(coded, key=lambda b: b["speedup_vs_best_baseline"])
        text += (f" (at most {top['speedup_vs_best_baseline']:.2f}x, n={top['n']}, "
                 f"d={_fmt_d(top['d'])}, p={top['p']:g})")
    return text + "; winners: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _versus_sharded(here: list[dict[str, Any]]) -> str:
    """Where the sharded runtime's best scheme beats DDP and the fastest PS scheme."""
    rows = [b for b in here if b.get("sharded_speedup_vs_ddp") is not None]
    if not rows:
        return ""
    both = [b for b in rows if b["sharded_speedup_vs_ddp"] > 1
            and (b["sharded_speedup_vs_ps"] or math.inf) > 1]
    n_ddp = sum(b["sharded_speedup_vs_ddp"] > 1 for b in rows)
    n_ps = sum((b["sharded_speedup_vs_ps"] or math.inf) > 1 for b in rows)
    top = max(rows, key=lambda b: b["sharded_speedup_vs_ddp"])
    text = (f"; sharded runtime: its best scheme beats DDP in {n_ddp} and the fastest PS "
            f"scheme in {n_ps} of {len(rows)} settings, both in {len(both)}")
    if both:
        text += " (p, n, d) ∈ {" + ", ".join(
            f"({p:g}, {n}, {_fmt_d(d)})" for p, n, d in sorted(
                {(b["p"], b["n"], b["d"]) for b in both})) + "}"
    return text + (f"; best {top['sharded_speedup_vs_ddp']:.2f}x DDP "
                   f"({top['best_sharded']['scheme']} s={top['best_sharded']['s']} at "
                   f"n={top['n']}, d={_fmt_d(top['d'])}, p={top['p']:g})")


def headline(cluster: Any, best: list[dict[str, Any]], st: PlanSettings,
             kappa: float) -> str:
    """One paragraph: where the best coded scheme beats DDP and the best baseline, and who
    wins each setting."""
    parts = [f"cluster={cluster.name}, slowdown {st.slowdown:g}x"
             + (f", stall {st.stall:g} s" if st.stall else "") + f", kappa = {kappa:.3g}:"]
    for broadcast in st.broadcast:
        here = [b for b in best if b["broadcast"] == broadcast]
        rows = [b for b in here if b["speedup_vs_ddp"]]
        text = _versus_ddp(rows, broadcast) + "; " if rows else f"{broadcast} broadcast: "
        parts.append(text + _versus_baselines(here) + _versus_sharded(here) + ".")
    return " ".join(parts)
