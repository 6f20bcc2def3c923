"""Every option file of every coding config group composes and instantiates."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options_compose(option: str) -> None:
    config = "analyze" if option.startswith(("fig3", "fig4", "fig5")) else "train"
    cfg = compose_config(config, [f"experiment={option}"])
    assert cfg.name


def test_bad_target_and_unknown_key_are_config_errors() -> None:
    cfg = compose_config("analyze", ["+scheme.unknown=3"])
    with pytest.raises(ConfigError, match="scheme"):
        build_scheme(cfg.scheme, build_assignment(cfg), cfg.m)
