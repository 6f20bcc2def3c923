"""Sweep presets, launchers, skipping finished jobs on re-run, and provenance in outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.analyze import run_analysis
from agc_pipeline.build import validate
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.reporting import provenance
from agc_pipeline.reporting import sweeps as sweeps_module
from agc_pipeline.reporting.sweeps import finished_run, free_cores, limit_threads
from agc_pipeline.train import build_trainer, run_training
from tests.conftest import ROOT, compose_config
from tests.data_fixtures import fake_cifar10

#: the real reader of /proc/loadavg (tests/conftest.py stubs it for steady thread counts)
RUNNING_OTHERS = sweeps_module.running_others
#: a train run's summary.json as written before the schema (tests/data/README.md)
OLD_SUMMARY = ROOT / "tests" / "data" / "summary_pre_schema.json"

SWEEP_PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                       if "sweeper:" in p.read_text())
#: expected number of jobs of each sweep preset (the Cartesian product of its params)
JOBS = {"compare_codes": 32, "compare_codes_mnist": 160, "communication": 24,
        "fig6_bibd7": 10, "fig6_coset27": 10, "mnist_cnn": 9, "text_gpt": 4,
        "cifar10_resnet": 9, "arena": 200, "arena_gpt": 10}
#: sweeps whose every value is validated without building (tests/test_arena.py trains them)
VALIDATE_ONLY = ("arena", "arena_gpt")
SHRINK = ["dataset.train_size=120", "dataset.test_size=20", "trainer.alpha_samples=0"]


def compose_with_hydra(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def sweep_values(params: DictConfig) -> dict[str, list[str]]:
    """key -> the override strings of each swept value."""
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        out[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
    return out


def test_every_sweep_preset_is_listed() -> None:
    assert set(SWEEP_PRESETS) == set(JOBS)


@pytest.mark.parametrize("preset", SWEEP_PRESETS)
def test_sweep_presets_compose_and_every_swept_value_builds(preset: str,
                                                           tmp_path: Path) -> None:
    data = ([f"dataset.root={fake_cifar10(tmp_path, per_batch=100, n_test=30)}"]
            if preset == "cifar10_resnet" else [])
    cfg = compose_with_hydra("train", [f"experiment={preset}"])
    values = sweep_values(cfg.hydra.sweeper.params)
    jobs = 1
    for options in values.values():
        jobs *= len(options)
    assert jobs == JOBS[preset]
    assert cfg.hydra.callbacks.report._target_ == "agc_pipeline.report.ReportCallback"
    for options in values.values():  # each value once, the other keys at their defaults
        for override in options:
            shrink = [o for o in SHRINK if preset not in VALIDATE_ONLY  # DDP: no α
                      or not o.startswith("trainer.alpha")]
            cfg = compose_config("train", [f"experiment={preset}", override, *shrink, *data])
            if preset in VALIDATE_ONLY:
                assert validate(cfg).scheme.n >= 7, override
                continue
            trainer = build_trainer(cfg)
            assert trainer.spec.scheme.n >= 7, override


def test_compare_codes_mnist_covers_every_scheme_q_and_seed() -> None:
    cfg = compose_with_hydra("train", ["experiment=compare_codes_mnist"])
    values = sweep_values(cfg.hydra.sweeper.params)
    assert values["straggler.q"] == [f"straggler.q={q}" for q in ("0", "0.1", "0.25", "0.4")]
    assert len(values["seed"]) == 5
    schemes = {build_trainer(compose_config("train", ["experiment=compare_codes_mnist", code,
                                                      *SHRINK])).spec.scheme.name
               for code in values["code"]}
    assert schemes == {p.stem for p in (CONFIG_DIR / "scheme").glob("*.yaml")}
    assert cfg.dataset._target_.endswith("mnist")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


def test_communication_study_keeps_the_load_fixed() -> None:
    cfg = compose_with_hydra("train", ["experiment=communication"])
    values = sweep_values(cfg.hydra.sweeper.params)
    ms = []
    for comm in values["comm"]:
        for scheme in values["scheme"]:
            trainer = build_trainer(compose_config("train", ["experiment=communication", comm,
                                                             scheme, *SHRINK]))
            built = trainer.spec.scheme
            loads = built.assignment.matrix.sum(axis=0)
            assert set(loads.tolist()) == {4}  # every worker computes 4 subset gradients
            ms.append(built.m)
            if built.name == "ce_frc":
                assert built.tolerates() == 4 - built.m
    assert sorted(set(ms)) == [1, 2, 3, 4]


def test_local_launcher_is_joblib_with_two_jobs() -> None:
    cfg = compose_with_hydra("train", ["hydra/launcher=local"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_config() -> None:
    data = OmegaConf.load(CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml")
    assert list(data.defaults) == ["submitit_slurm"] and data.timeout_min > 0
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    cfg = compose_with_hydra("train", ["experiment=compare_codes_mnist", "hydra/launcher=slurm"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


# ------------------------------------------------------------------------------------------
# skipping finished jobs


def run_cli(app: str, *args: str) -> subprocess.CompletedProcess[str]:
    # AGC_SKIP_FINISHED=0 was once a switch that bypassed the config: it must do nothing
    return subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "AGC_SKIP_FINISHED": "0"})


TRAIN_SWEEP = ["-m", "dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
               "model=logistic", "trainer.iterations=3", "trainer.alpha_samples=0",
               "trainer.progress=false", "seed=0,1"]


def test_rerun_sweep_skips_finished_jobs_and_reruns_the_rest(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    first = run_cli("train", *TRAIN_SWEEP, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-2000:]
    summaries = {j: (sweep / str(j) / "summary.json").read_text() for j in (0, 1)}
    assert "skipping job" not in first.stdout + first.stderr
    # job 1 was interrupted: only job 0 is complete
    broken = json.loads(summaries[1]) | {"status": "interrupted"}
    (sweep / "1" / "summary.json").write_text(json.dumps(broken))
    second = run_cli("train", *TRAIN_SWEEP, f"hydra.sweep.dir={sweep}")
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert log.count("skipping job") == 1 and f"{sweep / '0'}" in log
    assert (sweep / "0" / "summary.json").read_text() == summaries[0]  # untouched
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    # a changed config reruns every job; the report covers the sweep again
    third = run_cli("train", *TRAIN_SWEEP, "trainer.lr=0.3", f"hydra.sweep.dir={sweep}")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "skipping job" not in third.stdout + third.stderr
    for job in (0, 1):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["config"]["trainer"]["lr"] == 0.3 and summary["status"] == "completed"
    # trainer.skip_finished=false: every job again, each replacing its run
    fourth = run_cli("train", *TRAIN_SWEEP, "trainer.lr=0.3", "trainer.skip_finished=false",
                     f"hydra.sweep.dir={sweep}")
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "skipping job" not in fourth.stdout + fourth.stderr
    assert len(rows := (sweep / "0" / "metrics.jsonl").read_text().splitlines()) == 3, rows


def test_rerun_analyze_sweep_under_joblib_skips_finished_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "assignment.design=fano", "analysis.s=[1,2]", "analysis.realizations=2",
            "analysis.straggler_sets=5", "analysis.progress=false", "analysis.plot=false",
            "hydra/launcher=local", "m=1,2", f"hydra.sweep.dir={sweep}"]
    assert run_cli("analyze", *args).returncode == 0
    before = (sweep / "1" / "summary.json").read_text()
    again = run_cli("analyze", *args[:-2], "m=1,3", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("skipping job") == 1  # m=1 kept, m=3 is new
    after = json.loads((sweep / "1" / "summary.json").read_text())
    assert after["m"] == 3 and (sweep / "1" / "summary.json").read_text() != before
    assert (sweep / "report.md").is_file()  # the report callback of the primary config


def test_finished_run_needs_complete_status_outputs_iterations_and_same_config(
        tmp_path: Path) -> None:
    config = {"seed": 0, "trainer": {"iterations": 3, "progress": False}}
    summary = json.loads(OLD_SUMMARY.read_text()) | {"status": "completed", "iterations": 3,
                                                      "config": config}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    outputs = ("metrics.jsonl",)
    assert finished_run(tmp_path, config, outputs)
    # progress bars do not change results
    assert finished_run(tmp_path, config | {"trainer": {"iterations": 3, "progress": True}},
                        outputs)
    assert not finished_run(tmp_path, config | {"seed": 1}, outputs)
    assert not finished_run(tmp_path, config | {"trainer": {"iterations": 4}}, outputs)
    assert not finished_run(tmp_path, config, ("metrics.jsonl", "checkpoint.pt"))
    (tmp_path / "summary.json").write_text(json.dumps(summary | {"iterations": 2}))
    assert not finished_run(tmp_path, config, outputs)
    (tmp_path / "summary.json").write_text("{not json")
    assert not finished_run(tmp_path, config, outputs)


def test_a_summary_without_a_required_field_is_named_and_its_job_runs_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {"seed": 0}
    summary = {"status": "completed", "iterations": 3, "config": config}  # no results
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with caplog.at_level("WARNING", logger="agc_pipeline.reporting.sweeps"):
        assert finished_run(tmp_path, config, ("metrics.jsonl",)) is None
    (record,) = caplog.records
    assert str(tmp_path / "summary.json") in record.getMessage()
    assert "no final_train_loss" in record.getMessage()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\"completed\"", "\x00\xff"])
def test_a_corrupt_summary_is_named_and_its_job_runs_again(
        content: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "summary.json").write_text(content, encoding="latin-1")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with caplog.at_level("WARNING", logger="agc_pipeline.reporting.sweeps"):
        assert finished_run(tmp_path, {"seed": 0}, ("metrics.jsonl",)) is None
    (record,) = caplog.records
    assert str(tmp_path / "summary.json") in record.getMessage()
    assert "running its job again" in record.getMessage()


def test_limit_threads_from_the_config_not_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("AGC_TORCH_THREADS", "1")  # a former switch: ignored
    try:
        free = free_cores()  # a single run: the cores free now
        assert 1 <= free <= len(os.sched_getaffinity(0))
        assert limit_threads(compose_config("train")) in (free, free_cores())
        assert torch.get_num_threads() == limit_threads(compose_config("train"))
        assert limit_threads(compose_config("train", ["trainer.threads=1"])) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert limit_threads() is None


def test_only_the_workers_startup_timeout_is_an_environment_variable() -> None:
    """Switches that bypass the config are gone; a torchrun worker still needs its rendezvous
    timeout before it has the config (AGC_STARTUP_TIMEOUT_S). (repro.py only sets the
    environment of the processes it starts.)"""
    found = set()
    for path in (ROOT / "agc_pipeline").rglob("*.py"):
        if path.name != "repro.py":
            found |= set(re.findall(r"AGC_[A-Z_]+", path.read_text()))
    assert found == {"AGC_STARTUP_TIMEOUT_S"}


# ------------------------------------------------------------------------------------------
# provenance

LIBRARIES = {"agc_pipeline", "python", "torch", "numpy", "scipy", "hydra", "wandb"}


def check_record(record: dict) -> None:
    assert LIBRARIES <= set(record["versions"]) and record["versions"]["torch"]
    prov = record["provenance"]
    assert prov["version"] == record["versions"]["agc_pipeline"]
    assert {"git", "hostname", "argv", "platform"} <= set(prov)
    if (ROOT / ".git").exists():
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)


def test_train_summary_records_what_reproduces_it(tmp_path: Path) -> None:
    cfg = compose_config("train", ["dataset=synthetic_logistic", "dataset.n_samples=140",
                                   "model=logistic", "trainer.iterations=2",
                                   "trainer.alpha_samples=0", "trainer.progress=false",
                                   "seed=3"])
    run_training(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    check_record(summary)
    assert summary["seed"] == 3 and summary["config"]["seed"] == 3


def test_analyze_results_and_summary_record_what_reproduces_it(tmp_path: Path) -> None:
    cfg = compose_config("analyze", ["assignment.design=fano", "analysis.s=[1]",
                                     "analysis.realizations=2", "analysis.straggler_sets=4",
                                     "analysis.plot=false", "analysis.progress=false"])
    run_analysis(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    check_record(results)
    check_record(summary)
    assert summary["status"] == "completed" and summary["app"] == "analyze"
    assert summary["config"] == results["config"] and summary["seed"] == 0


def test_wandb_config_carries_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    seen = {}

    class FakeRun:
        summary: dict = {}
        id, project, entity, group, name, job_type = "x", "p", None, "g", None, "train"

        def finish(self) -> None:
            pass

    def fake_init(**kwargs: object) -> FakeRun:
        seen.update(kwargs)
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    from agc_pipeline.reporting.sinks import WandbSink

    WandbSink(tmp_path, {"seed": 1}, project="p", group="g", job_type="train",
              keys={"code": "stack"}).close()
    assert seen["config"]["cfg"]["seed"] == 1 and seen["config"]["code"] == "stack"
    check_record(seen["config"])


def test_git_state_without_git_or_outside_a_checkout(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    uncached = provenance.git_state.__wrapped__
    assert uncached(tmp_path) is None  # not a checkout
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(provenance.shutil, "which", lambda name: None)
    assert uncached(tmp_path) is None  # git not installed


def test_free_cores_do_not_count_a_job_that_has_ended(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-minute load average lags: right after a job, an idle machine still shows load
    ~1. Only processes running now (/proc/loadavg's running count) take cores."""
    monkeypatch.setattr(sweeps_module, "running_others", RUNNING_OTHERS)  # conftest stubs it
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 1.0, 1.0))
    idle, busy = tmp_path / "idle", tmp_path / "busy"
    idle.write_text(f"{cores}.00 1.00 1.00 1/120 999\n")  # only this process runs
    busy.write_text(f"{cores}.00 1.00 1.00 {cores + 1}/120 999\n")  # every core taken
    assert free_cores(str(idle)) == cores
    assert free_cores(str(busy)) == 1
    assert free_cores(str(tmp_path / "missing")) == 1  # the load average alone
