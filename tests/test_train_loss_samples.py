"""trainer.train_loss_samples: summary.json's final training loss over a fixed, seeded sample
of the training set instead of a pass over all of it (issue 21: the app's final pass sized
sensibly); null (the default) keeps the loss over every sample, and summary.json unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from tests.conftest import compose_config

FAST = ["debug=fast", "trainer.iterations=2", "trainer.progress=false",
        "trainer.alpha_samples=0"]


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many", "true"])
def test_a_bad_value_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.train_loss_samples must be a positive "
                                          r"integer"):
        build_trainer(compose_config("train", [*FAST, f"trainer.train_loss_samples={value}"]))


def test_the_sample_is_fixed_by_the_seed_and_the_loss_is_its_mean() -> None:
    work = build_trainer(compose_config("train", FAST)).workload
    rows = len(work.held) * work.subset_size
    x = work.x.reshape(-1, *work.x.shape[2:])
    y = work.y.reshape(-1, *work.y.shape[2:])
    with torch.no_grad():
        losses = torch.stack([work.model.loss_sum(work.model(x[i:i + 1]), y[i:i + 1])
                              for i in range(rows)]).double()
    pick = work.train_loss_sample(25)
    assert pick is not None and pick.numel() == 25 and len(set(pick.tolist())) == 25
    assert torch.equal(pick, torch.sort(pick).values) and int(pick.max()) < rows
    assert torch.equal(pick, work.train_loss_sample(25))  # the same on every call
    assert work.train_loss_count(25) == 25 and work.train_loss_count(None) is None
    assert work.train_loss(25) == pytest.approx(float(losses[pick].mean()), rel=1e-5)
    assert work.train_loss() == pytest.approx(float(losses.mean()), rel=1e-5)
    for every in (None, rows, rows + 1000):  # all of them: the full pass
        assert work.train_loss_sample(every) is None and work.train_loss_count(every) is None
        assert work.train_loss(every) == work.train_loss()
    other = build_trainer(compose_config("train", [*FAST, "seed=1"])).workload
    assert not torch.equal(other.train_loss_sample(25), pick)


def test_the_summary_says_how_many_samples_and_a_resume_may_change_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    whole = run_training(compose_config("train", FAST), run)
    assert "final_train_loss_samples" not in whole  # all samples: summary.json as before
    sampled = run_training(compose_config("train", [*FAST, "trainer.iterations=3",
                                                    "trainer.resume=true",
                                                    "trainer.train_loss_samples=40"]), run)
    assert sampled["final_train_loss_samples"] == 40 and sampled["iterations"] == 3
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["final_train_loss_samples"] == 40
    assert on_disk["final_train_loss"] == sampled["final_train_loss"]
