"""Golden reproducibility checks: the canonical runs match tests/golden, and drift is loud."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agc_pipeline import repro
from agc_pipeline.repro import (
    CASES,
    GOLDEN_DIR,
    Case,
    check,
    compare,
    cpu_fingerprint,
    main,
    reference,
    run_checks,
)


def _torch_distributed_here() -> bool:
    """Decided here, not by the code under test: the CPU torch build ships gloo."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def test_canonical_runs_match_the_goldens() -> None:
    outcomes = run_checks(echo=False)
    report = "\n".join(line for o in outcomes for line in o.lines())
    expected = {"fig3_small": "pass", "fig4_small": "pass", "fig5_small": "pass",
                "fig6_simulated_small": "pass",
                "fig6_distributed_small": "pass" if _torch_distributed_here() else "skip"}
    assert {o.case.name: o.status for o in outcomes} == expected, report


def test_every_case_has_a_golden_file() -> None:
    for case in CASES:
        golden = json.loads((GOLDEN_DIR / f"{case.name}.json").read_text())
        assert golden["overrides"] == list(case.overrides) and golden["metrics"]
        assert golden["description"] == case.description


def test_a_refused_config_fails_instead_of_skipping(tmp_path: Path) -> None:
    """Setting `backend: nccl` for the distributed runtime made its check a silent SKIP."""
    dist = next(c for c in CASES if c.name == "fig6_distributed_small")
    refused = Case(dist.name, "train", (*dist.overrides, "trainer.backend=nccl"), dist.kind,
                   requires="torch.distributed")
    outcome = check(refused, tmp_path, tmp_path, update=True)
    assert outcome.status == "fail" and "exited with status 2" in outcome.message
    assert "nccl" in outcome.message


def test_a_skip_fails_the_run_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(repro.RUNTIMES, "torch.distributed", lambda: "no gloo (test)")
    args = ["--only", "fig6_distributed_small"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "SKIPPED fig6_distributed_small" in err and "--allow-skip" in err
    assert main([*args, "--allow-skip"]) == 0
    out = capsys.readouterr().out
    assert "SKIP    fig6_distributed_small" in out and "no gloo (test)" in out
    with pytest.raises(ValueError, match="requires must be one of torch.distributed"):
        Case("later", "train", (), "distributed", requires="trainer/not_yet.yaml")


def test_an_unknown_override_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "fig3_small", "--override", "bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--override bogus=1" in err[0] and "'bogus'" in err[0], err


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


def test_missing_or_stale_golden_and_missing_runtime(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fig3 = next(c for c in CASES if c.name == "fig3_small")
    missing = check(fig3, tmp_path, tmp_path)
    assert missing.status == "fail" and "--update --only fig3_small" in missing.message
    stale = Case("fig3_small", "analyze", ("experiment=fig3",), "analysis")
    outcome = check(stale, GOLDEN_DIR, tmp_path)
    assert outcome.status == "fail" and "other overrides" in outcome.message
    monkeypatch.setitem(repro.RUNTIMES, "torch.distributed", lambda: "not built (test)")
    needs = Case("later", "train", (), "distributed", requires="torch.distributed")
    outcome = check(needs, tmp_path, tmp_path)
    assert outcome.status == "skip" and "torch.distributed is missing" in outcome.message
    assert "not built (test)" in outcome.message


def test_unknown_check_and_update_with_override_are_usage_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "nope"]) == 2
    assert "unknown check(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--update", "--override", "seed=1"])



def test_the_pinned_environment_sets_no_dead_switch() -> None:
    """Every AGC_* variable a check's process gets is one the package reads (the former
    AGC_TORCH_THREADS / AGC_SKIP_FINISHED switches were replaced by config keys)."""
    sources = "\n".join(path.read_text() for path in (repro.REPO_ROOT / "agc_pipeline").rglob(
        "*.py") if path.name != "repro.py")
    dead = [key for key in repro.PINNED_ENV if key.startswith("AGC_") and key not in sources]
    assert not dead, dead


