"""The report app on train and analyze runs: figures, tables, HTML and W&B logging."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from agc_pipeline.analysis.plot import error_figure
from agc_pipeline.analyze import run_analysis
from agc_pipeline.report import ReportCallback, main, make_report
from agc_pipeline.reporting.analysis_runs import comparison_figure
from agc_pipeline.reporting.figures import loss_figure
from agc_pipeline.reporting.groups import Group, group_runs
from agc_pipeline.reporting.jobs import sweep_group
from agc_pipeline.reporting.runs import ReportError, Run, find_runs
from agc_pipeline.reporting.summary import RunSummary
from agc_pipeline.reporting.wandb_runs import WandbOptions
from agc_pipeline.train import run_training
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=4", "trainer.alpha_samples=0",
        "trainer.progress=false", "trainer.eval_every=2", "name=tiny"]
TRAIN_FIGURES = ("train_loss.png", "train_loss_vs_time.png", "loss_vs_bytes.png")
SEVEN, STACK = "Construction (7)", "Baseline construction (11)"


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 schemes x 2 seeds of a tiny training run, as a sweep dir."""
    root = tmp_path_factory.mktemp("sweep")
    for i, (scheme, seed) in enumerate([(s, seed) for s in ("random_diagonal", "stack")
                                        for seed in (0, 1)]):
        run_training(compose_config("train", [*FAST, f"scheme={scheme}", f"seed={seed}"]),
                     root / str(i))
    return root


def analysis_run(path: Path, *overrides: str) -> Path:
    cfg = compose_config("analyze", ["assignment.design=fano", "analysis.s=[1,2]",
                                     "analysis.realizations=2", "analysis.straggler_sets=5",
                                     "analysis.progress=false", *overrides])
    run_analysis(cfg, path)
    (path / ".hydra").mkdir(exist_ok=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return path


def test_train_report_figures_and_table(train_runs: Path, tmp_path: Path) -> None:
    report = make_report([train_runs], tmp_path, "tiny")
    for name in TRAIN_FIGURES:
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert report["runs"] == 4 and {g["label"] for g in report["groups"]} == {SEVEN, STACK}
    assert report["differing_keys"] == ["scheme._target_", "scheme.epsilon"]
    assert report["warnings"] == []
    text = (tmp_path / "report.md").read_text()
    assert f"| {SEVEN} |" in text and f"| {STACK} |" in text
    assert "Config keys that differ between groups: `scheme._target_`, `scheme.epsilon`." in text
    assert "## Reproducibility" in text and "torch" in text
    for group in report["groups"]:
        finals = [json.loads((Path(p) / "summary.json").read_text())["final_train_loss"]
                  for p in group["paths"]]
        assert group["final_train_loss"][0] == pytest.approx(np.mean(finals))
        assert group["final_train_loss"][1] == pytest.approx(np.std(finals))
        assert group["total_bytes_to_ps"][0] > 0


def test_curves_average_over_seeds_and_bytes_count_earlier_iterations(train_runs: Path) -> None:
    groups = group_runs(find_runs([train_runs]).train)
    group = next(g for g in groups if g.label == STACK)
    its, mean, std = group.curve("train_loss")
    losses = np.array([[r["train_loss"] for r in run.rows] for run in group.runs])
    assert its.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(mean, losses.mean(axis=0))
    np.testing.assert_allclose(std, losses.std(axis=0))
    run = group.runs[0]
    sent = np.cumsum([0] + [r["bytes_to_ps"] for r in run.rows[:-1]]) / 1e6
    np.testing.assert_allclose(list(group.series(run, "bytes").values()), sent)
    assert group.time_key == "virtual_time"
    times, _, _ = group.curve("train_loss", "time")
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)


