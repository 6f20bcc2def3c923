"""Golden reproducibility checks: the canonical runs match tests/golden, and drift is loud."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agc_pipeline.repro import CASES, GOLDEN_DIR, Case, check, compare, main, run_checks


def test_canonical_runs_match_the_goldens() -> None:
    outcomes = run_checks(echo=False)
    report = "\n".join(line for o in outcomes for line in o.lines())
    assert {o.case.name for o in outcomes} == {c.name for c in CASES}
    for outcome in outcomes:
        expected = "pass" if outcome.case.available() else "skip"
        assert outcome.status == expected, report


def test_every_available_case_has_a_golden_file() -> None:
    for case in CASES:
        if case.available():
            golden = json.loads((GOLDEN_DIR / f"{case.name}.json").read_text())
            assert golden["overrides"] == list(case.overrides) and golden["metrics"]


def test_a_perturbed_golden_value_fails_loudly(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(GOLDEN_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "fig3_small.json"
    golden = json.loads(path.read_text())
    s = golden["metrics"]["s"][3]
    golden["metrics"]["empirical_mean"][3] *= 1 + 1e-9  # a drift far below plotting accuracy
    path.write_text(json.dumps(golden))
    assert main(["--only", "fig3_small", "--golden-dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "FAIL    fig3_small" in out.out and "FAILED fig3_small" in out.err
    line = next(x for x in out.out.splitlines() if f"empirical_mean[s={s}]" in x)
    assert line.strip().startswith("fig3_small:") and "difference" in line
    assert "relative 1e-09" in line and "tolerance 1e-12 relative" in line


def test_a_perturbed_constant_in_training_fails_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "fig6_simulated_small", "--override", "trainer.lr=0.5000001"]) == 1
    out = capsys.readouterr().out
    assert "extra overrides trainer.lr=0.5000001" in out
    line = next(x for x in out.splitlines() if "train_loss[it=1]" in x)
    assert "must be bit-identical" in line and "difference" in line


def test_tolerances() -> None:
    golden = {"s": [0, 1], "err": [0.0, 10.0]}
    assert not compare({"s": [0, 1], "err": [1e-13, 10.0 * (1 + 5e-13)]}, golden, "analysis")
    assert compare({"s": [0, 1], "err": [0.0, 10.0 * (1 + 1e-11)]}, golden, "analysis")
    assert compare({"s": [0, 1], "err": [1e-9, 10.0]}, golden, "analysis")  # vs the curve's 10
    loss = {"iteration": [0], "train_loss": [2.0]}
    assert compare({"iteration": [0], "train_loss": [2.0 + 4e-16]}, loss, "simulated")
    assert not compare({"iteration": [0], "train_loss": [2.0 + 1e-6]}, loss, "distributed")
    assert compare({"iteration": [0], "train_loss": [2.0 + 3e-6]}, loss, "distributed")
    diffs = compare({"iteration": [0]}, loss, "simulated")
    assert [str(d) for d in diffs] == ["train_loss: got None, golden [2.0] (missing from the run)"]
    diffs = compare({"iteration": [0], "train_loss": [2.0, 1.0]}, loss, "simulated")
    assert "different number of values" in str(diffs[0])


def test_missing_or_stale_golden_and_unavailable_runtime(tmp_path: Path) -> None:
    fig3 = next(c for c in CASES if c.name == "fig3_small")
    missing = check(fig3, tmp_path, tmp_path)
    assert missing.status == "fail" and "--update --only fig3_small" in missing.message
    stale = Case("fig3_small", "analyze", ("experiment=fig3",), "analysis")
    outcome = check(stale, GOLDEN_DIR, tmp_path)
    assert outcome.status == "fail" and "other overrides" in outcome.message
    future = Case("later", "train", (), "distributed", requires="trainer/not_yet.yaml")
    outcome = check(future, tmp_path, tmp_path)
    assert outcome.status == "skip" and "trainer/not_yet.yaml" in outcome.message


def test_unknown_check_and_update_with_override_are_usage_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "nope"]) == 2
    assert "unknown check(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--update", "--override", "seed=1"])