def test_a_cpu_of_its_own_is_compared_with_its_own_entry(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    """MKL's last bits depend on the CPU: a golden file may hold further CPUs' numbers under
    ``cpus``; this CPU's entry, when present, is the reference (bit-identical), and the
    main numbers are not looked at."""
    shutil.copytree(GOLDEN_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "fig6_simulated_small.json"
    golden = json.loads(path.read_text())
    cpu = cpu_fingerprint()
    right, _ = reference(golden, cpu)
    golden["cpus"] = {cpu: {"metrics": json.loads(json.dumps(right))},
                      "Other vendor family 1 model 1 (x)": {"metrics": {}}}
    golden["metrics"]["train_loss"][1] *= 1 + 1e-9  # the main numbers wrong for this CPU
    path.write_text(json.dumps(golden))
    assert main(["--only", "fig6_simulated_small", "--golden-dir", str(tmp_path)]) == 0
    assert "this CPU's entry" in capsys.readouterr().out
    golden["cpus"][cpu]["metrics"]["train_loss"][1] *= 1 + 1e-9  # now its own entry is off
    path.write_text(json.dumps(golden))
    assert main(["--only", "fig6_simulated_small", "--golden-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "compared with this CPU's entry" in out and "train_loss[it=1]" in out


def test_reference_and_add_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = {"cpu": "A", "metrics": {"x": [1.0]}, "cpus": {"B": {"metrics": {"x": [2.0]}}}}
    assert reference(golden, "B") == ({"x": [2.0]}, "this CPU's entry (B)")
    assert reference(golden, "C") == ({"x": [1.0]}, "the main numbers (recorded on A)")
    assert reference({"metrics": {}}, "C")[1] == "the main numbers (recorded on a CPU not " \
        "recorded)"
    assert cpu_fingerprint() and cpu_fingerprint() == cpu_fingerprint()
    # --add-cpu records this CPU's numbers and keeps the main ones
    shutil.copytree(GOLDEN_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "fig3_small.json"
    before = json.loads(path.read_text())
    assert main(["--add-cpu", "--only", "fig3_small", "--golden-dir", str(tmp_path)]) == 0
    after = json.loads(path.read_text())
    assert after["metrics"] == before["metrics"]
    assert set(after["cpus"]) == {cpu_fingerprint()}
    assert compare(after["cpus"][cpu_fingerprint()]["metrics"], before["metrics"],
                   "analysis") == []
    assert "added the entry of" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--add-cpu", "--update"])
    assert stop.value.code == 2
    assert "one of the two" in capsys.readouterr().err


@pytest.mark.parametrize("content, says", [
    (b"{not json", "is unreadable (JSONDecodeError"),
    (b"\xff\xfe garbage", "is unreadable (UnicodeDecodeError"),
    (b"[1, 2, 3]", "is not a JSON object"),
    (b'{"overrides": []}', "'metrics' must map each metric"),
    (b'{"metrics": {"loss": [1.0, "x"]}}', "metric 'loss' must be a list of numbers"),
    (b'{"metrics": {"loss": [1.0]}, "cpus": {"some cpu": {}}}', "the entry of some cpu"),
])
def test_a_damaged_golden_file_fails_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str) -> None:
    """Issue 20: a garbage golden (a traceback, or a refusal that named no file) fails the
    check in one line that names the file, before anything runs."""
    (tmp_path / "fig3_small.json").write_bytes(content)
    assert main(["--only", "fig3_small", "--golden-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"golden file {tmp_path / 'fig3_small.json'}" in out and says in out, out
    assert "Traceback" not in out


def test_keep_pointing_at_a_file_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "a_file"
    target.write_text("mine")
    assert main(["--only", "fig3_small", "--keep", str(target)]) == 2
    assert "--keep" in capsys.readouterr().err and target.read_text() == "mine"
