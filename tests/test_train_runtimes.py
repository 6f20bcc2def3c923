"""The runtime protocol from outside the package: adding a runtime is one module and one
YAML, and a configuration is validated without building data or models."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from agc_pipeline import build
from agc_pipeline.build import validate
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import run_training
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=4",
        "trainer.progress=false", "trainer.eval_every=2", "trainer.alpha_samples=0",
        "straggler=bernoulli", "straggler.q=0.3"]

#: a runtime that always waits for every worker: the whole module of a new runtime
RUNTIME = '''
"""A coded runtime that waits for every worker (no straggler draw, no clock)."""
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.training.runtime import CodedRuntime
from agc_pipeline.training.settings import CodedSettings
from agc_pipeline.training.state import StepResult


@dataclass
class AlwaysWaitSettings(CodedSettings):
    label: str = "all"  #: its own key


class AlwaysWaitRuntime(CodedRuntime):
    name: ClassVar[str] = "always_wait"
    settings_class: ClassVar[type] = AlwaysWaitSettings
    counters: ClassVar[dict[str, float]] = {"messages": 0}

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.state = self._make_state()

    def step(self, evaluate: bool = False) -> StepResult:
        coded, work, t = self.coded_part, self.workload, self.state.iteration
        row: dict[str, Any] = {"iteration": t, **(work.evaluate() if evaluate else {})}
        x, y = work.minibatch(t)
        b = coded.code.encoding(t)
        mask = np.ones(coded.n, dtype=bool)
        dec = coded.code.decode(b, mask)
        estimate, _, loss = coded.gradient(x, y, b, coded.code.weights(b, dec.r), mask, dec)
        row.update(train_loss=loss / work.batch_samples, survivors=coded.n, skipped=False,
                   label=self.settings.label)
        return StepResult(row, estimate, {"survivors": coded.n, "messages": coded.n})

    def summary_extra(self) -> dict[str, Any]:
        return {"runtime": self.name, "messages": self.state.totals["messages"]}
'''

YAML = """
defaults:
  - common/coded@_here_
  - _self_

_target_: always_wait_runtime.AlwaysWaitRuntime
label: everyone
"""


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_runtime_is_one_module_and_one_yaml(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime defined outside the package (its module on sys.path, its YAML in a config
    dir on hydra.searchpath) trains end to end: the same steps as the simulated trainer
    waiting for every worker, its own key and counter in the rows and the summary."""
    (tmp_path / "always_wait_runtime.py").write_text(textwrap.dedent(RUNTIME))
    (tmp_path / "conf" / "trainer").mkdir(parents=True)
    (tmp_path / "conf" / "trainer" / "always_wait.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                "trainer=always_wait", *FAST], return_hydra_config=False)
    summary = run_training(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["runtime"] == "always_wait"
    assert summary["iterations"] == 4 and summary["messages"] == 4 * 7
    assert summary["virtual_time"] is None  # no virtual clock declared
    reference = run_training(compose_config("train", [*FAST, "trainer.wait_for_all=true"]),
                             tmp_path / "simulated")
    ours, theirs = rows(tmp_path / "run"), rows(tmp_path / "simulated")
    assert [r["label"] for r in ours] == ["everyone"] * 4
    assert [r["survivors"] for r in ours] == [r["survivors"] for r in theirs] == [7] * 4
    np.testing.assert_allclose([r["train_loss"] for r in ours],
                               [r["train_loss"] for r in theirs], rtol=1e-12)
    assert summary["final_train_loss"] == pytest.approx(reference["final_train_loss"],
                                                        rel=1e-12)
    assert ours[2]["test_accuracy"] == pytest.approx(theirs[2]["test_accuracy"])


def test_validate_builds_no_data_and_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate(cfg) runs the settings' checks and every config-only rule without building
    the data set or the model; build_run builds them after it."""
    def refuse(*_: object) -> None:
        raise AssertionError("validate must not build data or models")

    monkeypatch.setattr(build, "build_dataset", refuse)
    monkeypatch.setattr(build, "build_model", refuse)
    plan = validate(compose_config("train", ["experiment=fig6_coset27"]))
    assert plan.scheme.n == 54 and plan.m == 2 and plan.runtime.name == "simulated"
    for overrides, message in [
        (["trainer=distributed", "cluster=ethernet_10g"], "trainer=simulated only"),
        (["trainer=ddp"], "needs code=uncoded_wait"),
        (["decoder.rescale=true", "trainer.alpha_samples=1"], "alpha_samples ≥ 2"),
        (["trainer=distributed", "trainer.workers=3"], "but the assignment has n = 7"),
        (["trainer.lr=0"], "trainer.lr"),
        (["m=0"], "m must be a positive integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_config("train", overrides))
