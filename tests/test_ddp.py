"""trainer=ddp: DistributedDataParallel over n processes (gloo, CPU, n = 3), the baseline
coded SGD is compared with.

Runs go through ``run_training`` in this process (rank 0) with the other ranks from the
fork server; a watchdog kills the session if one hangs. The app's own launch, torchrun and
the exit status of a lost rank run as subprocesses with timeouts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.ddp import ring_allreduce_bytes
from tests.conftest import ROOT, compose_config

N = 3
#: 8-feature 3-class logistic data (240 samples: 192 train, 48 test), the MLP, fast settings
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=5",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "straggler=none", "code=uncoded_wait", f"assignment.n={N}"]
DDP = ["trainer=ddp", "trainer.time_scale=0", "trainer.timeout_s=30"]
#: the residual CNN on a few MNIST images
CNN = ["dataset=mnist", "dataset.train_size=96", "dataset.test_size=10", "model=cnn",
       "model.width=4", "model.depth=2"]


#: a test that hangs ends the session, saying so with every thread's stack, after 4 min
#: (tests/conftest.py: watchdog); tests that run the app longer have their own budget
pytestmark = pytest.mark.watchdog(240)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(run_dir / "checkpoint.pt")["model"].values())


def overrides(*extra: str, cnn: bool = False) -> list[str]:
    base = [o for o in FAST if not o.startswith(("dataset", "model"))] + CNN if cnn else FAST
    return [*base, *extra]


def run_cli(*args: str, timeout: float = 180,
            launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------
# the same training as the simulated trainer's uncoded wait-for-all


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [None, 4])
def test_ddp_losses_equal_the_simulated_uncoded_wait_run(model: str, batch: int | None,
                                                         tmp_path: Path) -> None:
    """Same data, seed, model and batch size: DDP's train_loss rows (and final parameters)
    are the simulated trainer's with code=uncoded_wait, to float tolerance."""
    extra = [] if batch is None else [f"trainer.batch_size={batch}"]
    cfg = overrides(*extra, cnn=model == "cnn")
    simulated = run_training(compose_config("train", [*cfg, "trainer.alpha_samples=0"]),
                             tmp_path / "sim")
    summary = run_training(compose_config("train", [*cfg, *DDP]), tmp_path / "ddp")
    assert summary["status"] == "completed" and summary["runtime"] == "ddp"
    ddp, sim = rows(tmp_path / "ddp"), rows(tmp_path / "sim")
    assert [r["iteration"] for r in ddp] == list(range(5))
    np.testing.assert_allclose([r["train_loss"] for r in ddp], [r["train_loss"] for r in sim],
                               rtol=1e-5)
    for p, q in zip(final_params(tmp_path / "ddp"), final_params(tmp_path / "sim"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert summary["final_train_loss"] == pytest.approx(simulated["final_train_loss"],
                                                        rel=1e-5)
    d = summary["parameters"]
    assert all(r["bytes_per_rank"] == 2 * (N - 1) * d * 4 // N for r in ddp)
    assert summary["total_bytes_per_rank"] == 5 * ring_allreduce_bytes(N, d)
    assert ddp[-1]["wall_time"] == pytest.approx(sum(r["iteration_time"] for r in ddp))
    assert summary["ddp"]["launch"] == "local" and summary["virtual_time"] is None
    # the gradients of this small model fit one bucket of 25 MB: one all-reduce of d values
    assert summary["ddp"]["buckets"] == 1


def test_the_same_delays_in_every_runtime(tmp_path: Path) -> None:
    """straggler=slowdown: the simulated virtual clock, the PS's workers and the DDP ranks
    use the same draw — each rank really sleeps its modelled compute time × time_scale."""
    scale = 0.01
    delay = ["straggler=slowdown", "straggler.p=0.5", "straggler.r=4",
             "straggler.per_sample=0.05"]
    cfg = overrides(*delay)
    no_alpha = ["trainer.alpha_samples=0"]  # the coded runtimes' key
    run_training(compose_config("train", [*cfg, *no_alpha]), tmp_path / "sim")
    run_training(compose_config("train", [*cfg, *DDP, f"trainer.time_scale={scale}"]),
                 tmp_path / "ddp")
    run_training(compose_config("train", [*cfg, "trainer=distributed",
                                          f"trainer.time_scale={scale}", "trainer.timeout_s=30",
                                          "trainer.grad_error=false", *no_alpha]),
                 tmp_path / "ps")
    simulated = build_trainer(compose_config("train", [*cfg, *no_alpha]))
    b = simulated.workload.subset_size
    times = [simulated.spec.straggler.compute_times(t, N, simulated.coded_part.work)
             for t in range(5)]
    slow = [np.where(c > 0.05 * b * 1.5)[0].tolist() for c in times]
    assert any(slow) and not all(len(s) == N for s in slow)  # some, not all, slow
    sim, ddp, ps = (rows(tmp_path / name) for name in ("sim", "ddp", "ps"))
    for t, c in enumerate(times):
        assert sim[t]["iteration_time"] == pytest.approx(c.max(), rel=1e-12)
        assert ddp[t]["modelled_time"] == pytest.approx(c.max(), rel=1e-12)
        assert ddp[t]["sleep_time"] == pytest.approx(c[0] * scale, rel=1e-9)  # rank 0's
        assert ps[t]["sleep_time"] == pytest.approx(c.mean() * scale, rel=1e-9)  # all n
        assert ddp[t]["iteration_time"] >= c.max() * scale  # waited for the slowest rank


# ------------------------------------------------------------------------------------------
# checkpoints, resume and a lost rank


@pytest.mark.watchdog(300)  # a run of up to 180 s and two in this process
def test_a_lost_rank_stops_with_status_4_and_the_run_resumes_bit_identically(
        tmp_path: Path) -> None:
    """Rank 1 exits abruptly at iteration 3: the app checkpoints the state after iteration
    2 and exits with status 4 and one line; the resumed run (momentum, minibatches) ends with
    exactly the parameters and losses of an uninterrupted run."""
    cfg = overrides(*DDP, "trainer.iterations=6", "trainer.batch_size=4",
                    "optimizer.momentum=0.9")
    run_training(compose_config("train", cfg), tmp_path / "whole")
    run_dir = tmp_path / "cut"
    proc = run_cli(*cfg, "trainer.fault.kill_worker=1", "trainer.fault.at_iteration=3",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 4, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("agc-train")]
    assert "iteration 3: rank 1 exited" in line and "trainer.resume=true" in line
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "workers_lost" and summary["iterations"] == 3
    resumed = run_training(compose_config("train", [*cfg, "trainer.resume=true"]), run_dir)
    assert resumed["status"] == "completed" and resumed["iterations"] == 6
    whole, cut = rows(tmp_path / "whole"), rows(run_dir)
    assert [r["iteration"] for r in cut] == list(range(6))
    assert [r["train_loss"] for r in cut] == [r["train_loss"] for r in whole]
    for p, q in zip(final_params(run_dir), final_params(tmp_path / "whole"), strict=True):
        assert torch.equal(p, q)
    assert resumed["total_bytes_per_rank"] == 6 * ring_allreduce_bytes(N, resumed["parameters"])


def test_the_run_is_reproducible_and_extends_by_resume(tmp_path: Path) -> None:
    """Two identical runs agree bit for bit; 3 iterations then trainer.iterations=5 with
    trainer.resume=true give the 5-iteration run."""
    cfg = overrides(*DDP)
    run_training(compose_config("train", cfg), tmp_path / "a")
    short = [o for o in cfg if not o.startswith("trainer.iterations")]
    run_training(compose_config("train", [*short, "trainer.iterations=3"]), tmp_path / "b")
    run_training(compose_config("train", [*cfg, "trainer.resume=true"]), tmp_path / "b")
    assert [r["train_loss"] for r in rows(tmp_path / "a")] == \
        [r["train_loss"] for r in rows(tmp_path / "b")]
    for p, q in zip(final_params(tmp_path / "a"), final_params(tmp_path / "b"), strict=True):
        assert torch.equal(p, q)


def test_log_every(tmp_path: Path) -> None:
    """trainer.log_every=3 over 5 iterations: rows 0, 3 and the last, each with the train
    loss of the simulated run at that iteration (the loss is summed over the ranks only on
    logged iterations)."""
    cfg = overrides("trainer.log_every=3")
    run_training(compose_config("train", [*cfg, "trainer.alpha_samples=0"]), tmp_path / "sim")
    summary = run_training(compose_config("train", [*cfg, *DDP]), tmp_path / "ddp")
    out, sim = rows(tmp_path / "ddp"), rows(tmp_path / "sim")
    assert [r["iteration"] for r in out] == [r["iteration"] for r in sim] == [0, 3, 4]
    assert summary["iterations"] == 5
    np.testing.assert_allclose([r["train_loss"] for r in out], [r["train_loss"] for r in sim],
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------
# launches and configuration errors


@pytest.mark.watchdog(480)  # runs of up to 180 + 240 s
def test_the_app_and_torchrun_launch_the_ranks(tmp_path: Path) -> None:
    """The app starts ranks 1..n−1 itself (workers.json, no rendezvous file left); under
    torchrun (--nproc_per_node=n) rank 0 is the only rank that writes."""
    proc = run_cli(*overrides(*DDP), f"hydra.run.dir={tmp_path / 'app'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # issue 20: the ranks imported the app module (runpy's "found in sys.modules" warning)
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-3000:]
    roster = json.loads((tmp_path / "app" / "workers.json").read_text())
    assert [r["rank"] for r in roster["ranks"]] == list(range(N))
    assert not list((tmp_path / "app").glob("rendezvous-*"))
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={N}", "-m")
    proc = run_cli(*overrides(*DDP), f"hydra.run.dir={tmp_path / 'tr' / 'run'}", timeout=240,
                   launcher=torchrun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "tr").iterdir()) == ["run"]
    summary = json.loads((tmp_path / "tr" / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["ddp"]["launch"] == "torchrun"
    app = rows(tmp_path / "app")
    assert [r["train_loss"] for r in rows(tmp_path / "tr" / "run")] == \
        [r["train_loss"] for r in app]


def test_a_coded_code_is_refused_in_one_line(tmp_path: Path) -> None:
    args = [o for o in overrides(*DDP) if not o.startswith(("code=", "assignment."))]
    proc = run_cli(*args, "code=frc", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "trainer=ddp" in line and "code=uncoded_wait" in line and "got code=frc" in line
    assert not (tmp_path / "workers.json").exists()


@pytest.mark.parametrize("replace,message", [
    (["code=uncoded_ignore"], "needs code=uncoded_wait"),
    (["code=frc"], "needs code=uncoded_wait"),
    (["code=uncoded_wait", "m=2"], "m=2"),
    (["trainer.min_workers=2"], "trainer.min_workers=2: trainer=ddp needs all n = 3"),
    (["+trainer.grad_error=true"], "trainer.grad_error does not apply to trainer=ddp"),
    (["trainer.backend=nccl"], "trainer.backend=nccl needs trainer.device=cuda"),
    (["trainer.backend=mpi"], "trainer.backend must be one of"),
    (["trainer.timeout_s=0"], "trainer.timeout_s"),
    (["trainer.fault.kill_worker=0"], "kill_worker must be null or a rank 1..n-1"),
    (["+trainer.fault.bad_message_worker=1"], "bad_message_worker does not apply"),
    (["+trainer.decode_cost=1.0"], "trainer.decode_cost does not apply to trainer=ddp"),
])
def test_bad_settings(replace: list[str], message: str) -> None:
    keys = {o.split("=")[0] for o in replace if o.startswith("code=")}
    base = [o for o in overrides(*DDP) if not (keys and o.startswith(("code=", "assignment.")))]
    with pytest.raises(ConfigError, match=message):
        build_trainer(compose_config("train", [*base, *replace]))



def test_headline_of_a_run_without_a_ps() -> None:
    """trainer=ddp has no PS (total_bytes_to_ps is None): the run's headline must not crash
    at the very end of the run (it did, after all the training)."""
    from agc_pipeline.reporting.summary import RunSummary
    from agc_pipeline.train import headline

    base = json.loads((ROOT / "tests" / "data" / "summary_pre_schema.json").read_text())
    ddp = base | {"final_train_loss": 0.5, "total_bytes_to_ps": None, "alpha": None}
    out = headline(RunSummary.from_dict(ddp))
    assert out["mb_to_ps"] is None and out["train_loss"] == 0.5 and out["alpha"] is None
    sent = RunSummary.from_dict(base | {"final_train_loss": 0.5, "total_bytes_to_ps": 2e6})
    assert headline(sent)["mb_to_ps"] == 2.0
