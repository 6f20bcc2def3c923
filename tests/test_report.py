"""The report app on train and analyze runs: figures, tables, HTML and W&B logging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from agc_pipeline.analyze import run_analysis
from agc_pipeline.report import (
    Group,
    ReportCallback,
    Run,
    WandbOptions,
    find_runs,
    group_runs,
    main,
    make_report,
)
from agc_pipeline.train import run_training
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=4", "trainer.alpha_samples=0",
        "trainer.progress=false", "trainer.eval_every=2", "name=tiny"]
TRAIN_FIGURES = ("train_loss.png", "train_loss_vs_time.png", "loss_vs_bytes.png")


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
    assert report["runs"] == 4 and {g["label"] for g in report["groups"]} == \
        {"random_diagonal", "stack"}
    text = (tmp_path / "report.md").read_text()
    assert "| random_diagonal |" in text and "| stack |" in text
    assert "## Reproducibility" in text and "torch" in text
    for group in report["groups"]:
        finals = [json.loads((Path(p) / "summary.json").read_text())["final_train_loss"]
                  for p in group["paths"]]
        assert group["final_train_loss"][0] == pytest.approx(np.mean(finals))
        assert group["final_train_loss"][1] == pytest.approx(np.std(finals))
        assert group["total_bytes_to_ps"][0] > 0


def test_curves_average_over_seeds_and_bytes_count_earlier_iterations(train_runs: Path) -> None:
    groups = group_runs(find_runs([train_runs]))
    group = next(g for g in groups if g.label == "stack")
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
    run = find_runs([train_runs / "0"])[0]
    config = run.summary["config"] | {"trainer": {"_target_": "x.distributed.Settings"}}
    # wall_time at the end of each 0.5 s iteration; the loss is taken at its start
    rows = [r | {"wall_time": 0.5 * (r["iteration"] + 1), "iteration_time": 0.5}
            for r in run.rows]
    group = Group(run.setup(), [Run(run.path, run.summary | {"config": config}, rows)])
    assert group.time_key == "wall_time"
    times, _, _ = group.curve("train_loss", "time")
    assert times.tolist() == [0.0, 0.5, 1.0, 1.5]


def test_labels_drop_fields_the_others_already_tell_apart(train_runs: Path) -> None:
    runs = find_runs([train_runs])
    for run in runs:  # pretend the assignment's name encodes m, as fractional_n12_s{4-m}_m{m}
        m = 1 if run.summary["scheme"]["name"] == "stack" else 2
        run.summary = run.summary | {"m": m, "assignment": {"name": f"frac_m{m}"}}
    assert {g.label for g in group_runs(runs)} == {"random_diagonal, m=2", "stack, m=1"}


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
    assert sorted(r["label"] for r in report["analysis"]) == ["analyze, m=1", "analyze, m=2"]
    for name in ("error_vs_stragglers_analyze_m=1.png", "error_vs_stragglers_all.png"):
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
                               "logger": {"name": "wandb", "mode": "offline", "group": None,
                                          "project": "agc_pipeline", "entity": None}})
    ReportCallback(title="t").on_multirun_end(config)
    assert json.loads((sweep / "report.json").read_text())["wandb"]["group"] == "swp"
    images, tables = wandb_media(sweep)
    assert len(images) == 1 and len(tables) == 1 and (sweep / "report.html").is_file()
