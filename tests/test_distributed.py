"""trainer=distributed: a real parameter server and worker processes on torch.distributed
(gloo, CPU, 2-4 workers, a tiny logistic-regression problem).

Most runs go through ``run_training`` in this process (the PS) with worker processes from
the fork server; a watchdog kills the session if one hangs, so a hang fails CI instead of
blocking it. The app's own launch, torchrun and the PS's death run as subprocesses with
timeouts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.distributed import WorkersLost
from agc_pipeline.training.safe_kill import safe_kill
from agc_pipeline.training.wire import Header, Kind
from tests.conftest import ROOT, compose_config

#: 6-feature 3-class logistic data (210 samples: 168 train, 42 test), fast settings
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=5",
        "trainer.progress=false", "trainer.alpha_samples=0", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "trainer.lr=0.5", "straggler=none"]
DIST = ["trainer=distributed", "trainer.time_scale=0", "trainer.timeout_s=30"]
#: construction (7), m = 2, on the cyclic assignment with n = 4 workers and load 3
CODE7 = ["assignment=cyclic", "assignment.n=4", "assignment.s=1", "scheme=random_diagonal",
         "m=2"]
#: Tandon et al.'s fractional repetition code, n = 4 in groups of 2: exact for 1 straggler
FRC = ["assignment=fractional", "assignment.n=4", "assignment.s=1", "scheme=frc", "m=1"]
#: communication-efficient exact code, m = 2, n = 3 (one group of s + m = 3): 1 straggler
CE_FRC = ["assignment=fractional", "assignment.n=3", "assignment.s=1", "scheme=ce_frc", "m=2"]
#: exactly one worker (a random one, seeded) never reports in each iteration
ONE_DROPS = ["straggler=fixed", "straggler.s=1", "trainer.straggle=drop"]
ROW_KEYS = {"iteration", "train_loss", "grad_error", "survivors", "bytes_to_ps",
            "bytes_received", "wall_time", "iteration_time", "wait_time", "decode_time",
            "compute_time", "encode_time", "sleep_time", "comm_time", "late", "rejected",
            "live_workers", "skipped"}


#: a test that hangs ends the session, saying so with every thread's stack, after 3 min
#: (tests/conftest.py: watchdog); tests that run the app longer have their own budget
pytestmark = pytest.mark.watchdog(180)


def train(tmp: Path, *overrides: str) -> tuple[dict, list[dict]]:
    """A distributed run in this process: (summary, metrics rows)."""
    summary = run_training(compose_config("train", [*FAST, *DIST, *overrides]), tmp)
    return summary, rows(tmp)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(run_dir / "checkpoint.pt")["model"].values())


def delay_trace(path: Path, table: list[list[float]]) -> list[str]:
    """straggler=delay reading per-iteration compute times (time units) from a CSV."""
    np.savetxt(path, np.asarray(table), delimiter=",")
    return ["straggler=delay", "straggler.s=1", f"straggler.trace={path}",
            "straggler.comm_per_unit=0"]


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def run_cli(*args: str, timeout: float = 120,
            launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------
# the coded step on real processes


@pytest.mark.parametrize("code", ["frc", "ce_frc"])
def test_exact_codes_equal_the_uncoded_full_batch_run(code: str, tmp_path: Path) -> None:
    """One worker never reports in each iteration; the exact codes still take plain
    full-batch SGD steps."""
    overrides = [*(FRC if code == "frc" else CE_FRC), *ONE_DROPS, "dataset.n_samples=240"]
    cfg = compose_config("train", [*FAST, *DIST, *overrides])
    reference = build_trainer(cfg)  # the same initial model and data (the PS's copy)
    plain = reference.model
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.5)
    x, y = reference.workload.x.reshape(-1, 6), reference.workload.y.reshape(-1)
    for _ in range(5):
        optimizer.zero_grad()
        (plain.loss_sum(plain(x), y) / x.shape[0]).backward()
        optimizer.step()
    summary, out = train(tmp_path, *overrides)
    assert summary["status"] == "completed" and summary["runtime"] == "distributed"
    n = summary["assignment"]["n"]
    assert [r["survivors"] for r in out] == [n - 1] * 5
    assert all(r["grad_error"] < 1e-10 and r["approx_error"] < 1e-9 for r in out)
    for p, q in zip(final_params(tmp_path), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stragglers", ["none", "one_drops", "minibatch"])
def test_simulated_and_distributed_runs_are_the_same(stragglers: str, tmp_path: Path) -> None:
    """Same seeds, same survivor sets: the same parameters after N iterations (with
    minibatches: every worker draws the same samples of its subsets as the simulated PS)."""
    overrides = [*CODE7, *(ONE_DROPS if stragglers == "one_drops" else [])]
    simulated_overrides = [o for o in overrides if not o.startswith("trainer.")]
    if stragglers == "minibatch":
        overrides.append("trainer.batch_size=3")
        simulated_overrides.append("trainer.batch_size=3")
    simulated = run_training(compose_config("train", [*FAST, *simulated_overrides]),
                             tmp_path / "sim")
    summary, out = train(tmp_path / "dist", *overrides)
    assert [r["survivors"] for r in out] == [r["survivors"] for r in rows(tmp_path / "sim")]
    for p, q in zip(final_params(tmp_path / "dist"), final_params(tmp_path / "sim"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert summary["final_train_loss"] == pytest.approx(simulated["final_train_loss"],
                                                        rel=1e-5)
    # measured: every row has the timing split and the bytes of exactly the survivors
    length = summary["message_length"]
    for r in out:
        assert ROW_KEYS <= set(r)
        assert r["bytes_to_ps"] == r["survivors"] * length * 4
        assert r["bytes_received"] - r["bytes_discarded"] == r["survivors"] * (length * 4 + 64)
        assert r["iteration_time"] >= r["wait_time"] >= 0 and r["decode_time"] >= 0
    assert out[-1]["wall_time"] == pytest.approx(sum(r["iteration_time"] for r in out))


def test_simulated_and_distributed_cnn_runs_are_the_same(tmp_path: Path) -> None:
    """The residual CNN on MNIST images (N, 1, 28, 28), minibatches, one worker missing
    every iteration: the workers' one-pass weighted messages give the simulated PS's
    parameters."""
    base = [o for o in FAST if not o.startswith(("dataset", "model"))]
    cnn = [*base, "dataset=mnist", "dataset.train_size=120", "dataset.test_size=10",
           "model=cnn", "model.width=4", "model.depth=2", "trainer.batch_size=3", *CODE7,
           "straggler=fixed", "straggler.s=1"]
    simulated = run_training(compose_config("train", cnn), tmp_path / "sim")
    summary = run_training(compose_config("train", [*cnn, *DIST, "trainer.straggle=drop"]),
                           tmp_path / "dist")
    assert [r["survivors"] for r in rows(tmp_path / "dist")] == \
        [r["survivors"] for r in rows(tmp_path / "sim")] == [3] * 5
    for p, q in zip(final_params(tmp_path / "dist"), final_params(tmp_path / "sim"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert summary["final_train_loss"] == pytest.approx(simulated["final_train_loss"],
                                                        rel=1e-5)


# ------------------------------------------------------------------------------------------
# stragglers


def test_first_n_minus_s_does_not_wait_for_a_slow_worker(tmp_path: Path) -> None:
    """Worker 1 always takes 2 s; the PS proceeds with the other n − 1 = 3."""
    trace = delay_trace(tmp_path / "trace.csv", [[0.1, 20.0, 0.1, 0.1]])
    summary, out = train(tmp_path / "run", *FRC, *trace, "trainer.time_scale=0.1")
    assert summary["distributed"]["wait"] == "first" and summary["distributed"]["s"] == 1
    assert all(r["survivors"] == 3 for r in out)
    assert all(r["iteration_time"] < 1.0 for r in out)  # far below the slow worker's 2 s
    assert all(r["grad_error"] < 1e-10 for r in out)  # FRC decodes exactly without it


def test_late_messages_are_discarded_by_their_tag(tmp_path: Path) -> None:
    """Worker 1 is slow in iteration 0 only: its message arrives during iteration 1, is
    recognised as late and never mixed into a gradient (an exact code stays exact)."""
    trace = delay_trace(tmp_path / "trace.csv",
                        [[1.0, 3.0, 1.0, 1.0]] + [[5.0, 5.0, 5.0, 5.0]] * 4)
    summary, out = train(tmp_path / "run", *FRC, *trace, "trainer.time_scale=0.1")
    assert out[0]["survivors"] == 3 and out[0]["late"] == 0
    assert out[1]["late"] >= 1  # the tag-0 message, arriving at ~0.3 s, during iteration 1
    assert summary["late_messages"] >= 1
    assert all(r["grad_error"] < 1e-10 for r in out)
    assert all(r["bytes_received"] - r["bytes_discarded"]
               == r["survivors"] * (summary["message_length"] * 4 + 64) for r in out)


# ------------------------------------------------------------------------------------------
# faults


def test_a_worker_killed_by_the_builtin_fault_is_survived(tmp_path: Path) -> None:
    summary, out = train(tmp_path, *FRC, "trainer.wait=all", "trainer.iterations=6",
                         "trainer.fault.kill_worker=2", "trainer.fault.at_iteration=2")
    assert summary["status"] == "completed" and summary["iterations"] == 6
    assert summary["dead_workers"] == [2]
    (event,) = [e for e in summary["events"] if e["event"] == "dead"]
    assert event["worker"] == 2 and event["iteration"] == 2
    assert [r["survivors"] for r in out] == [4, 4, 3, 3, 3, 3]
    assert out[-1]["live_workers"] == 3
    # detected by the broken connection, not by the 30 s silence timeout
    assert max(r["iteration_time"] for r in out) < 10
    assert all(r["grad_error"] < 1e-10 for r in out)


def test_a_worker_killed_with_sigkill_is_survived(tmp_path: Path) -> None:
    """The test SIGKILLs worker 0's process (pid from workers.json) mid-run."""
    killed: list[int] = []

    def kill_when_running() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            metrics = tmp_path / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                roster = json.loads((tmp_path / "workers.json").read_text())
                pid = roster["workers"][0]["pid"]
                safe_kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    summary, out = train(tmp_path, *FRC, "trainer.wait=all", "trainer.iterations=40",
                         "trainer.time_scale=0.05")  # 50 ms per iteration
    killer.join(5)
    assert killed and gone(killed[0])
    assert summary["status"] == "completed" and summary["iterations"] == 40
    assert summary["dead_workers"] == [0]
    assert out[-1]["survivors"] == 3 and out[-1]["live_workers"] == 3
    assert max(r["iteration_time"] for r in out) < 10
    assert all(r["grad_error"] < 1e-10 for r in out)