def test_distributed_runs_are_plotted_against_wall_time(train_runs: Path) -> None:
    run = find_runs([train_runs / "0"]).train[0]
    # a runtime that measures time (summary.json "clock": "wall"), rows with a virtual clock
    # too: wall_time at the end of each 0.5 s iteration; the loss is taken at its start
    rows = [r | {"wall_time": 0.5 * (r["iteration"] + 1), "iteration_time": 0.5}
            for r in run.rows]
    group = Group(run.setup(), [Run(run.path, replace(run.summary, clock="wall"), rows)])
    assert group.time_key == "wall_time"
    times, _, _ = group.curve("train_loss", "time")
    assert times.tolist() == [0.0, 0.5, 1.0, 1.5]
    # a file written before "clock": the runtime's name tells it
    old = run.summary.to_dict() | {"runtime": "distributed"}
    del old["clock"], old["schema"]
    group = Group(run.setup(), [Run(run.path, RunSummary.from_dict(old), rows)])
    assert group.time_key == "wall_time"


def test_labels_drop_fields_the_others_already_tell_apart(train_runs: Path) -> None:
    runs = find_runs([train_runs]).train
    for run in runs:  # pretend the assignment's name encodes m, as fractional_n12_s{4-m}_m{m}
        m = 1 if run.summary.scheme["name"] == "stack" else 2
        run.summary = replace(run.summary, m=m, assignment={"name": f"frac_m{m}"})
    assert {g.label for g in group_runs(runs)} == {f"{SEVEN}, m=2", f"{STACK}, m=1"}


def test_analysis_runs_get_the_paper_figure_and_a_table(tmp_path: Path) -> None:
    run = analysis_run(tmp_path / "run")
    report = make_report([run], tmp_path / "out")
    assert report["analysis_runs"] == 1 and report["runs"] == 0
    assert (tmp_path / "out" / "error_vs_stragglers.png").stat().st_size > 10_000
    text = (tmp_path / "out" / "report.md").read_text()
    results = json.loads((run / "results.json").read_text())
    assert "| 1 | 0.143 |" in text and f"{results['points'][0]['empirical_mean']:.4g}" in text


def test_several_analysis_runs_are_labelled_by_their_overrides(tmp_path: Path) -> None:
    for m in (1, 2):
        analysis_run(tmp_path / "sweep" / str(m - 1), f"m={m}", "analysis.plot=false")
    report = make_report([tmp_path / "sweep"], tmp_path / "out", "m sweep")
    assert sorted(r["label"] for r in report["analysis"]) == [f"{SEVEN}, m = 1",
                                                              f"{SEVEN}, m = 2"]
    for name in ("error_vs_stragglers_Construction_7_m_=_1.png",
                 "error_vs_stragglers_all.png"):
        assert (tmp_path / "out" / name).is_file(), name


