"""The simulated trainer: straggler models, exact steps, skips, divergence, sinks, resume,
reproducibility and bad configurations (in process; the CLI is in test_train_cli.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.loop import TrainingInterrupted, advance
from agc_pipeline.training.simulated import SimulatedRuntime
from agc_pipeline.training.state import StepResult
from tests.conftest import compose_config

#: a small, fast problem: 6-feature 3-class logistic data, the Fano plane, m = 2
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=6",
        "trainer.progress=false", "trainer.alpha_samples=20", "trainer.eval_every=3",
        "trainer.checkpoint_every=0", "trainer.lr=0.5"]
ROW_KEYS = {"iteration", "train_loss", "grad_error", "survivors", "bytes_to_ps",
            "total_bytes_to_ps", "virtual_time", "iteration_time", "decode_condition",
            "approx_error", "skipped"}


def cfg_for(*overrides: str):  # noqa: ANN201 - DictConfig
    return compose_config("train", [*FAST, *overrides])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def params(trainer_or_dir: SimulatedRuntime | Path) -> list[torch.Tensor]:
    if isinstance(trainer_or_dir, Path):
        return list(load_checkpoint(trainer_or_dir / "checkpoint.pt")["model"].values())
    return [p.detach().clone() for p in trainer_or_dir.model.parameters()]


# ------------------------------------------------------------------------------------------
# straggler models


STRAGGLERS = {
    "none": (["straggler=none"], lambda s, n: s == n),
    "bernoulli": (["straggler=bernoulli", "straggler.q=0.3"], lambda s, n: 0 <= s <= n),
    "fixed": (["straggler=fixed", "straggler.s=2"], lambda s, n: s == n - 2),
    "adversarial": (["straggler=adversarial", "straggler.s=2"], lambda s, n: s == n - 2),
    "adversarial_greedy": (["straggler=adversarial", "straggler.s=2",
                            "straggler.method=greedy"], lambda s, n: s == n - 2),
    "delay_first": (["straggler=delay", "straggler.s=3"], lambda s, n: s == n - 3),
    "delay_deadline": (["straggler=delay", "straggler.wait_for=deadline",
                        "straggler.deadline=2.0"], lambda s, n: 0 <= s <= n),
}


@pytest.mark.parametrize("name", sorted(STRAGGLERS))
def test_each_straggler_model_trains(name: str, tmp_path: Path) -> None:
    overrides, survivors_ok = STRAGGLERS[name]
    summary = run_training(cfg_for(*overrides), tmp_path)
    out = rows(tmp_path)
    assert [r["iteration"] for r in out] == list(range(6))
    assert all(ROW_KEYS <= set(r) for r in out)
    assert all(survivors_ok(r["survivors"], 7) for r in out)
    assert all(r["bytes_to_ps"] == r["survivors"] * summary["message_length"] * 4 for r in out)
    times = [r["virtual_time"] for r in out]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert summary["status"] == "completed" and summary["iterations"] == 6
    assert np.isfinite(summary["final_train_loss"]) and summary["test_accuracy"] is not None
    if name == "delay_first":  # the PS waits for the (n − s)-th arrival
        assert all(r["iteration_time"] > 1.0 for r in out)


def test_trace_delay_model(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    np.savetxt(trace, np.tile(np.arange(1.0, 8.0), (3, 1)), delimiter=",")
    run_training(cfg_for("straggler=delay", "straggler.s=2", f"straggler.trace={trace}"),
                 tmp_path / "run")
    out = rows(tmp_path / "run")
    assert all(r["survivors"] == 5 for r in out)
    assert out[0]["iteration_time"] == pytest.approx(5.0, abs=1e-3)  # 5th arrival at t = 5


def test_wait_for_all_uses_every_worker_and_waits_for_the_slowest(tmp_path: Path) -> None:
    run_training(cfg_for("straggler=bernoulli", "straggler.q=0.5", "trainer.wait_for_all=true",
                         "trainer.straggler_slowdown=3.0"), tmp_path)
    out = rows(tmp_path)
    assert all(r["survivors"] == 7 for r in out)
    # with q = 0.5 some worker straggles in these iterations: the PS waits 3 × compute time
    assert max(r["iteration_time"] for r in out) == pytest.approx(3.0, abs=1e-3)


# ------------------------------------------------------------------------------------------
# the coded step inside the trainer


@pytest.mark.parametrize("code,s", [("frc", 2), ("crc", 2), ("ce_frc", 1),
                                    ("biregular_hadamard", 0)])
def test_exact_codes_reproduce_the_plain_full_batch_step(code: str, s: int) -> None:
    """Under any s admissible stragglers the coded step equals plain SGD on the mean loss."""
    straggler = ["straggler=fixed", f"straggler.s={s}"] if s else ["straggler=none"]
    cfg = cfg_for(f"code={code}", *straggler, "dataset.n_samples=360", "trainer.lr=0.3")
    trainer = build_trainer(cfg)
    plain = type(trainer.model)(input_dim=6, num_classes=3, seed=int(cfg.seed))
    plain.load_state_dict(trainer.model.state_dict())
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.3)
    x = trainer.workload.x.reshape(-1, 6)
    y = trainer.workload.y.reshape(-1)
    for _ in range(4):
        row = advance(trainer)
        optimizer.zero_grad()
        (plain.loss_sum(plain(x), y) / x.shape[0]).backward()
        optimizer.step()
        assert row["grad_error"] < 1e-9 and row["approx_error"] < 1e-9
        for p, q in zip(trainer.model.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_materialized_messages_give_the_same_run(tmp_path: Path) -> None:
    direct = run_training(cfg_for(), tmp_path / "direct")
    messages = run_training(cfg_for("trainer.materialize_messages=true"), tmp_path / "msgs")
    assert messages["final_train_loss"] == pytest.approx(direct["final_train_loss"], rel=1e-6)


def test_rescale_divides_by_alpha(tmp_path: Path) -> None:
    summary = run_training(cfg_for("decoder.rescale=true", "trainer.alpha_samples=200"),
                           tmp_path)
    assert summary["rescaled"] and 0.3 < summary["alpha"]["value"] < 1.0


# ------------------------------------------------------------------------------------------
# faults


def test_iterations_without_survivors_skip_the_update(tmp_path: Path) -> None:
    # every worker needs ≥ 1 time unit, the deadline is 0.5: nobody ever arrives
    cfg = cfg_for("straggler=delay", "straggler.wait_for=deadline", "straggler.deadline=0.5",
                  "trainer.log_every=4")
    trainer = build_trainer(cfg)
    before = params(trainer)
    summary = run_training(cfg, tmp_path)
    out = rows(tmp_path)
    assert [r["iteration"] for r in out] == list(range(6))  # skipped rows always logged
    assert all(r["skipped"] and r["survivors"] == 0 and r["grad_error"] == 1.0 for r in out)
    assert summary["skipped_iterations"] == 6 and summary["total_bytes_to_ps"] == 0
    for p, q in zip(before, params(tmp_path), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("grad_error", [True, False])
def test_nan_gradient_stops_with_a_checkpoint(tmp_path: Path, grad_error: bool) -> None:
    """With grad_error off the gradient is not scanned each step: the optimizer's guard
    catches the NaN/Inf step (state untouched) and the error names it."""
    cfg = compose_config("train", ["dataset=synthetic_linear", "dataset.n_samples=100",
                                   "model=linear", "trainer.lr=1e12", "trainer.iterations=50",
                                   "trainer.progress=false", "trainer.alpha_samples=0",
                                   "straggler=none", f"trainer.grad_error={grad_error}"])
    with pytest.raises(TrainingDiverged, match="NaN/Inf"):
        run_training(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert 0 < state["iteration"] < 50
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["iterations"] == state["iteration"]
    assert len(rows(tmp_path)) == state["iteration"]


# ------------------------------------------------------------------------------------------
# sinks, reproducibility, resume


def test_jsonl_rows_are_complete_and_log_every_is_respected(tmp_path: Path) -> None:
    run_training(cfg_for("trainer.iterations=8", "trainer.log_every=3"), tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines]
    assert [r["iteration"] for r in out] == [0, 3, 6, 7]
    assert "test_accuracy" in out[0] and "test_accuracy" in out[2]  # eval_every = 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_train_loss", "test_accuracy", "iterations", "seconds", "alpha",
                "total_bytes_to_ps", "mean_survivors", "virtual_time", "versions", "config",
                "scheme", "assignment"):
        assert key in summary


def test_wandb_offline_run_file(tmp_path: Path) -> None:
    run_training(cfg_for("logger=wandb", "trainer.iterations=2"), tmp_path)
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_same_seed_gives_bit_identical_metrics(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path / "a")
    run_training(cfg_for(), tmp_path / "b")
    run_training(cfg_for("seed=1"), tmp_path / "c")
    a = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert a == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert a != (tmp_path / "c" / "metrics.jsonl").read_text()


RESUME = ["trainer.iterations=10", "optimizer.momentum=0.9", "straggler.q=0.3"]


def test_interrupted_run_resumes_bit_identically(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_training(cfg_for(*RESUME), tmp_path / "full")

    original = SimulatedRuntime.step

    def step_then_stop(self: SimulatedRuntime, evaluate: bool = False) -> StepResult:
        result = original(self, evaluate)
        if self.state.iteration == 3:  # as `kill -TERM`: stop at the end of this iteration
            # the installed handler, called as a SIGTERM would (a real signal to this process
            # would end the whole test session if no handler were installed)
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler), "no SIGTERM handler during the run"
            handler(signal.SIGTERM, None)
        return result

    monkeypatch.setattr(SimulatedRuntime, "step", step_then_stop)
    with pytest.raises(TrainingInterrupted):
        run_training(cfg_for(*RESUME), tmp_path / "cut")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["iteration"] == 4
    assert len(rows(tmp_path / "cut")) == 4

    run_training(cfg_for(*RESUME, "trainer.resume=true"), tmp_path / "cut")
    for p, q in zip(params(tmp_path / "full"), params(tmp_path / "cut"), strict=True):
        assert torch.equal(p, q)
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")


def test_resume_after_a_kill_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    """A killed run: rows written after the last checkpoint and a half line are discarded."""
    run_training(cfg_for(*RESUME, "trainer.iterations=6"), tmp_path / "cut")
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"iteration": 6, "train_loss": 0.0}) + "\n")
        fh.write('{"iteration": 7, "train_lo')
    run_training(cfg_for(*RESUME, "trainer.resume=true"), tmp_path / "cut")
    run_training(cfg_for(*RESUME), tmp_path / "full")
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")
    for p, q in zip(params(tmp_path / "full"), params(tmp_path / "cut"), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path)
    with pytest.raises(ConfigError, match="trainer.lr"):
        run_training(cfg_for("trainer.resume=true", "trainer.lr=0.1"), tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match="cannot continue"):
        run_training(cfg_for("trainer.resume=true"), tmp_path)
    # nothing to continue (e.g. a sweep job that never started): a fresh run
    assert run_training(cfg_for("trainer.resume=true"), tmp_path / "new")["iterations"] == 6


# ------------------------------------------------------------------------------------------
# impossible configurations fail at start


BAD = {
    "coset m mismatch": (["assignment=coset", "assignment.k=5", "assignment.delta=2",
                          "assignment.m=3"], "coset graph was built for m = 3"),
    "k > samples": (["dataset.n_samples=10", "dataset.test_fraction=0.5"],
                    "k = 7 data subsets"),
    "q = 1": (["straggler.q=1.0"], r"straggler.q must lie in \[0, 1\)"),
    "q < 0": (["straggler.q=-0.1"], r"straggler.q must lie in \[0, 1\)"),
    # booleans are not numbers (YAML would read false as 0 and true as 1)
    "q = false": (["straggler.q=false"], r"^straggler.q must lie in \[0, 1\) \(got False\)$"),
    "s = true": (["straggler=fixed", "straggler.s=true"],
                 r"^straggler.s must be a non-negative integer \(got True\)$"),
    "compute_time = true": (["straggler.compute_time=true"],
                            r"^straggler.compute_time must be a finite number \(got True\)$"),
    "s >= n": (["straggler=fixed", "straggler.s=7"], "0 ≤ s < n"),
    "delay s >= n": (["straggler=delay", "straggler.s=9"], "0 ≤ s < n"),
    "hadamard n != mk": (["scheme=hadamard_nullspace"], "n = m·k"),
    "lr <= 0": (["trainer.lr=0"], "trainer.lr must be > 0"),
    "iterations": (["trainer.iterations=0"], "trainer.iterations"),
    "unknown trainer key": (["+trainer.foo=1"], "trainer"),
    "model vs data": (["model=linear"], "regression model"),
    "input_dim mismatch": (["model.input_dim=5"], "model.input_dim=5 does not match"),
    "rescale without alpha": (["decoder.rescale=true", "trainer.alpha_samples=0"],
                              "alpha_samples"),
    "cuda": (["trainer.device=cuda:0"], "CUDA is not available"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_impossible_configurations_fail_at_start(case: str, tmp_path: Path) -> None:
    overrides, message = BAD[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match=message):
        run_training(cfg_for(*overrides), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing ran