def test_a_silent_worker_is_declared_dead_after_the_timeout(tmp_path: Path) -> None:
    """SIGSTOP (alive, connected, silent): the PS gives up on it after timeout_s, the other
    workers keep going, and at the end the PS kills it so that its link closes."""
    stopped: list[int] = []

    def stop_when_running() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end and not stopped:
            metrics = tmp_path / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                pid = json.loads((tmp_path / "workers.json").read_text())["workers"][3]["pid"]
                safe_kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            time.sleep(0.02)

    stopper = threading.Thread(target=stop_when_running, daemon=True)
    stopper.start()
    summary, out = train(tmp_path, *FRC, "trainer.wait=all", "trainer.iterations=8",
                         "trainer.time_scale=0.05", "trainer.timeout_s=1.5")
    stopper.join(5)
    assert stopped and gone(stopped[0])  # killed at the end (a stopped process cannot leave)
    assert summary["status"] == "completed" and summary["dead_workers"] == [3]
    (event,) = summary["events"]
    assert "silent" in event["reason"]
    slow = [r for r in out if r["iteration_time"] > 1.0]
    assert len(slow) == 1 and 1.5 < slow[0]["iteration_time"] < 5  # one wait of timeout_s
    assert out[-1]["survivors"] == 3 and all(r["grad_error"] < 1e-10 for r in out)