def test_cli_writes_html_and_mixes_train_and_analyze_runs(train_runs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = analysis_run(tmp_path / "analysis")
    assert main([str(train_runs), str(run), "--out", str(tmp_path / "out"), "--html",
                 "--yscale", "linear"]) == 0
    assert "4 train runs in 2 groups, 1 analyze runs" in capsys.readouterr().out
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    for name in (*TRAIN_FIGURES, "error_vs_stragglers.png"):
        assert f'<img src="{name}"' in page


def wandb_media(folder: Path) -> tuple[list[Path], list[Path]]:
    runs = list(folder.glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    media = runs[0] / "files" / "media"
    return sorted(media.glob("images/*.png")), sorted(media.glob("table/*.table.json"))


def test_wandb_report_logs_figures_and_tables_in_the_runs_group(train_runs: Path,
                                                                tmp_path: Path) -> None:
    report = make_report([train_runs], tmp_path, wandb=WandbOptions())
    assert report["wandb"]["group"] == "tiny" and report["wandb"]["mode"] == "offline"
    images, tables = wandb_media(tmp_path)
    assert len(images) == len(TRAIN_FIGURES) and len(tables) == 1


def test_report_callback_logs_to_wandb_when_the_sweep_does(train_runs: Path,
                                                           tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    analysis_run(sweep / "0")
    config = OmegaConf.create({"name": "swp", "hydra": {"sweep": {"dir": str(sweep)}},
                               "logger": {"_target_": "agc_pipeline.reporting.sinks.WandbLogger",
                                          "mode": "offline", "group": None,
                                          "project": "agc_pipeline", "entity": None}})
    ReportCallback(title="t").on_multirun_end(config)
    report = json.loads((sweep / "report.json").read_text())
    # the group of the sweep's jobs: <name>-<sweep dir's stamp> ("sweep" + a hash of its path)
    assert report["wandb"]["group"] == sweep_group("swp", sweep)
    assert re.fullmatch(r"swp-sweep-[0-9a-f]{6}", report["wandb"]["group"])
    assert report["wandb_report"]["groups"] == [report["wandb"]["group"]]
    assert (sweep / "wandb_report.json").is_file()
    images, tables = wandb_media(sweep)
    assert len(images) == 1 and len(tables) == 1 and (sweep / "report.html").is_file()


# ------------------------------------------------------------- replicates (issue 10, point 6)


def tiny_run(path: Path, *overrides: str) -> Path:
    run_training(compose_config("train", [*FAST, *overrides]), path)
    return path


def test_only_replicates_are_averaged(train_runs: Path, tmp_path: Path) -> None:
    """A 2-iteration run with seed 0 is not a replicate of the 4-iteration ones, and a copy of
    a run (same config, same seed) is never averaged with it."""
    root = tmp_path / "runs"
    shutil.copytree(train_runs, root)
    tiny_run(root / "short", "scheme=stack", "seed=0", "trainer.iterations=2")
    shutil.copytree(root / "2", root / "again")  # stack, seed 0, the same config
    report = make_report([root], tmp_path / "out")
    groups = {g["label"]: sorted(Path(p).name for p in g["paths"]) for g in report["groups"]}
    assert groups == {SEVEN: ["0", "1"], f"{STACK}, trainer.iterations=2": ["short"],
                      f"{STACK}, trainer.iterations=4 (copy 1)": ["2", "3"],
                      f"{STACK}, trainer.iterations=4 (copy 2)": ["again"]}
    for group in report["groups"]:
        seeds = [json.loads((Path(p) / "summary.json").read_text())["seed"]
                 for p in group["paths"]]
        assert len(seeds) == len(set(seeds)), group  # never two runs with one seed
        iterations = {json.loads((Path(p) / "summary.json").read_text())["iterations"]
                      for p in group["paths"]}
        assert len(iterations) == 1, group
    short = next(g for g in report["groups"] if "trainer.iterations=2" in g["label"])
    assert short["runs"] == 1 and short["final_train_loss"][1] == 0.0
    assert "trainer.iterations" in report["differing_keys"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "`trainer.iterations`" in text and "`scheme._target_`" in text


def test_seed_keys_and_fixed_seeds(train_runs: Path) -> None:
    """model.seed follows the seed (``${seed}``); a fixed seed that differs splits groups."""
    runs = find_runs([train_runs]).train
    assert len(group_runs(runs)) == 2
    stack = [r for r in runs if r.summary.scheme["name"] == "stack"]
    config = stack[1].summary.config
    assert config is not None
    changed = config | {"straggler": config["straggler"] | {"q": 0.5}}
    stack[1].summary = replace(stack[1].summary, config=changed)
    labels = sorted(g.label for g in group_runs(stack))
    assert labels == [f"{STACK}, straggler.q=0.25", f"{STACK}, straggler.q=0.5"]


# ------------------------------------------------------------- damaged inputs (point 8, 13)


def test_damaged_inputs_are_named_per_file(train_runs: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    shutil.copytree(train_runs, root)
    metrics = root / "0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])  # truncated last line
    (root / "1" / "metrics.jsonl").write_text("")  # empty
    (root / "2" / "metrics.jsonl").write_text("garbage\n[1, 2]\n")  # garbage
    analysis = analysis_run(tmp_path / "a")
    (analysis / "results.json").write_text((analysis / "results.json").read_text()[:500])
    shutil.copytree(root / "3", root / "4")
    (root / "4" / "summary.json").write_text('{"final_train_loss": 0.')
    report = make_report([root, analysis], tmp_path / "out")
    warnings = report["warnings"]
    named = {Path(w.split(": ")[0]) for w in warnings}
    assert named == {metrics, root / "1" / "metrics.jsonl", root / "2" / "metrics.jsonl",
                     analysis / "results.json", root / "4" / "summary.json"}, warnings
    assert any("truncated" in w for w in warnings if w.startswith(str(metrics)))
    assert report["runs"] == 4 and report["analysis_runs"] == 0
    assert "damaged inputs left out" in (tmp_path / "out" / "report.md").read_text()
    assert main([str(root), str(analysis), "--out", str(tmp_path / "cli")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(line.startswith("agc-report: warning: ") for line in err)
    assert main([str(root), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strict" in err[0] and str(metrics) in err[0]
    assert not (tmp_path / "strict").exists()


def test_only_damaged_inputs_name_the_files(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = analysis_run(tmp_path / "a")
    (run / "results.json").write_text("{")
    (run / "summary.json").write_text("not json")
    with pytest.raises(ReportError, match="results.json: not valid JSON"):
        make_report([run])
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "summary.json").write_text("")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad / 'summary.json'}: empty" in err[0]


def test_out_that_is_a_file_is_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = analysis_run(tmp_path / "a")
    out = tmp_path / "taken"
    out.write_text("x")
    assert main([str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an existing file" in err[0] and "Traceback" not in err[0]


# ------------------------------------------------------------- legends (point 17)


def _legend_clear_of_axes(fig) -> bool:  # type: ignore[no-untyped-def]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    return all(not leg.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
               for leg in legends for ax in fig.axes if ax.get_visible())


def test_combined_figures_keep_their_legends_off_the_curves(train_runs: Path,
                                                            tmp_path: Path) -> None:
    groups = group_runs(find_runs([train_runs]).train)
    fig = loss_figure(groups, "iteration", "Fig. 6")
    assert _legend_clear_of_axes(fig)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [f"{STACK} (2 runs)", f"{SEVEN} (2 runs)"]
    for m in (1, 2):
        analysis_run(tmp_path / "sweep" / str(m), f"m={m}", "analysis.plot=false")
    found = find_runs([tmp_path / "sweep"])
    fig = comparison_figure(found.analysis, "m sweep")
    assert _legend_clear_of_axes(fig)
    assert f"Emp. Avg. Err., {SEVEN}, m = 1" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_error_figure_legends_read_as_the_papers(tmp_path: Path) -> None:
    cfg = compose_config("analyze", ["experiment=fig5", "analysis.s=[0,4]",
                                     "analysis.realizations=1", "analysis.straggler_sets=3",
                                     "analysis.progress=false", "analysis.plot=false"])
    results = run_analysis(cfg, tmp_path)
    labels = error_figure(results).axes[0].get_legend_handles_labels()[1]
    assert "Emp. Avg. Err., (19), Gaussian" in labels
    assert "Emp. Avg. Err., (19), ±1" in labels
    assert "Upp. Bd. (20) (max over sets), (19), ±1" in labels
    assert f"Err., {STACK}" in labels and "Low. Bd. (21)" in labels
    assert not any("+-1" in t or "hadamard" in t or "stack" in t for t in labels), labels


@pytest.mark.parametrize("results, says", [
    ({"points": 5}, "'points' is not a list"),
    ({"points": [3]}, "point 0 is not an object"),
    ({"points": [{"s": 1}]}, "'straggler_fraction' must be a number"),
    ({"points": [{"s": "x", "straggler_fraction": 0.1}]}, "'s' must be an integer"),
    ({"points": [{"s": 1, "straggler_fraction": 0.1, "empirical_mean": 0.2,
                  "empirical_max": 0.3, "upper_bound": "big"}]}, "'upper_bound' must be"),
    ({"points": [{"s": 1, "straggler_fraction": 0.1, "empirical_mean": 0.2,
                  "empirical_max": 0.3, "bounds": [1]}]}, "'bounds' must be an object"),
])
def test_a_results_file_of_the_wrong_shape_is_named_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], results: dict, says: str) -> None:
    """Issue 20: a results.json of the wrong shape crashed the report with a KeyError or
    TypeError; it is a damaged input, named with what is wrong."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'results.json'}: " in err and says in err, err
