"""trainer=sharded continued on another number of nodes (``trainer.reshard=true``): a run
stopped by a lost node resumes on the remaining ones, the optimizer state re-sharded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.distributed import WorkersLost
from agc_pipeline.training.sharded import ShardedRuntime, sharded_bytes_per_node
from agc_pipeline.training.sharded_maths import ShardLayout, unshard
from tests.conftest import compose_config
from tests.test_sharded import FAST, SHARDED, rows

pytestmark = pytest.mark.watchdog(300)

#: momentum 0.9 and a periodic checkpoint at the lost node's iteration: nothing is lost
CUT = [*FAST, "code=uncoded_wait", *SHARDED, "trainer.iterations=6", "trainer.batch_size=4",
       "optimizer.momentum=0.9", "trainer.checkpoint_every=3"]


def momentum(states: list[dict], layout: ShardLayout) -> torch.Tensor:
    """The shards' momentum buffers in parameter order."""
    return unshard([s["optimizer"]["state"][0]["momentum_buffer"] for s in states], layout)


def test_a_run_of_4_nodes_that_lost_one_resumes_on_3(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """n = 4, rank 2 exits at iteration 3: the one line names the way out on 3 nodes; the
    resumed run (assignment.n=3 trainer.reshard=true) starts from the checkpoint's parameters
    and momentum, its rows continue (the later ones with 3 nodes' bytes) and summary.json
    records the re-sharding."""
    run_dir = tmp_path / "run"
    with pytest.raises(WorkersLost) as info:  # exit status 4 (tests/test_sharded.py)
        run_training(compose_config("train", [*CUT, "assignment.n=4",
                                              "trainer.fault.kill_worker=2",
                                              "trainer.fault.at_iteration=3"]), run_dir)
    line = str(info.value)
    assert "iteration 3: rank 2 exited" in line and "\n" not in line
    assert "trainer.resume=true trainer.reshard=true assignment.n=3" in line
    stop = load_checkpoint(run_dir / "checkpoint.pt")
    assert stop["iteration"] == 3 and stop["optimizer_shards_iteration"] == 3
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "stop.pt")

    resume = [*CUT, "assignment.n=3", "trainer.resume=true", "trainer.reshard=true"]
    summary = run_training(compose_config("train", resume), run_dir)
    assert summary["status"] == "completed" and summary["iterations"] == 6
    assert summary["sharded"]["nodes"] == 3
    assert summary["sharded"]["reshards"] == [
        {"iteration": 3, "from_n": 4, "to_n": 3, "optimizer_state_iteration": 3}]
    got = rows(run_dir)
    assert [r["iteration"] for r in got] == list(range(6))
    d = summary["parameters"]
    per_node = [sharded_bytes_per_node(n, d, 1) for n in (4, 4, 4, 3, 3, 3)]
    assert [r["bytes_per_node"] for r in got] == per_node
    assert [r["total_bytes_per_node"] for r in got] == \
        [sum(per_node[:i + 1]) for i in range(6)]
    assert json.loads((run_dir / "summary.json").read_text())["sharded"]["reshards"]

    # the resumed session started from the checkpoint's parameters and momentum: rank 0
    # of n = 3 loaded from it holds them, and row 3's loss is theirs
    runtime = build_trainer(compose_config("train", resume))
    assert isinstance(runtime, ShardedRuntime)
    runtime.load_state_dict(load_checkpoint(tmp_path / "stop.pt"))
    for p, q in zip(runtime.model.state_dict().values(), stop["model"].values(), strict=True):
        assert torch.equal(p, q)
    assert runtime._loaded_shards is not None
    assert torch.equal(momentum(runtime._loaded_shards, runtime.layout),
                       momentum(stop["optimizer_shards"], ShardLayout(d, 1, 4)))
    x, y = runtime.workload.minibatch(3)
    with torch.no_grad():
        loss = float(runtime.model.loss_sum(runtime.model(x.reshape(-1, *x.shape[2:])),
                                            y.reshape(-1, *y.shape[2:])))
    assert got[3]["train_loss"] == loss / runtime.workload.batch_samples

    # a checkpoint between periodic ones: its optimizer state is older, and the log says so
    older = {**stop, "iteration": 4, "optimizer_shards_iteration": 3}
    runtime = build_trainer(compose_config("train", resume))
    with caplog.at_level(logging.WARNING, logger="agc_pipeline.train"):
        runtime.load_state_dict(older)
    assert "the last periodic checkpoint's (iteration 3), not iteration 4's" in caplog.text
    assert runtime.summary_extra()["sharded"]["reshards"] == [
        {"iteration": 4, "from_n": 4, "to_n": 3, "optimizer_state_iteration": 3}]


def refusal(cfg: list[str], run_dir: Path) -> str:
    """The one-line ConfigError of resuming ``run_dir`` with ``cfg``; the run is untouched."""
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError) as info:
        run_training(compose_config("train", [*cfg, "trainer.resume=true"]), run_dir)
    assert (run_dir / "metrics.jsonl").read_text() == before
    text = str(info.value)
    assert "\n" not in text
    return text


def test_refusals_name_the_rule(tmp_path: Path) -> None:
    """Another n without trainer.reshard=true, another key besides the nodes', another
    runtime, fewer than 2 nodes: one line each, naming the parameter; more nodes work."""
    short = [*FAST, "code=ce_frc", "m=2", "trainer.iterations=2"]
    sharded = [*short, *SHARDED, "assignment.n=4", "assignment.s=2"]
    run_training(compose_config("train", sharded), tmp_path / "sh")
    three = [*short, *SHARDED, "assignment.n=3", "assignment.s=1"]
    text = refusal(three, tmp_path / "sh")
    assert "assignment.n=3" in text and "pass trainer.reshard=true" in text
    text = refusal([*three, "trainer.reshard=true", "trainer.lr=0.1"], tmp_path / "sh")
    assert "differs from the checkpoint's in assignment.n, assignment.s, optimizer.lr, " \
        "trainer.lr (trainer.reshard=true continues on another assignment.n, changing " \
        "besides it only assignment.s, " in text
    with pytest.raises(ConfigError, match=r"needs n ≥ 2 nodes"):
        build_trainer(compose_config("train", [*short, *SHARDED, "assignment.n=1",
                                                "assignment.s=0", "m=1"]))

    run_training(compose_config("train", [*short, "assignment.n=4", "assignment.s=2"]),
                 tmp_path / "sim")
    text = refusal([*short, "assignment.n=3", "assignment.s=1"], tmp_path / "sim")
    assert "differs from the checkpoint's in assignment.n, assignment.s (trainer=simulated " \
        "resumes on the checkpoint's number of nodes; only trainer=sharded" in text

    grown = run_training(compose_config("train", [
        *short, *SHARDED, "assignment.n=6", "assignment.s=1", "trainer.iterations=3",
        "trainer.resume=true", "trainer.reshard=true"]), tmp_path / "sh")
    assert grown["status"] == "completed" and grown["sharded"]["reshards"] == [
        {"iteration": 2, "from_n": 4, "to_n": 6, "optimizer_state_iteration": 2}]
