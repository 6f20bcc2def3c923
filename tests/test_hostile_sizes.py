"""Sizes whose arrays cannot fit in memory are refused from the sizes alone, before anything
is allocated, in one line naming the parameter, the estimated bytes and the machine's memory
(issue 20: m = 10⁹ and plan.n = [10⁹] ended in numpy's 'Unable to allocate 6.94 EiB'
traceback)."""

from __future__ import annotations

import pytest

import agc_pipeline.validation as validation
from agc_pipeline.build import build_run, validate
from agc_pipeline.errors import ConfigError
from agc_pipeline.plan import build_plan
from agc_pipeline.validation import format_bytes, physical_memory
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.progress=false"]
MEMORY = format_bytes(physical_memory())


def test_a_huge_m_is_refused_before_any_array() -> None:
    cfg = compose_config("train", [*FAST, "m=1000000000"])
    with pytest.raises(ConfigError, match=r"^m=1000000000 \(n = 7, k = 7\) needs about "
                                          r"\S+ TiB of memory for its arrays, more than this "
                                          rf"machine's {MEMORY}: .*use a smaller m$"):
        validate(cfg)


def test_a_huge_plan_n_is_refused_before_any_array() -> None:
    cfg = compose_config("plan", ["plan.n=[64,1000000000]"])
    with pytest.raises(ConfigError, match=r"^plan.n=1000000000 \(with plan.m up to 4 and "
                                          r"plan.draws=400\) needs about \S+ TiB of memory"):
        build_plan(cfg)


def test_the_gradient_buffers_of_a_model_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """d enters through the model: with k = 7 per-subset gradients of d float64 values on a
    machine of 1 KiB, the logistic model (d = 21) does not fit; the weighted path does."""
    monkeypatch.setattr(validation, "physical_memory", lambda: 1024)
    cfg = compose_config("train", [*FAST, "trainer.coded_gradient=per_subset", "m=1"])
    monkeypatch.setattr("agc_pipeline.rules.code_bytes", lambda n, k, m: 0)
    with pytest.raises(ConfigError, match=r"^a model of d = 21 parameters with m=1, k = 7 and "
                                          r"trainer.coded_gradient=per_subset needs about 1.15 "
                                          r"KiB .* 1 KiB: use a smaller model, or "
                                          r"trainer.coded_gradient=weighted$"):
        build_run(cfg)
    build_run(compose_config("train", [*FAST, "m=1"]))


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1536, "1.5 KiB"), (2**30 * 23.5, "23.5 GiB"),
                                        (2**40 * 3e7, "3e+07 TiB")])
def test_byte_counts_are_written_short(size: float, text: str) -> None:
    assert format_bytes(size) == text
