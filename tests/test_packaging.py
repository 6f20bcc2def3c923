"""The wheel (issue 11): it holds the Hydra configs (package data), and its console scripts run
from any directory after a non-editable install into a fresh venv."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: what the source copy leaves out (environments, outputs, caches)
IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "outputs", "multirun", "wandb",
                                "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".ruff_cache")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _setuptools_builds_it() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77  # pyproject.toml's build-system requirement (PEP 639 license)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    isolation = ["--no-build-isolation"] if _setuptools_builds_it() else []
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", tmp / "dist",
        source, cwd=tmp)
    (built,) = (tmp / "dist").glob("agc_pipeline-*.whl")
    return built


def test_the_wheel_holds_the_configs_and_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {"agc_pipeline/" + p.relative_to(ROOT).as_posix()
               for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs <= names, sorted(configs - names)[:5]
    assert "agc_pipeline/data/mnist_t10k/t10k-images-idx3-ubyte.gz" in names
    goldens = {f"agc_pipeline/golden/{p.name}" for p in (ROOT / "tests" / "golden").glob("*.json")}
    assert goldens and goldens <= names
    assert not any(name.startswith("tests/") for name in names)


def test_console_scripts_run_from_any_directory_after_a_wheel_install(
        wheel: Path, tmp_path: Path) -> None:
    """A fresh venv that sees this environment's dependencies (not its agc_pipeline) through
    a .pth file, the wheel installed into it; the apps run from an unrelated folder."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(
        "WANDB_")}
    env["WANDB_MODE"] = "offline"
    where = run(python, "-c", "import agc_pipeline; print(agc_pipeline.__file__)",
                cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    bin_dir = venv / "bin"
    help_text = run(bin_dir / "agc-train", "--help", cwd=elsewhere, env=env).stdout
    assert "debug: fast, profile" in help_text and "experiment: " in help_text
    run(bin_dir / "agc-analyze", "experiment=fig3", "debug=fast", "analysis.progress=false",
        "hydra.run.dir=fig3", cwd=elsewhere, env=env)
    results = json.loads((elsewhere / "fig3" / "results.json").read_text())
    assert results["n"] == 91 and results["points"][0]["realizations"] == 2
    report = run(bin_dir / "agc-report", "fig3", "--out", "report", cwd=elsewhere,
                 env=env).stdout
    assert "1 analyze runs" in report and (elsewhere / "report" / "report.md").is_file()
    # the golden files ship in the wheel (issue 20: agc-repro looked for <repo>/tests/golden)
    repro = run(bin_dir / "agc-repro", "--only", "fig3_small", cwd=elsewhere, env=env).stdout
    assert "PASS    fig3_small" in repro, repro


def test_the_fork_workflow_only_runs_ci_run_with_a_pip_cache() -> None:
    """.ci/run stays the single source of truth: the workflow sets up Python, caches pip and
    runs the script, nothing else."""
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["ci"]["steps"]
    commands = [step["run"] for step in steps if "run" in step]
    assert commands == ["bash .ci/run"]
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip" and "pyproject.toml" in setup["with"][
        "cache-dependency-path"]
    script = (ROOT / ".ci" / "run").read_text()
    assert '-e ".[dev,reports]"' in script and "python -m pytest -q" in script


def test_pyproject_lists_every_subpackage() -> None:
    """pyproject.toml lists the packages explicitly (so that the top-level conf/ can ship as
    agc_pipeline/conf): a new subpackage missing from the list would be missing from wheels."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts)
            for p in (ROOT / "agc_pipeline").rglob("__init__.py")}
    assert tree | {"agc_pipeline.conf", "agc_pipeline.golden"} == listed
    assert not [p for p in (ROOT / "agc_pipeline").rglob("*.py")
                if ".".join(p.parent.relative_to(ROOT).parts) not in tree]
