"""Scheme metadata as class attributes (issue 17): a scheme's legend label, exactness and
assignment kinds live on its class, so a new scheme is one module plus one YAML. The scheme
below exists only in this module; its YAML is written into a copy of ``conf/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agc_pipeline.analysis.plot import error_figure, scheme_label
from agc_pipeline.analyze import run_analysis
from agc_pipeline.build import build_assignment, build_scheme
from agc_pipeline.cluster.plan_codes import Code, code_errors
from agc_pipeline.codes.base import Scheme, paper_label, scheme_classes
from agc_pipeline.codes.repetition import fractional, fractional_group_size, identity
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from agc_pipeline.report import make_report
from agc_pipeline.train import run_training
from tests.conftest import compose_config

LABEL = "Doubled code (test)"


class Doubled(Scheme):
    """B = 2A on a fractional repetition (m = 1): FRC scaled, so exact for r − 1 stragglers."""

    name: ClassVar[str] = "doubled_test"
    paper_label: ClassVar[str] = LABEL
    exact: ClassVar[bool] = True
    assignments: ClassVar[tuple[str, ...]] = ("fractional",)

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        return 2.0 * self.assignment.matrix.astype(np.float64)

    def tolerates(self) -> int:
        return fractional_group_size(self.assignment) - 1

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "s": self.tolerates()}


#: the legend labels of the paper's schemes, exactly as the figures and reports print them
LABELS = {("stack", None): "Baseline construction (11)",
          ("random_diagonal", None): "Construction (7)",
          ("hadamard_nullspace", "gaussian"): "(19), Gaussian",
          ("hadamard_nullspace", "pm1"): "(19), ±1", ("frc", None): "FRC (Tandon et al.)",
          ("crc", None): "CRC (Tandon et al.)", ("ce_frc", None): "Exact CE-FRC"}


def test_the_paper_schemes_keep_their_labels_and_declare_their_metadata() -> None:
    for (name, variant), label in LABELS.items():
        assert paper_label(name, variant) == label
    classes = scheme_classes()
    assert {name for name, _ in LABELS} <= set(classes)
    assert {n for n, c in classes.items() if c.exact} >= {"frc", "crc", "ce_frc"}
    assert not classes["random_diagonal"].exact and not classes["stack"].exact
    assert classes["crc"].assignments == ("cyclic",)
    assert paper_label("unknown_scheme") == "unknown_scheme"


def test_a_scheme_refuses_an_assignment_kind_it_does_not_run_on() -> None:
    with pytest.raises(ConfigError, match=r"^scheme doubled_test needs assignment=fractional "
                                          r"\(got kind 'identity'\)$"):
        Doubled(identity(6), 1)
    cfg = compose_config("analyze", ["scheme=frc", "m=1"])  # the Fano plane: a BIBD
    with pytest.raises(ConfigError, match=r"^scheme frc needs assignment=fractional \(got "
                                          r"kind 'bibd'\)$"):
        build_scheme(cfg.scheme, build_assignment(cfg), 1)


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conf/ plus the one YAML file of the new scheme."""
    root = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONFIG_DIR, root)
    (root / "scheme" / "doubled.yaml").write_text(f"_target_: {__name__}.Doubled\n")
    return root


def compose_in(conf: Path, app: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name=app, overrides=overrides)


NEW = ["scheme=doubled", "assignment=fractional", "assignment.n=6", "assignment.s=1", "m=1"]


def test_a_new_scheme_is_one_module_and_one_yaml(conf: Path, tmp_path: Path) -> None:
    assert scheme_classes()["doubled_test"] is Doubled
    # the analysis: its label in the results and the figure's legend; exact at s = 1
    cfg = compose_in(conf, "analyze", [*NEW, "analysis.s=[1,2]", "analysis.realizations=1",
                                       "analysis.straggler_sets=4", "analysis.progress=false",
                                       "analysis.plot=false", "name=doubled"])
    results = run_analysis(cfg, tmp_path / "analyze")
    assert results["scheme_label"] == LABEL == scheme_label({"scheme": "doubled_test"})
    assert results["points"][0]["empirical_mean"] == pytest.approx(0.0, abs=1e-9)
    legend = error_figure(results).axes[0].get_legend()
    assert f"Emp. Avg. Err., {LABEL}" in [t.get_text() for t in legend.get_texts()]
    # the planner reads exact from the class: one encoder draw, ē = 0 at s = r − 1
    code = Code("doubled", "test", Doubled(fractional(6, 1), 1), [1], coded=True)
    assert code.exact is True
    assert code_errors(code, realizations=3, sets=4, seed=0)[0][1] == pytest.approx(0, abs=1e-12)
    # a training run's report names the scheme by its label
    run_dir = tmp_path / "train"
    run_training(compose_in(conf, "train", [
        *NEW, "dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=2", "trainer.alpha_samples=0",
        "trainer.progress=false", "trainer.eval_every=2", "name=doubled"]), run_dir)
    make_report([run_dir], tmp_path / "report", "doubled")
    assert LABEL in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
