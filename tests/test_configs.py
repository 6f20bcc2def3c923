"""Every option file of every coding config group composes and instantiates."""

from __future__ import annotations

import pytest

from agc_pipeline.analyze import build_study
from agc_pipeline.build import build_assignment, build_decoder, build_scheme
from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from tests.conftest import compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("option", options("assignment"))
def test_assignment_options(option: str) -> None:
    cfg = compose_config("analyze", [f"assignment={option}"])
    a = build_assignment(cfg)
    assert isinstance(a, Assignment) and a.kind == option


#: an assignment each scheme can run on, with the m it needs
SCHEME_CONTEXT = {
    "stack": ["assignment=bibd"],
    "random_diagonal": ["assignment=bibd"],
    "hadamard_nullspace": ["assignment=biregular"],
    "frc": ["assignment=fractional", "m=1"],
    "crc": ["assignment=cyclic", "m=1"],
    "ce_frc": ["assignment=fractional", "m=2"],
}


@pytest.mark.parametrize("option", options("scheme"))
def test_scheme_options(option: str) -> None:
    assert option in SCHEME_CONTEXT, f"add {option} to SCHEME_CONTEXT"
    cfg = compose_config("analyze", [f"scheme={option}", *SCHEME_CONTEXT[option]])
    scheme = build_scheme(cfg.scheme, build_assignment(cfg), cfg.m)
    b = scheme.encode(__import__("numpy").random.default_rng(0))
    assert b.shape == (cfg.m * scheme.k, scheme.n)


@pytest.mark.parametrize("option", options("decoder"))
def test_decoder_options(option: str) -> None:
    decoder = build_decoder(compose_config("analyze", [f"decoder={option}"]))
    assert decoder.name == option


#: the paper's figures (Section VIII): preset -> (app, (n, k, δ, γ), m, scheme, parameters)
PAPER_FIGURES = {
    "fig3": ("analyze", (91, 91, 10, 10), 2, "Construction (7)", {"epsilon": 0.0}),
    "fig4": ("analyze", (54, 27, 5, 10), 2, "Construction (7)", {"epsilon": 0.1}),
    "fig5": ("analyze", (40, 20, 3, 6), 2, "(19), Gaussian", {"variant": "gaussian"}),
    "fig6_bibd7": ("train", (7, 7, 3, 3), 2, "Construction (7)", {"epsilon": 0.0}),
    "fig6_coset27": ("train", (54, 27, 5, 10), 2, "Construction (7)", {"epsilon": 0.1}),
}


@pytest.mark.parametrize("option", sorted(PAPER_FIGURES))
def test_paper_presets_build_the_papers_codes(option: str) -> None:
    app, dims, m, label, params = PAPER_FIGURES[option]
    cfg = compose_config(app, [f"experiment={option}"])
    assert cfg.name == option
    a = build_assignment(cfg)
    scheme = build_scheme(cfg.scheme, a, cfg.m)
    assert (a.n, a.k, a.delta, a.gamma) == dims and scheme.m == m and scheme.label == label
    assert {k: scheme.describe()[k] for k in params} == params


def test_analysis_presets_use_the_papers_workload() -> None:
    """100 encoder draws × 1000 survivor sets per s (Section VIII); Figs. 4 and 5 from
    s = 0, Fig. 3 from s = 1 (the authors' grid drops 0), up to s/n = 0.25."""
    for option, s0 in (("fig3", 1), ("fig4", 0), ("fig5", 0)):
        study = build_study(compose_config("analyze", [f"experiment={option}"]))
        assert (study.realizations, study.straggler_sets) == (100, 1000), option
        assert study.s_values[0] == s0 and study.s_values[-1] == study.scheme.n // 4, option
        assert study.baseline is not None and study.baseline.label == "Baseline construction (11)"
    fig5 = build_study(compose_config("analyze", ["experiment=fig5"]))
    assert [s.label for s in fig5.compare.values()] == ["(19), ±1"]


def test_fig6_presets_train_as_the_paper() -> None:
    """MNIST, the MLP 784-128-10, q = 0.25 Bernoulli stragglers, 300 iterations, m = 2
    (Section VIII, Fig. 6)."""
    for option in ("fig6_bibd7", "fig6_coset27"):
        cfg = compose_config("train", [f"experiment={option}"])
        assert cfg.straggler.q == 0.25 and cfg.model._target_.endswith("PaperMLP"), option
        assert "mnist" in cfg.dataset._target_.lower(), option
        assert cfg.trainer.iterations == 300 and cfg.m == 2, option


def test_bad_target_and_unknown_key_are_config_errors() -> None:
    cfg = compose_config("analyze", ["+scheme.unknown=3"])
    with pytest.raises(ConfigError, match="scheme"):
        build_scheme(cfg.scheme, build_assignment(cfg), cfg.m)