@pytest.mark.parametrize("bad", ["nan", "inf", "size"])
def test_bad_messages_are_rejected_as_stragglers(bad: str, tmp_path: Path) -> None:
    summary, out = train(tmp_path, *FRC, "trainer.wait=all",
                         "trainer.fault.bad_message_worker=1", f"trainer.fault.bad_message={bad}",
                         "trainer.fault.bad_message_at=2")
    assert [r["rejected"] for r in out] == [0, 0, 1, 0, 0]
    assert [r["survivors"] for r in out] == [4, 4, 3, 4, 4]  # one iteration only
    assert summary["rejected_messages"] == 1 and summary["dead_workers"] == []
    assert all(np.isfinite(r["train_loss"]) and r["grad_error"] < 1e-10 for r in out)
    (event,) = summary["events"]
    assert event == {"iteration": 2, "worker": 1, "event": "rejected",
                     "reason": event["reason"]}
    assert ("NaN/Inf" if bad != "size" else "values instead of") in event["reason"]


@pytest.mark.watchdog(420)  # waits of 90 + 10 + 15 s, two runs of up to 120 s
def test_workers_exit_when_the_ps_dies_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGKILL the PS (the app's process) at iteration 5, long before its first periodic
    checkpoint (checkpoint_every=100): every worker exits within seconds, no rendezvous file
    is left, and the run resumes from the checkpoint taken before iteration 0 with fresh
    workers (the dead PS's run-dir lock is gone with it) to the uninterrupted run's result."""
    common = [*FAST, *DIST, *FRC, "trainer.iterations=8", "trainer.checkpoint_every=100",
              "trainer.time_scale=0.5", "trainer.timeout_s=20", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "agc_pipeline.train", *common], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 90
        metrics = tmp_path / "metrics.jsonl"
        while time.monotonic() < end and not (metrics.exists()
                                              and len(metrics.read_text().splitlines()) >= 5):
            time.sleep(0.02)
        assert len(rows(tmp_path)) >= 5, "the run never reached iteration 5"
        pids = [w["pid"] for w in json.loads((tmp_path / "workers.json").read_text())["workers"]]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        while time.monotonic() < killed_at + 15 and not all(gone(p) for p in pids):
            time.sleep(0.05)
        assert all(gone(p) for p in pids), "workers outlived their PS"
        assert time.monotonic() - killed_at < 5  # broken connection, not the 20 s timeout
    finally:
        proc.kill()
        proc.wait()
    assert 5 <= len(rows(tmp_path)) < 8
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 0
    assert not list(tmp_path.glob("rendezvous-*"))
    (tmp_path / "rendezvous-0123456789ab").write_text("")  # as if killed during start-up
    resumed = run_cli(*common, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = rows(tmp_path)
    assert [r["iteration"] for r in out] == list(range(8))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    assert not list(tmp_path.glob("rendezvous-*"))
    # the same run without the kill: the same parameters (FRC is exact; no stragglers)
    whole = run_cli(*common[:-1], f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # issue 20: the workers imported the app module (runpy's "found in sys.modules" warning)
    assert "RuntimeWarning" not in whole.stderr, whole.stderr[-3000:]
    for p, q in zip(final_params(tmp_path), final_params(tmp_path / "whole"), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.watchdog(300)  # two runs of up to 120 s
def test_too_few_workers_stop_with_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    """trainer.min_workers=4 of n = 4: when worker 1 dies at iteration 2 the app stops with a
    checkpoint, one clear line and exit status 4 (not a "completed" run that skipped the
    rest); resumed with fresh workers, it completes."""
    common = [*FAST, *DIST, *FRC, "trainer.iterations=6", "trainer.wait=all",
              "trainer.min_workers=4", f"hydra.run.dir={tmp_path}"]
    proc = run_cli(*common, "trainer.fault.kill_worker=1", "trainer.fault.at_iteration=2")
    assert proc.returncode == 4, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("agc-train")]
    assert "3 of 4 workers alive, fewer than trainer.min_workers = 4 (dead: [1])" in line
    assert "trainer.resume=true" in line
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "workers_lost" and summary["iterations"] == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
    assert [r["iteration"] for r in rows(tmp_path)] == [0, 1]
    resumed = run_cli(*common, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["iteration"] for r in rows(tmp_path)] == list(range(6))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_no_worker_left_stops_the_run(tmp_path: Path) -> None:
    """One worker (A = I, n = 1), killed at iteration 3: no iteration can run any more."""
    with pytest.raises(WorkersLost, match="0 of 1 workers alive"):
        train(tmp_path, "assignment=identity", "assignment.n=1", "scheme=stack", "m=1",
              "trainer.iterations=6", "trainer.fault.kill_worker=0",
              "trainer.fault.at_iteration=3")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "workers_lost" and summary["dead_workers"] == [0]
    assert summary["iterations"] == 3 and "trainer.min_workers" in summary["error"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 3


@pytest.mark.parametrize("log_every,logged", [(1, [0, 1, 2, 3, 4]), (2, [0, 2, 4]),
                                              (3, [0, 3, 4]), (10, [0, 4])])
def test_every_log_every_value(log_every: int, logged: list[int], tmp_path: Path) -> None:
    """Only logged iterations compute the loss; the progress bar shows the last one."""
    summary, out = train(tmp_path, *FRC, f"trainer.log_every={log_every}",
                         "trainer.progress=true")
    assert summary["status"] == "completed" and summary["iterations"] == 5
    assert [r["iteration"] for r in out] == logged
    assert all(np.isfinite(r["train_loss"]) for r in out)


# ------------------------------------------------------------------------------------------
# launches


def test_the_app_starts_its_workers_and_writes_its_files(tmp_path: Path) -> None:
    proc = run_cli(*FAST, *DIST, *CODE7, "trainer.workers=4", "logger=wandb",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 5
    assert summary["distributed"]["launch"] == "local" and summary["wall_time"] > 0
    assert {"final_train_loss", "test_accuracy", "seconds", "decode_fraction"} <= set(summary)
    assert [r["iteration"] for r in rows(tmp_path)] == list(range(5))
    roster = json.loads((tmp_path / "workers.json").read_text())
    assert [w["rank"] for w in roster["workers"]] == [1, 2, 3, 4]
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert not list(tmp_path.glob("rendezvous-*"))  # cleaned up


@pytest.mark.watchdog(300)  # a torchrun launch of up to 240 s
def test_torchrun_launch(tmp_path: Path) -> None:
    """rank 0 = the PS and the only rank that writes; ranks 1..2 = workers."""
    torchrun = (sys.executable, "-m", "torch.distributed.run")  # the torchrun script
    proc = run_cli(*FAST, *DIST, "assignment=fractional", "assignment.n=2", "assignment.s=1",
                   "scheme=frc", "m=1", f"hydra.run.dir={tmp_path / 'run'}", timeout=240,
                   launcher=(*torchrun, "--standalone", "--nproc_per_node=3", "-m"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["distributed"]["launch"] == "torchrun"
    assert [r["survivors"] for r in rows(tmp_path / "run")] == [2] * 5


def test_configuration_errors_are_one_line_before_any_process(tmp_path: Path) -> None:
    proc = run_cli(*FAST, *DIST, *CODE7, "trainer.workers=5", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "trainer.workers=5 but the assignment has n = 4" in line
    assert not (tmp_path / "workers.json").exists()


@pytest.mark.parametrize("overrides,message", [
    (["trainer.backend=mpi"], "trainer.backend must be one of gloo | nccl"),
    (["trainer.timeout_s=inf"], "trainer.timeout_s must be a finite number"),
    (["trainer.min_workers=0"], "trainer.min_workers must be a positive integer"),
    (["trainer.min_workers=5"], "trainer.min_workers=5 but the assignment has only n = 4"),
    (["trainer.wait=deadline"], "trainer.wait=deadline needs trainer.deadline_s"),
    (["straggler=bernoulli", "trainer.straggle=drop"], "trainer.straggle=drop"),
    (["trainer.s=4"], "trainer.s must satisfy"),
    (["trainer.fault.kill_worker=4"], "trainer.fault.kill_worker"),
    (["trainer.fault.bad_message=garbage"], "trainer.fault.bad_message"),
    (["+trainer.decode_cost=1.0"], "trainer.decode_cost does not apply to trainer=distributed"),
    (["trainer.wait_for_all=true", "trainer.wait=first"], "wait_for_all=true means"),
])
def test_bad_settings(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_trainer(compose_config("train", [*FAST, *DIST, *CODE7, *overrides]))


def test_wait_for_all_preset_and_defaults_resolve() -> None:
    ps = build_trainer(compose_config("train", [*FAST, *DIST, "code=uncoded_wait"]))
    assert ps.timing.wait == "all" and ps.timing.target(12, 12) == 12
    delay = build_trainer(compose_config("train", [*FAST, *DIST, *CODE7, "straggler=delay",
                                                   "straggler.time_scale=0.3",
                                                   "trainer.time_scale=null"]))
    assert (delay.timing.wait, delay.timing.s, delay.timing.time_scale) == ("first", 1, 0.3)
    assert delay.timing.target(live=2, n=4) == 2 and delay.timing.target(live=4, n=4) == 3


def test_header_round_trip_and_malformed_headers() -> None:
    header = Header(7, Kind.GRADIENT, 13, 0.5, 0.25, 1.0, 2.0, 42.0)
    assert Header.unpack(header.pack()) == header
    bad = header.pack()
    bad[3] = float("nan")
    assert Header.unpack(bad) is None
    bad = header.pack()
    bad[1] = 99
    assert Header.unpack(bad) is None
